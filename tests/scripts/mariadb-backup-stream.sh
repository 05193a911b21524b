#!/usr/bin/env bash
# mariadb-backup-stream.sh WORKDIR OUT.xbstream
#
# Starts a private MariaDB on 127.0.0.1 (a free port, a socket under WORKDIR), creates database `vec` with an
# InnoDB table and an Aria table, takes `mariadb-backup --backup --stream=xbstream` into OUT.xbstream, and stops
# the server (only the PID it started). Used by the consumer's interop test.
set -euo pipefail
work=${1:?usage: mariadb-backup-stream.sh WORKDIR OUT.xbstream}
out=${2:?usage: mariadb-backup-stream.sh WORKDIR OUT.xbstream}
source "$(dirname "$0")/mariadb-lib.sh"
command -v mariadb-backup >/dev/null || { echo "missing mariadb-backup: apt-get install mariadb-backup" >&2; exit 1; }
start_mariadb "$work"
work=$(cd "$work" && pwd)
mariadb --defaults-file="$cnf" <<'SQL'
CREATE DATABASE vec;
CREATE TABLE vec.t1 (id BIGINT AUTO_INCREMENT PRIMARY KEY, k INT NOT NULL, c CHAR(120) NOT NULL) ENGINE=InnoDB;
INSERT INTO vec.t1 (k, c) VALUES (1, MD5(1));
INSERT INTO vec.t1 (k, c) SELECT k + id, MD5(id) FROM vec.t1;
INSERT INTO vec.t1 (k, c) SELECT k + id, MD5(id) FROM vec.t1;
INSERT INTO vec.t1 (k, c) SELECT k + id, MD5(id) FROM vec.t1;
INSERT INTO vec.t1 (k, c) SELECT k + id, MD5(id) FROM vec.t1;
INSERT INTO vec.t1 (k, c) SELECT k + id, MD5(id) FROM vec.t1;
INSERT INTO vec.t1 (k, c) SELECT k + id, MD5(id) FROM vec.t1;
INSERT INTO vec.t1 (k, c) SELECT k + id, MD5(id) FROM vec.t1;
INSERT INTO vec.t1 (k, c) SELECT k + id, MD5(id) FROM vec.t1;
INSERT INTO vec.t1 (k, c) SELECT k + id, MD5(id) FROM vec.t1;
INSERT INTO vec.t1 (k, c) SELECT k + id, MD5(id) FROM vec.t1;
CREATE TABLE vec.aria_t (id INT PRIMARY KEY, v VARCHAR(100)) ENGINE=Aria;
INSERT INTO vec.aria_t VALUES (1, 'one'), (2, 'two');
SQL
# Write dirty pages back to the data files first, so the stream carries table data and not only redo log.
mariadb --defaults-file="$cnf" -e "SET GLOBAL innodb_max_dirty_pages_pct_lwm=0.001; SET GLOBAL innodb_max_dirty_pages_pct=0.001"
for _ in $(seq 50); do
  dirty=$(mariadb --defaults-file="$cnf" -Nse "SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_pages_dirty'" | cut -f2)
  [ "$dirty" -le 10 ] && break; sleep 0.2
done
mariadb-backup --defaults-file="$cnf" --backup --stream=xbstream --parallel=2 --target-dir="$work/tmp" \
  > "$out" 2> "$work/backup.log" || { tail -20 "$work/backup.log" >&2; exit 1; }
