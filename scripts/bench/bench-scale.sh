#!/usr/bin/env bash
# bench-scale.sh [FILES ...]
#
# File-count scale: for each FILES (default 1000000), that many files of SCALE_BYTES bytes (default 16) in 1,000
# directories under SCALE_DIR (default /dev/shm); producer | consumer extract against tar | tar into SCALE_OUT
# (default SCALE_DIR/xbkit-scale-out), RUNS times (default 3), printing the median time and each side's peak RSS
# (GNU time's maximum resident set size). A file in tmpfs costs a page of memory and an inode (/dev/shm allows about
# 3 million): 10,000,000 files run with empty files on disk, extracted into a file system with enough inodes, e.g.
#   truncate -s 8G /var/tmp/scale.img && mkfs.ext4 -q -N 10500000 /var/tmp/scale.img &&
#   mkdir -p /mnt/scale && mount -o loop /var/tmp/scale.img /mnt/scale &&
#   SCALE_DIR=/var/tmp SCALE_OUT=/mnt/scale/out SCALE_BYTES=0 RUNS=1 bash scripts/bench/bench-scale.sh 10000000
source "$(dirname "$0")/bench-lib.sh"
[ $# -gt 0 ] || set -- 1000000
runs=${RUNS:-3}
base=${SCALE_DIR:-/dev/shm}
bytes=${SCALE_BYTES:-16}
need python3 /usr/bin/time
build
echo "| files | case | median s | x tar \\| tar | producer peak RSS | consumer peak RSS |"
echo "|---|---|---|---|---|---|"
for files in "$@"; do
  dir=$base/xbkit-scale-$files-$bytes
  out=${SCALE_OUT:-$base/xbkit-scale-out}
  if [ ! -d "$dir" ]; then
    python3 - "$dir" "$files" "$bytes" <<'PY'
import os, sys
root, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
content = (b"0123456789abcdef" * (size // 16 + 1))[:size]
for i in range(n):
    d = os.path.join(root, "db%04d" % (i % 1000))
    if i < 1000:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "t%08d.frm" % i), "wb") as f:
        f.write(content)
PY
  fi
  tmp=$(mktemp -d)
  for run in $(seq "$runs"); do
    rm -rf "$out"; mkdir -p "$out"
    start=$(date +%s.%N)
    tar -C "$dir" -cf - . | tar -C "$out" -xf - 2>"$tmp/tar.err" || { tail -3 "$tmp/tar.err" >&2; exit 1; }
    echo "$(date +%s.%N) - $start" | bc >> "$tmp/tar"
    rm -rf "$out"; mkdir -p "$out"
    start=$(date +%s.%N)
    /usr/bin/time -f %M -o "$tmp/p.$run" "$bin/producer" -q --source "$dir" --stream=xbstream |
      /usr/bin/time -f %M -o "$tmp/c.$run" "$bin/consumer" -q extract --no-fsync -C "$out"
    echo "$(date +%s.%N) - $start" | bc >> "$tmp/ours"
  done
  rm -rf "$out"
  python3 - "$tmp" "$files" "$runs" <<'PY'
import statistics, sys
tmp, files, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
read = lambda name: [float(x) for x in open(f"{tmp}/{name}").read().split()]
tar, ours = statistics.median(read("tar")), statistics.median(read("ours"))
rss = lambda side: max(int(open(f"{tmp}/{side}.{r}").read().split()[-1]) for r in range(1, runs + 1)) / 1024
print(f"| {files:,} | tar \\| tar | {tar:.1f} | 1.00 | | |")
print(f"| {files:,} | producer \\| consumer extract | {ours:.1f} | {tar / ours:.2f} | {rss('p'):.0f} MiB | {rss('c'):.0f} MiB |")
PY
  rm -rf "$tmp"
done
echo
echo "files of $bytes bytes in $base, extracted into $(dirname "${SCALE_OUT:-$base/x}"); medians of $runs runs, peak RSS the largest of the runs; $(machine); $(date -u +%F)"
