# Shared by the test scripts that need a private MariaDB. Source it, then `start_mariadb WORKDIR [EXTRA_MYSQLD_LINE…]`.
#
# start_mariadb: a server on 127.0.0.1 (a free port, its socket and datadir under WORKDIR), initialised and answering;
# sets $cnf (its defaults file, with [client] and [mariadb-backup] sections) and $pid, and stops it (only that PID)
# on exit. Each EXTRA line goes into its [mysqld] section.
set -euo pipefail
for tool in mariadbd mariadb-install-db mariadb; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install mariadb-server" >&2; exit 1; }
done
cnf="" pid=""
stop_mariadb() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
}
start_mariadb() {
  local work=$1; shift
  mkdir -p "$work"
  work=$(cd "$work" && pwd)
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  cnf="$work/my.cnf"
  {
    echo "[mysqld]"
    echo "datadir=$work/data"
    echo "socket=$work/mysqld.sock"
    echo "port=$port"
    echo "bind-address=127.0.0.1"
    echo "user=root"
    echo "pid-file=$work/mysqld.pid"
    echo "log-error=$work/mysqld.err"
    echo "innodb_buffer_pool_size=64M"
    echo "innodb_log_file_size=16M"
    echo "skip-name-resolve"
    printf '%s\n' "$@"
    printf '[client]\nsocket=%s\nuser=root\n[mariadb-backup]\nsocket=%s\nuser=root\n' "$work/mysqld.sock" "$work/mysqld.sock"
  } > "$cnf"
  trap stop_mariadb EXIT
  mariadb-install-db --defaults-file="$cnf" --auth-root-authentication-method=socket > "$work/install.log" 2>&1 \
    || { tail -20 "$work/install.log" >&2; exit 1; }
  mariadbd --defaults-file="$cnf" > "$work/mysqld.log" 2>&1 &
  pid=$!
  for _ in $(seq 200); do mariadb --defaults-file="$cnf" -e 'select 1' >/dev/null 2>&1 && break; sleep 0.1; done
  mariadb --defaults-file="$cnf" -e 'select 1' >/dev/null || { tail -20 "$work/mysqld.err" >&2; exit 1; }
}
