#!/usr/bin/env bash
# bench-producer.sh [DATASET_DIR] [SIZE_MB] [RUNS]
#
# The producer into a pipe drained by `cat > /dev/null`, on a warm mixed dataset, against the peers in the same
# run: mbstream -c | cat, tar -c | cat, and the raw pipe (dd | dd). Also --digest sha1, and STDOUT against N named
# pipes (each drained by its own cat). Medians of RUNS (default 5) hyperfine runs; the cache is re-warmed before
# every run (mbstream evicts its input). Prints a markdown table for docs/benchmarks.md.
source "$(dirname "$0")/bench-lib.sh"
dataset_bench 5 hyperfine mbstream python3 -- "$@"
fifo=/tmp/xbkit-bench/fifo
json=/tmp/xbkit-bench/producer.json
mkdir -p /tmp/xbkit-bench

fifo_case() { # N: producer to N pipes, one cat per pipe
  local n=$1 readers=""
  for i in $(seq 0 $((n - 1))); do readers+="(while [ ! -p $fifo/thread_$i ]; do sleep 0.01; done; cat $fifo/thread_$i > /dev/null) & "; done
  echo "rm -rf $fifo; $readers $bin/producer -q --source $ds --stream=xbstream --fifo-streams $n --fifo-dir $fifo; wait"
}

bench "$json" "$runs" "$(warm_cmd "$ds")" \
  "dd | dd (raw pipe)" "dd if=/dev/zero bs=1M count=$(( bytes / 1048576 )) status=none | dd of=/dev/null bs=1M status=none" \
  "tar -c | cat" "tar -C $ds -cf - . | cat > /dev/null" \
  "mbstream -c | cat" "cd $ds && $(mbstream_files) | xargs -d '\\n' mbstream -c | cat > /dev/null" \
  "producer | cat" "$bin/producer -q --source $ds --stream=xbstream | cat > /dev/null" \
  "producer --digest sha1 | cat" "$bin/producer -q --source $ds --stream=xbstream --digest sha1 | cat > /dev/null" \
  "producer --parallel 1 | cat" "$bin/producer -q --source $ds --stream=xbstream --parallel 1 --compress-threads 1 | cat > /dev/null" \
  "producer -> 2 pipes" "$(fifo_case 2)" \
  "producer -> 4 pipes" "$(fifo_case 4)"

echo
echo "Producer, $((bytes / 1000000)) MB dataset ($ds), medians of $runs runs; $(machine); $(date -u +%F)"
echo
table "$json" "$bytes" "mbstream -c | cat" "dd | dd (raw pipe)"
