#!/usr/bin/env bash
# mariadb-backup-stream.sh WORKDIR OUT.xbstream
#
# Starts a private MariaDB on 127.0.0.1 (a free port, a socket under WORKDIR), creates database `vec` with an
# InnoDB table and an Aria table, takes `mariadb-backup --backup --stream=xbstream` into OUT.xbstream, and stops
# the server (only the PID it started). Used by the consumer's interop test.
set -euo pipefail
work=${1:?usage: mariadb-backup-stream.sh WORKDIR OUT.xbstream}
out=${2:?usage: mariadb-backup-stream.sh WORKDIR OUT.xbstream}
for tool in mariadbd mariadb-install-db mariadb mariadb-backup; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install mariadb-server mariadb-backup" >&2; exit 1; }
done
mkdir -p "$work"
work=$(cd "$work" && pwd)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cnf="$work/my.cnf"
cat > "$cnf" <<CNF
[mysqld]
datadir=$work/data
socket=$work/mysqld.sock
port=$port
bind-address=127.0.0.1
user=root
pid-file=$work/mysqld.pid
log-error=$work/mysqld.err
innodb_buffer_pool_size=64M
innodb_log_file_size=16M
skip-name-resolve
[client]
socket=$work/mysqld.sock
user=root
[mariadb-backup]
socket=$work/mysqld.sock
user=root
CNF
pid=""
stop() { if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill "$pid"; for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done; fi; }
trap stop EXIT
mariadb-install-db --defaults-file="$cnf" --auth-root-authentication-method=socket > "$work/install.log" 2>&1 \
  || { tail -20 "$work/install.log" >&2; exit 1; }
mariadbd --defaults-file="$cnf" > "$work/mysqld.log" 2>&1 &
pid=$!
for _ in $(seq 200); do mariadb --defaults-file="$cnf" -e 'select 1' >/dev/null 2>&1 && break; sleep 0.1; done
mariadb --defaults-file="$cnf" -e 'select 1' >/dev/null || { tail -20 "$work/mysqld.err" >&2; exit 1; }
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
