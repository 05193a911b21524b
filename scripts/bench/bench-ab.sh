#!/usr/bin/env bash
# bench-ab.sh BEFORE_BIN AFTER_BIN [DATASET_DIR [SIZE_MB [PAIRS]]]: two builds of the producer and consumer (the
# folders holding their release binaries) timed in alternation, before then after, PAIRS times per case, on the
# benchmarks that exist: `producer | cat`, the round trip through 4 pipes, 20,000 small files round trip, and
# `producer --compress | cat`. Alternating, rather than all runs of one build then all of the other, keeps a machine
# whose speed drifts (a shared VM) from favouring either. Prints the median wall time of each build per case and
# their ratio (after / before: below 1 is faster). For refactors that must not change speed.
#
#   git worktree add /tmp/base REV && CARGO_TARGET_DIR=/tmp/base-target cargo build --release (in /tmp/base)
#   cargo build --release
#   bash scripts/bench/bench-ab.sh /tmp/base-target/release target/release /dev/shm/ds1g 1024 9
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
before=$(cd "$1" && pwd)
after=$(cd "$2" && pwd)
ds=${3:-/tmp/xbkit-bench/ds1g}
size_mb=${4:-1024}
pairs=${5:-9}
work=$(mktemp -d "${TMPDIR:-/tmp}/bench-ab.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The datasets: the mixed one (the shared generator, or the sample), and 20,000 files of 0-16 KiB.
if [ ! -d "$ds" ] || [ -z "$(ls -A "$ds" 2>/dev/null)" ]; then
  if [ -f "$root/../shared/peers/make-dataset.sh" ]; then
    bash "$root/../shared/peers/make-dataset.sh" "$ds" "$size_mb" >&2
  else
    bash "$root/scripts/make-sample.sh" "$ds" "$size_mb" >&2
  fi
fi
small="$work/small"
python3 - "$small" <<'PY'
import os, random, sys
random.seed(7)
for i in range(20000):
    d = os.path.join(sys.argv[1], f"db{i % 40}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"t{i:05}.frm"), "wb") as f:
        f.write(random.randbytes(random.randrange(0, 16 << 10)))
PY

# case NAME BIN: the command line of case NAME for the binaries in BIN.
case_cmd() {
  local bin=$2 out="$work/out" fifo="$work/fifo"
  case $1 in
    cat) echo "$bin/producer -q --source $ds --stream=xbstream | cat > /dev/null" ;;
    pipes4) echo "rm -rf $out; $bin/consumer -q extract --no-fsync -C $out --fifo-streams 4 --fifo-dir $fifo & $bin/producer -q --source $ds --stream=xbstream --fifo-streams 4 --fifo-dir $fifo; wait" ;;
    small) echo "rm -rf $out; $bin/producer -q --source $small --stream=xbstream | $bin/consumer -q extract --no-fsync -C $out" ;;
    compress) echo "$bin/producer -q --source $ds --stream=xbstream --compress --compress-level 1 | cat > /dev/null" ;;
  esac
}

# timed CMD: wall seconds of one run (bash -o pipefail; a failure stops the benchmark).
timed() {
  local start end
  start=$(date +%s.%N)
  timeout 600 bash -o pipefail -c "$1" || { echo "bench-ab: failed: $1" >&2; exit 1; }
  end=$(date +%s.%N)
  echo "$end - $start" | bc
}

find "$ds" "$small" -type f -print0 | xargs -0 cat > /dev/null
echo "machine: $(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p' | head -1)), $(free -g | awk '/Mem:/ {print $2}') GiB, kernel $(uname -r)"
echo "dataset: $ds ($(du -sh "$ds" | cut -f1)), small: 20,000 files; $pairs pairs per case, before and after alternating"
echo "| case | before median s | after median s | after / before |"
echo "|---|---|---|---|"
for name in cat pipes4 small compress; do
  a=() b=()
  timed "$(case_cmd "$name" "$before")" > /dev/null  # warm-up, not counted
  for _ in $(seq "$pairs"); do
    a+=("$(timed "$(case_cmd "$name" "$before")")")
    b+=("$(timed "$(case_cmd "$name" "$after")")")
  done
  python3 - "$name" "${a[*]}" "${b[*]}" <<'PY'
import statistics, sys
name, a, b = sys.argv[1], [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()]
ma, mb = statistics.median(a), statistics.median(b)
print(f"| {name} | {ma:.3f} (min {min(a):.3f}, max {max(a):.3f}) | {mb:.3f} (min {min(b):.3f}, max {max(b):.3f}) | {mb / ma:.3f} |")
PY
done
