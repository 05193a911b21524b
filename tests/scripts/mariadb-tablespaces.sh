#!/usr/bin/env bash
# mariadb-tablespaces.sh WORKDIR
#
# Starts a private MariaDB on 127.0.0.1 (a free port, a socket under WORKDIR), makes InnoDB tablespaces in every
# format it writes — full_crc32 (the default), full_crc32 page_compressed, classic crc32 (innodb_checksum_algorithm
# switched for the tables made after it), classic ROW_FORMAT=COMPRESSED — fills them, shuts the server down
# cleanly (every page written) and leaves the datadir in WORKDIR/data. Used by the --validate-pages tests.
set -euo pipefail
work=${1:?usage: mariadb-tablespaces.sh WORKDIR}
source "$(dirname "$0")/mariadb-lib.sh"
command -v mariadb-admin >/dev/null || { echo "missing mariadb-admin: apt-get install mariadb-server" >&2; exit 1; }
# A slow shutdown writes every page back, so the tablespaces are complete on disk.
start_mariadb "$work" "innodb_fast_shutdown=0"
fill() { # fill TABLE: 2^11 rows of ~300 bytes, so the tablespace has data pages beyond its first few
  local t=$1
  echo "INSERT INTO $t (k, c) VALUES (1, REPEAT(MD5(1), 8));"
  for _ in $(seq 11); do echo "INSERT INTO $t (k, c) SELECT k + id, REPEAT(MD5(id), 8) FROM $t;"; done
}
{
  echo "CREATE DATABASE pages;"
  echo "CREATE TABLE pages.full (id BIGINT AUTO_INCREMENT PRIMARY KEY, k INT NOT NULL, c VARCHAR(300)) ENGINE=InnoDB;"
  fill pages.full
  echo "CREATE TABLE pages.pagecomp (id BIGINT AUTO_INCREMENT PRIMARY KEY, k INT NOT NULL, c VARCHAR(300))"
  echo "  ENGINE=InnoDB PAGE_COMPRESSED=1;"
  fill pages.pagecomp
  echo "SET GLOBAL innodb_checksum_algorithm=crc32;"
  echo "CREATE TABLE pages.classic (id BIGINT AUTO_INCREMENT PRIMARY KEY, k INT NOT NULL, c VARCHAR(300)) ENGINE=InnoDB;"
  fill pages.classic
  echo "CREATE TABLE pages.zip (id BIGINT AUTO_INCREMENT PRIMARY KEY, k INT NOT NULL, c VARCHAR(300))"
  echo "  ENGINE=InnoDB ROW_FORMAT=COMPRESSED KEY_BLOCK_SIZE=8;"
  fill pages.zip
} | mariadb --defaults-file="$cnf"
mariadb-admin --defaults-file="$cnf" shutdown
for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
pid=""
