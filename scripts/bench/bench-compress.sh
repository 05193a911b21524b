#!/usr/bin/env bash
# bench-compress.sh [DATASET_DIR] [SIZE_MB] [RUNS]
#
# Compression throughput and ratio on the warm mixed dataset, into a pipe drained by `wc -c` (so the compressed
# size is measured too): producer --compress (level 1, 2 compress threads) against tar -c | zstd -1 -T2 and
# tar -c | zstd -1, in the same run; plus the compressed round trip into tmpfs against tar | zstd -T2 | zstd -d |
# tar -x. Medians of RUNS (default 3). Prints markdown tables.
source "$(dirname "$0")/bench-lib.sh"
dataset_bench 3 hyperfine zstd python3 -- "$@"
sizes=/tmp/xbkit-bench/compress-sizes
out=/dev/shm/xbkit-bench-zout
mkdir -p "$sizes"
json=/tmp/xbkit-bench/compress.json
bench "$json" "$runs" "rm -rf $out; mkdir -p $out; $(warm_cmd "$ds")" \
  "tar -c | zstd -1 -T2" "tar -C $ds -cf - . | zstd -1 -T2 -q -c | wc -c > $sizes/tar-zstd-T2" \
  "tar -c | zstd -1" "tar -C $ds -cf - . | zstd -1 -q -c | wc -c > $sizes/tar-zstd" \
  "producer --compress" "$bin/producer -q --source $ds --stream=xbstream --compress --compress-level 1 --compress-threads 2 | wc -c > $sizes/producer" \
  "producer --compress | consumer --decompress (tmpfs)" "$bin/producer -q --source $ds --stream=xbstream --compress | $bin/consumer -q extract --decompress --no-fsync -C $out" \
  "tar | zstd -1 -T2 | zstd -d | tar -x (tmpfs)" "tar -C $ds -cf - . | zstd -1 -T2 -q -c | zstd -d -q -c | tar -C $out -xf -"
rm -rf "$out"
echo
echo "Compression, $((bytes / 1000000)) MB dataset ($ds), medians of $runs runs; $(machine); $(date -u +%F)"
echo
table "$json" "$bytes" "tar -c | zstd -1 -T2"
echo
echo "| stream | bytes | ratio (original / compressed) |"
echo "|---|---|---|"
for f in tar-zstd-T2 tar-zstd producer; do
  b=$(cat "$sizes/$f")
  awk -v n="$f" -v b="$b" -v o="$bytes" 'BEGIN { printf "| %s | %d | %.3f |\n", n, b, o / b }'
done
