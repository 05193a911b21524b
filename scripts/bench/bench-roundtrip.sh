#!/usr/bin/env bash
# bench-roundtrip.sh [DATASET_DIR] [SIZE_MB] [RUNS] [TARGET_PARENT]
#
# Round trip producer -> consumer extract through STDOUT and 1/2/4/8 named pipes, against tar -c | tar -x and
# mbstream -c | mbstream -x -p 2, all extracting into TARGET_PARENT (default /dev/shm: tmpfs; pass /tmp for the
# disk). Medians of RUNS (default 3); the source cache is re-warmed and the target removed (and synced) before
# every run. The consumer runs with its defaults, which include a final syncfs that tar and mbstream do not do;
# the --no-fsync case is the like-for-like one. Prints a markdown table.
source "$(dirname "$0")/bench-lib.sh"
dataset_bench 3 hyperfine mbstream python3 -- "$@"
parent=${4:-/dev/shm}
out="$parent/xbkit-bench-out"
fifo=/tmp/xbkit-bench/rt-fifo
json=/tmp/xbkit-bench/roundtrip-$(basename "$parent").json
mkdir -p /tmp/xbkit-bench

pipes_case() { # N
  echo "$bin/consumer -q extract -C $out --fifo-streams $1 --fifo-dir $fifo & $bin/producer -q --source $ds --stream=xbstream --fifo-streams $1 --fifo-dir $fifo; wait"
}

bench "$json" "$runs" "rm -rf $out $fifo; sync; mkdir -p $out; $(warm_cmd "$ds")" \
  "tar -c | tar -x" "tar -C $ds -cf - . | tar -C $out -xf -" \
  "mbstream -c | mbstream -x -p 2" "cd $ds && $(mbstream_files) | xargs -d '\\n' mbstream -c | mbstream -x -p 2 -C $out" \
  "producer | consumer" "$bin/producer -q --source $ds --stream=xbstream | $bin/consumer -q extract -C $out" \
  "producer | consumer --no-fsync" "$bin/producer -q --source $ds --stream=xbstream | $bin/consumer -q extract --no-fsync -C $out" \
  "producer | consumer --digest sha1" "$bin/producer -q --source $ds --stream=xbstream --digest sha1 | $bin/consumer -q extract -C $out" \
  "1 pipe" "$(pipes_case 1)" \
  "2 pipes" "$(pipes_case 2)" \
  "4 pipes" "$(pipes_case 4)" \
  "8 pipes" "$(pipes_case 8)"
# Correctness, once per extractor outside the timing: the timed commands' exit status alone proves nothing for
# mbstream, which exits 0 after failing to create files.
for case in "tar -C $ds -cf - . | tar -C $out -xf -" \
            "cd $ds && $(mbstream_files) | xargs -d '\\n' mbstream -c | mbstream -x -p 2 -C $out" \
            "$(pipes_case 4)"; do
  rm -rf "$out" "$fifo"; mkdir -p "$out"
  bash -c "$case"
  diff -r --exclude=backup-manifest.json "$ds" "$out" >/dev/null || { echo "extract check FAILED: $case" >&2; exit 1; }
done
echo "extract check: tar, mbstream and 4 pipes reproduced the dataset byte for byte" >&2
rm -rf "$out" "$fifo"

echo
echo "Round trip into $parent ($(df -T "$parent" | awk 'NR == 2 { print $2 }')), $((bytes / 1000000)) MB dataset, medians of $runs runs; $(machine); $(date -u +%F)"
echo
table "$json" "$bytes" "tar -c | tar -x" "mbstream -c | mbstream -x -p 2"
