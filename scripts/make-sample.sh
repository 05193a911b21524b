#!/usr/bin/env bash
# make-sample.sh DIR SIZE_MB
#
# A mixed sample tree of about SIZE_MB MiB, with nothing but bash and coreutils: one big file (half the size,
# alternating random and text MiB blocks), 16 medium files, 200 small files in nested directories (1..64 KiB), and
# an empty file. Every directory holds a file of its own: mbstream -x / xbstream -x create only a file's immediate
# parent, so a tree with a directory that holds only directories is one they cannot extract (and the producer warns
# about it). Used by scripts/demo.sh; the benchmarks use shared/peers/make-dataset.sh when it is present.
set -euo pipefail
dir=${1:?usage: make-sample.sh DIR SIZE_MB}
size_mb=${2:?usage: make-sample.sh DIR SIZE_MB}
[ -e "$dir" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ] && { echo "refusing: $dir is not empty" >&2; exit 1; }
mkdir -p "$dir/medium" "$dir/small"
text() { head -c "$2" < <(yes "the quick brown fox $1 jumps over the lazy dog and the innodb buffer pool $RANDOM"); }
big_mb=$(( size_mb / 2 > 0 ? size_mb / 2 : 1 ))
for i in $(seq 0 $(( big_mb - 1 ))); do
  if (( i % 2 )); then head -c 1048576 /dev/urandom; else text "$i" 1048576; fi
done > "$dir/big.ibd"
medium_kb=$(( (size_mb - big_mb) * 1024 / 16 - 200 ))
(( medium_kb < 4 )) && medium_kb=4
for i in $(seq 0 15); do
  if (( i % 2 )); then head -c $(( medium_kb * 1024 )) /dev/urandom; else text "m$i" $(( medium_kb * 1024 )); fi > "$dir/medium/m$i.dat"
done
for i in $(seq 0 199); do
  d="$dir/small/d$(( i % 8 ))/e$(( i % 3 ))"
  if (( i < 8 )); then d="$dir/small/d$i"; fi # the first file of each small/dN in the directory itself
  mkdir -p "$d"
  if (( i % 2 )); then head -c $(( (i % 64 + 1) * 1024 )) /dev/urandom; else text "s$i" $(( (i % 64 + 1) * 1024 )); fi > "$d/s$i.dat"
done
: > "$dir/small/empty.dat"
echo "made $dir: $(find "$dir" -type f | wc -l) files, $(du -sb "$dir" | cut -f1) bytes"
