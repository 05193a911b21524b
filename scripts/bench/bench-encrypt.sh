#!/usr/bin/env bash
# bench-encrypt.sh [DATASET_DIR] [SIZE_MB] [RUNS]
#
# Encrypted backups on the warm mixed dataset (issue #21), every stream drained by `wc -c` so its size is measured
# in the same run: producer --encrypt-recipient against producer alone and against tar -c | age -r; with
# --compress against tar -c | zstd -1 -T2 | age -r (and producer --compress alone, for the padding's size cost);
# then the way back into tmpfs: consumer extract --decrypt (and extract without a key, then consumer decrypt) against
# age -d | tar -x, and with --decompress against age -d | zstd -d | tar -x. Medians of
# RUNS (default 3), CPU seconds per GB from hyperfine's user + system times, and the producer's peak RSS against
# its --memory-limit. Prints markdown tables.
source "$(dirname "$0")/bench-lib.sh"
dataset_bench 3 hyperfine zstd age age-keygen python3 -- "$@"
work=/tmp/xbkit-bench/encrypt
out=/dev/shm/xbkit-bench-eout
rm -rf "$work"
mkdir -p "$work/sizes"
age-keygen -o "$work/key" 2>/dev/null
r=$(sed -n 's/^# public key: //p' "$work/key")
p="$bin/producer -q --source $ds --stream=xbstream"
json=$work/encrypt.json
bench "$json" "$runs" "$(warm_cmd "$ds")" \
  "producer | wc -c" "$p | wc -c > $work/sizes/producer" \
  "producer --encrypt-recipient | wc -c" "$p --encrypt-recipient $r | wc -c > $work/sizes/producer-age" \
  "tar -c | age -r | wc -c" "tar -C $ds -cf - . | age -r $r | wc -c > $work/sizes/tar-age" \
  "producer --compress | wc -c" "$p --compress | wc -c > $work/sizes/producer-zst" \
  "producer --compress --encrypt-recipient | wc -c" "$p --compress --encrypt-recipient $r | wc -c > $work/sizes/producer-zst-age" \
  "tar -c | zstd -1 -T2 | age -r | wc -c" "tar -C $ds -cf - . | zstd -1 -T2 -q -c | age -r $r | wc -c > $work/sizes/tar-zst-age"

# The way back, from streams made once into tmpfs.
s=/dev/shm/xbkit-bench
$p --encrypt-recipient "$r" > $s-enc.xbs
$p --compress --encrypt-recipient "$r" > $s-zenc.xbs
tar -C "$ds" -cf - . | age -r "$r" > $s-tar.age
tar -C "$ds" -cf - . | zstd -1 -T2 -q -c | age -r "$r" > $s-tar.zst.age
c="$bin/consumer -q"
back=$work/back.json
bench "$back" "$runs" "rm -rf $out; mkdir -p $out" \
  "consumer extract --decrypt (tmpfs)" "$c extract --no-fsync -C $out --decrypt --identity $work/key < $s-enc.xbs" \
  "consumer extract, then consumer decrypt (tmpfs)" "$c extract --no-fsync -C $out < $s-enc.xbs && $c decrypt $out --identity $work/key --remove-original" \
  "age -d | tar -x (tmpfs)" "age -d -i $work/key < $s-tar.age | tar -C $out -xf -" \
  "consumer extract --decrypt --decompress (tmpfs)" "$c extract --no-fsync -C $out --decrypt --decompress --identity $work/key < $s-zenc.xbs" \
  "age -d | zstd -d | tar -x (tmpfs)" "age -d -i $work/key < $s-tar.zst.age | zstd -d -q -c | tar -C $out -xf -"
rm -rf "$out" $s-enc.xbs $s-zenc.xbs $s-tar.age $s-tar.zst.age

# Peak RSS of extract --decrypt (default --memory-limit 256M), from a stream made again.
rss_back=$( { $p --encrypt-recipient "$r" | /usr/bin/time -f %M $c extract --no-fsync -C $out --decrypt --identity $work/key; } 2>&1 | tail -1)
rm -rf "$out"

# Peak RSS of the encrypting producer (default --memory-limit 256M).
rss=$( { /usr/bin/time -f %M $p --encrypt-recipient "$r" --compress > /dev/null; } 2>&1 | tail -1)

echo
echo "Encryption, $((bytes / 1000000)) MB dataset ($ds), medians of $runs runs; $(machine); $(date -u +%F)"
echo
cpu_table() {
  python3 - "$1" "$bytes" "$2" <<'PY'
import json, sys
path, size, base = sys.argv[1], int(sys.argv[2]), sys.argv[3]
results = json.load(open(path))["results"]
median = {r["command"]: r["median"] for r in results}
print(f"| case | median s | MB/s | x {base.replace('|', chr(92) + '|')} | CPU s per GB |")
print("|---|---|---|---|---|")
for r in results:
    m, cpu = r["median"], r["user"] + r["system"]
    print(f"| {r['command'].replace('|', chr(92) + '|')} | {m:.3f} | {size / m / 1e6:,.0f} | {median[base] / m:.2f} | {cpu / (size / 1e9):.2f} |")
PY
}
cpu_table "$json" "tar -c | age -r | wc -c"
echo
cpu_table "$back" "age -d | tar -x (tmpfs)"
echo
echo "| stream | bytes | x original |"
echo "|---|---|---|"
for f in producer producer-age tar-age producer-zst producer-zst-age tar-zst-age; do
  awk -v n="$f" -v b="$(cat "$work/sizes/$f")" -v o="$bytes" 'BEGIN { printf "| %s | %d | %.4f |\n", n, b, b / o }'
done
echo
echo "producer --compress --encrypt-recipient: peak RSS $((rss / 1024)) MiB; consumer extract --decrypt: $((rss_back / 1024)) MiB (--memory-limit 256M each)"
