#!/usr/bin/env bash
# demo.sh [SIZE_MB] [PIPES]
#
# The main job end to end on a generated sample: producer → N named pipes → consumer extract → verify, then a
# byte-for-byte comparison with the source. Prints one summary line; exits non-zero if anything differs.
set -euo pipefail
size_mb=${1:-256}
pipes=${2:-4}
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=target/release
work=$(mktemp -d /tmp/xbkit-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
bash scripts/make-sample.sh "$work/src" "$size_mb" >/dev/null

started=$(date +%s.%N)
"$bin/consumer" extract -q -C "$work/out" --fifo-streams "$pipes" --fifo-dir "$work/fifo" --fifo-timeout 30 &
consumer=$!
"$bin/producer" -q --source "$work/src" --stream=xbstream --fifo-streams "$pipes" --fifo-dir "$work/fifo" --fifo-timeout 30
wait "$consumer"
finished=$(date +%s.%N)
"$bin/consumer" -q verify "$work/out"
diff -r --exclude=backup-manifest.json "$work/src" "$work/out"

files=$(find "$work/src" -type f | wc -l)
bytes=$(du -sb "$work/src" | cut -f1)
echo "demo: OK: $files files, $(( bytes / 1048576 )) MiB, producer -> $pipes pipes -> consumer extract in" \
  "$(awk -v a="$started" -v b="$finished" 'BEGIN { printf "%.2f", b - a }') s; manifest verified, trees identical"
