#!/usr/bin/env bash
# bench-operate.sh [SIZE_MB] [RUNS]   (defaults 1024 MB, 3 runs)
#
# Issue #23's rows, on s3s-fs over loopback (its root on /tmp unless BENCH_S3_ROOT says otherwise): a backup of the
# mixed dataset plus one 6 MiB table (`shop/orders.ibd` and its `.frm`), then, each timed by hyperfine (medians of
# RUNS, one warm-up):
#   get -C OUT (the whole backup), get -C OUT --include 'shop/orders.*' (one table),
#   check (metadata only), check --read-data 10%, check --read-data (every pack, every file proven),
# and the bytes the partial get read of those stored (from its own summary line). Writes
# ${BENCH_OUT:-/tmp/bench-operate}/results.md and prints it.
source "$(dirname "$0")/bench-lib.sh"
size_mb=${1:-1024}
runs=${2:-3}
need hyperfine python3 s3s-fs
work=/tmp/xbkit-bench
ds=$work/operate$size_mb
out=${BENCH_OUT:-/tmp/bench-operate}
s3root=${BENCH_S3_ROOT:-$work/operate-s3}
restore=$work/operate-out
ak=AKIABENCHOPERATE sk=bench-operate-secret-key bucket=bench
rm -rf "$out" "$s3root" "$restore"
mkdir -p "$work" "$out" "$s3root"
bytes=$(prepare "$ds" "$size_mb")
if [ ! -f "$ds/shop/orders.ibd" ]; then
  mkdir -p "$ds/shop"
  head -c $((6 << 20)) /dev/urandom > "$ds/shop/orders.ibd"
  echo "orders frm" > "$ds/shop/orders.frm"
  bytes=$(tree_bytes "$ds")
fi

cleanup() {
  local rc=$?
  stop_server
  rm -rf "$s3root" "$restore"
  exit $rc
}
trap cleanup EXIT
start_s3s_fs "$s3root" "$ak" "$sk" "$out/s3s-fs.log"
mkdir -p "$s3root/$bucket"
s3="--storage s3://$bucket/xbkit --s3-endpoint http://127.0.0.1:$port --s3-access-key $ak --s3-secret-key $sk"
c="$bin/consumer"

# shellcheck disable=SC2086 # $s3 is several arguments
"$bin/producer" --source "$ds" --stream=xbstream -q | "$c" put NIGHTLY $s3 -q
stored=$(find "$s3root/$bucket" -type f -printf '%s\n' | awk '{ s += $1 } END { print s }')
# shellcheck disable=SC2086
partial_line=$("$c" get NIGHTLY $s3 -C "$restore/p" --include 'shop/orders.*' --no-fsync 2>&1 | tail -1)
rm -rf "$restore"

bench "$out/operate.json" "$runs" "rm -rf $restore" \
  "get -C (whole)" "$c get NIGHTLY $s3 -C $restore/w --no-fsync -q" \
  "get -C --include 'shop/orders.*'" "$c get NIGHTLY $s3 -C $restore/p --no-fsync -q --include 'shop/orders.*'" \
  "check" "$c check NIGHTLY $s3 -q" \
  "check --read-data 10%" "$c check NIGHTLY $s3 -q --read-data 10%" \
  "check --read-data" "$c check NIGHTLY $s3 -q --read-data"

{
  echo "### Partial restore and check in place, $size_mb MB dataset ($bytes bytes; $stored bytes stored); medians of $runs"
  echo
  table "$out/operate.json" "$bytes" "get -C (whole)"
  echo
  echo "Partial get's own account: ${partial_line#consumer: }"
  echo
  echo "$(machine); $(date -u +%F)"
} | tee "$out/results.md"
