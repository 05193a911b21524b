# Shared by the benchmark scripts: dataset, tools, a hyperfine wrapper and the table printer. Source it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin="$root/target/release"
shared="$root/../shared/peers"

need() { for t in "$@"; do command -v "$t" >/dev/null || { echo "missing $t (apt-get install hyperfine mariadb-backup zstd)" >&2; exit 1; }; done; }

# dataset DIR SIZE_MB: the shared peers' generator when present (the figures in shared/ were measured on it),
# otherwise scripts/make-sample.sh.
dataset() {
  local dir=$1 size=$2
  if [ -d "$dir" ] && [ -n "$(ls -A "$dir")" ]; then return; fi
  if [ -x "$shared/make-dataset.sh" ] || [ -f "$shared/make-dataset.sh" ]; then
    bash "$shared/make-dataset.sh" "$dir" "$size"
  else
    bash "$root/scripts/make-sample.sh" "$dir" "$size"
  fi
}

# The dataset's files breadth-first (shallow files first): `mbstream -x` creates only a file's immediate parent
# directory, so deeper files must come after a file of their parent (and it still exits 0 when it fails).
mbstream_files() { echo "find . -type f -printf '%d %P\\n' | sort -n -s | cut -d' ' -f2-"; }

# build: the release binaries the benchmarks run.
build() { (cd "$root" && cargo build --release --quiet); }

# tree_bytes DIR: total size of the regular files under DIR.
tree_bytes() { find "$1" -type f -printf '%s\n' | awk '{ s += $1 } END { print s }'; }

# prepare DIR SIZE_MB: build, make the dataset if needed, print its size in bytes.
prepare() { build; dataset "$1" "$2" >&2; tree_bytes "$1"; }

# dataset_bench DEFAULT_RUNS TOOL... -- [DATASET_DIR [SIZE_MB [RUNS]]]: how the benchmarks on the mixed dataset
# start: sets ds (default /tmp/xbkit-bench/ds2g), size_mb (default 2048) and runs (default DEFAULT_RUNS) from the
# script's arguments, checks the tools, builds, makes the dataset if needed and sets bytes to its size.
# shellcheck disable=SC2034 # runs and bytes are for the script that sources this
dataset_bench() {
  local default_runs=$1 tools=()
  shift
  while [ "$1" != -- ]; do tools+=("$1"); shift; done
  shift
  ds=${1:-/tmp/xbkit-bench/ds2g}
  size_mb=${2:-2048}
  runs=${3:-$default_runs}
  need "${tools[@]}"
  bytes=$(prepare "$ds" "$size_mb")
}

# start_s3s_fs ROOT ACCESS_KEY SECRET_KEY LOG: s3s-fs serving ROOT on a free loopback port; sets port and server (its
# PID) and returns once it answers. The caller stops it (kill "$server") in its own cleanup.
# shellcheck disable=SC2034 # port and server are for the script that sources this
start_s3s_fs() {
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  s3s-fs --host 127.0.0.1 --port "$port" --access-key "$2" --secret-key "$3" "$1" > "$4" 2>&1 &
  server=$!
  for _ in $(seq 40); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return; sleep 0.25; done
  echo "s3s-fs did not answer on port $port (see $4)" >&2
  return 1
}

# stop_server: stops the s3s-fs that start_s3s_fs started (if it did), for the caller's EXIT trap.
stop_server() { [ -z "${server:-}" ] || { kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; }; }

# server_cpu: the CPU seconds (user + system) that server has used so far, from /proc.
server_cpu() { python3 -c "import os; f = open('/proc/$server/stat').read().rsplit(')', 1)[1].split(); print((int(f[11]) + int(f[12])) / os.sysconf('SC_CLK_TCK'))"; }

# boto MODE ARGS...: scripts/bench/boto3-peer.py against the server at $endpoint with $ak, $sk and $bucket.
boto() { python3 "$root/scripts/bench/boto3-peer.py" "$1" "$endpoint" "$ak" "$sk" "$bucket" "${@:2}"; }

warm_cmd() { echo "find '$1' -type f -print0 | xargs -0 cat > /dev/null"; }

# bench RESULTS_JSON RUNS PREPARE NAME CMD [NAME CMD ...]: hyperfine, one JSON for all cases.
bench() {
  local json=$1 runs=$2 prepare=$3; shift 3
  local args=()
  while [ $# -gt 0 ]; do args+=(-n "$1" "$2"); shift 2; done
  hyperfine --style basic --runs "$runs" --warmup 1 --prepare "$prepare" --export-json "$json" "${args[@]}" >&2
}

# table RESULTS_JSON BYTES BASELINE_NAME...: markdown rows: case, median s, MB/s, ratio to each baseline.
table() {
  python3 - "$@" <<'PY'
import json, sys
path, size, bases = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
results = json.load(open(path))["results"]
median = {r["command"]: r["median"] for r in results}
esc = lambda text: text.replace("|", "\\|")
head = "| case | median s | MB/s | " + " | ".join(f"x {esc(b)}" for b in bases) + " |"
print(head)
print("|" + "---|" * (3 + len(bases)))
for r in results:
    m = r["median"]
    ratios = " | ".join(f"{median[b] / m:.2f}" for b in bases)
    print(f"| {esc(r['command'])} | {m:.3f} | {size / m / 1e6:,.0f} | {ratios} |")
PY
}

machine() { echo "$(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p' | head -1)), $(free -g | awk '/Mem:/ {print $2}') GiB, kernel $(uname -r)"; }
