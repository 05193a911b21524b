#!/usr/bin/env bash
# bench-binding.sh [RUNS] [RATE_MB]
#
# What --fifo-binding file costs in pipe parallelism since every pipe alone must extract with mbstream -x: the
# producer into 4 pipes, each drained at RATE_MB MB/s (default 100) by `pv -L` (a capped connection), on two trees in
# tmpfs: a datadir (64 MiB at the top, 4 schema directories of 8 x 16 MiB tables: the usual case, where every file
# may go to any pipe) and a deep tree (its 32 x 16 MiB files three levels down, in 4 directories whose ancestors hold
# no file: without placeholders no pipe can be extracted alone anyway, so files go anywhere; with
# --dir-placeholders each chain of directories exists on one pipe, so its files go there). With
# BASE_BIN=path/to/an/older/producer, the same cases with it, in the same run (build one with
# `git worktree add /tmp/base REV && cargo build --release --manifest-path /tmp/base/Cargo.toml`).
# Medians of RUNS (default 3).
source "$(dirname "$0")/bench-lib.sh"
runs=${1:-3}
rate=${2:-100}
need hyperfine pv python3
build
top=/dev/shm/xbkit-binding
fifo=/tmp/xbkit-bench/binding-fifo
json=${BENCH_OUT:-/tmp/xbkit-bench}/binding.json
mkdir -p "$(dirname "$json")"
if [ ! -d "$top" ]; then
  python3 - "$top" <<'PY'
import os, sys
top = sys.argv[1]
block = os.urandom(1 << 20)
def write(path, mib):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(block)
write(f"{top}/datadir/ibdata1", 64)
for schema in range(4):
    for table in range(8):
        write(f"{top}/datadir/db{schema}/t{table}.ibd", 16)
for sub in range(4):
    for table in range(8):
        write(f"{top}/deep/db/sub{sub}/part/t{table}.ibd", 16)
PY
fi

case_cmd() { # PRODUCER TREE [ARGS]: 4 pipes, file binding, each pipe drained by a rate-capped reader
  local producer=$1 tree=$2 extra=${3:-} readers=""
  for i in 0 1 2 3; do
    readers+="(while [ ! -p $fifo/thread_$i ]; do sleep 0.01; done; pv -q -L ${rate}m $fifo/thread_$i > /dev/null) & "
  done
  echo "rm -rf $fifo; $readers $producer -q --source $top/$tree --stream=xbstream --fifo-streams 4 --fifo-binding file $extra --fifo-dir $fifo; wait"
}

echo "4 pipes, --fifo-binding file, each pipe drained at $rate MB/s; trees in tmpfs ($top); medians of $runs runs; $(machine); $(date -u +%F)"
for label in datadir deep "deep --dir-placeholders"; do
  tree=${label%% *} extra=${label#"$tree"}
  cases=("this build, $label" "$(case_cmd "$bin/producer" "$tree" "$extra")")
  baselines=("this build, $label")
  if [ -n "${BASE_BIN:-}" ] && [ -z "$extra" ]; then # (an older build may not know the options)
    cases+=("base, $label" "$(case_cmd "$BASE_BIN" "$tree" "$extra")")
    baselines+=("base, $label")
  fi
  bench "$json.${label// /}" "$runs" "true" "${cases[@]}"
  echo
  table "$json.${label// /}" "$(tree_bytes "$top/$tree")" "${baselines[@]}"
done
