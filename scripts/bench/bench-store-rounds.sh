#!/usr/bin/env bash
# bench-store-rounds.sh [SIZE_MB] [ROUNDS]   (defaults 1024 MB, 8 rounds)
#
# consumer put / get against boto3's best modes on the same s3s-fs server, in rounds: each round runs every case
# once, one after another, so a machine whose speed drifts (a shared VM, the server's own state) favours no case.
# bench-store.sh runs each case's repetitions back to back; on a 2-core machine where s3s-fs takes most of the CPU,
# its boto3 rows moved by ±25 % between runs, which this layout evens out. The first round is a warm-up, dropped.
#   get cases: boto3 download_file at 8 and 16 threads (TransferConfig, 8 MiB parts, timed in python) and
#     `consumer get` of a backup stored from STDOUT, to /dev/null, with its defaults (and `--parallel 8`);
#   put cases: boto3 put_object of 8 MiB parts by 8 threads (of a tar of the dataset, its cache warm) and
#     `producer | consumer put` from STDOUT and from 4 pipes (the dataset's cache warm, `sync` before each).
# Prints per case the median wall seconds, the ratio to boto3's faster mode (above 1: we are faster), and the
# server's CPU seconds per run (from /proc); the raw rows go to ${BENCH_OUT:-/tmp/bench-store-rounds}/rounds.tsv.
source "$(dirname "$0")/bench-lib.sh"
size_mb=${1:-1024}
rounds=${2:-8}
need python3 s3s-fs tar /usr/bin/time
python3 -c 'import boto3' || { echo "missing boto3 for python3" >&2; exit 1; }

work=/tmp/xbkit-bench
ds=$work/ds$size_mb
out=${BENCH_OUT:-/tmp/bench-store-rounds}
s3root=$work/rounds-s3
fifo=$work/rounds-fifo
archive=$work/rounds-ds$size_mb.tar
ak=AKIABENCHROUNDS sk=bench-rounds-secret-key bucket=bench
rm -rf "$out" "$s3root" "$fifo"
mkdir -p "$out" "$s3root"
bytes=$(prepare "$ds" "$size_mb")
tar -C "$ds" -cf "$archive" .

cleanup() {
  local rc=$?
  stop_server
  rm -rf "$s3root" "$fifo" "$archive"
  exit $rc
}
trap cleanup EXIT
start_s3s_fs "$s3root" "$ak" "$sk" "$out/s3s-fs.log"
endpoint=http://127.0.0.1:$port
boto mkbucket
s3args=(--storage "s3://$bucket/xbkit" --s3-endpoint "$endpoint" --s3-access-key "$ak" --s3-secret-key "$sk")
warm() { bash -c "$(warm_cmd "$ds")"; }

# What the gets read: the archive as one object (boto3's) and our backup of the dataset.
boto up "$archive" peer/ds.tar 1 0 "$server" "upload" "$out/up.json"
"$bin/producer" -q --source "$ds" --stream=xbstream | "$bin/consumer" -q put stored "${s3args[@]}"

# run_case CASE: runs it once; prints its wall seconds and the server's CPU seconds.
run_case() {
  local c0 t0 t1 c1
  case $1 in
    boto-get-*)
      boto down "$archive" peer/ds.tar 1 0 "$server" x "$out/b.json" "${1#boto-get-}"
      python3 -c "import json; r = json.load(open('$out/b.json'))['results'][0]; print(r['median'], r['server_cpu'])"
      return ;;
    boto-puts)
      warm; sync
      boto puts "$archive" peer/parts 1 0 "$server" x "$out/b.json" 8
      python3 -c "import json; r = json.load(open('$out/b.json'))['results'][0]; print(r['median'], r['server_cpu'])"
      return ;;
    put-*) "$bin/consumer" -q delete put "${s3args[@]}" > /dev/null 2>&1 || true; rm -rf "$fifo"; warm; sync ;;
  esac
  c0=$(server_cpu); t0=$(date +%s.%N)
  case $1 in
    get-default) "$bin/consumer" -q get stored "${s3args[@]}" > /dev/null ;;
    get-parallel-8) "$bin/consumer" -q get stored "${s3args[@]}" --parallel 8 > /dev/null ;;
    put-stdout) "$bin/producer" -q --source "$ds" --stream=xbstream | "$bin/consumer" -q put put "${s3args[@]}" ;;
    put-4-pipes)
      "$bin/consumer" -q put put "${s3args[@]}" --fifo-streams 4 --fifo-dir "$fifo" & local c=$!
      "$bin/producer" -q --source "$ds" --stream=xbstream --fifo-streams 4 --fifo-dir "$fifo"
      wait "$c" ;;
  esac
  t1=$(date +%s.%N); c1=$(server_cpu)
  python3 -c "print($t1 - $t0, $c1 - $c0)"
}

cases="boto-get-8 boto-get-16 get-default get-parallel-8 boto-puts put-stdout put-4-pipes"
: > "$out/rounds.tsv"
for round in $(seq 0 "$rounds"); do
  for c in $cases; do
    # Not in a process substitution: a case that fails stops the script (set -e) rather than reading as fast.
    run_case "$c" > "$out/case.txt"
    read -r wall cpu < "$out/case.txt"
    printf '%s\t%s\t%s\t%s\n' "$round" "$c" "$wall" "$cpu" | tee -a "$out/rounds.tsv" >&2
  done
done

echo "Object storage in rounds: $((bytes / 1000000)) MB dataset ($ds), $rounds rounds after a warm-up round;" \
  "s3s-fs $(s3s-fs --version | awk '{print $2}') on 127.0.0.1; boto3 $(python3 -c 'import boto3; print(boto3.__version__)');" \
  "$(machine); $(date -u +%F)"
python3 - "$out/rounds.tsv" <<'PY'
import statistics, sys
rows = [line.split("\t") for line in open(sys.argv[1]) if not line.startswith("0\t")]
cases = list(dict.fromkeys(r[1] for r in rows))
wall = {c: statistics.median(float(r[2]) for r in rows if r[1] == c) for c in cases}
cpu = {c: statistics.median(float(r[3]) for r in rows if r[1] == c) for c in cases}
best_get = min(wall["boto-get-8"], wall["boto-get-16"])
print("| case | median s | x boto3's best mode | server CPU-s (median) |")
print("|---|---|---|---|")
for c in cases:
    best = best_get if "get" in c else wall["boto-puts"]
    print(f"| {c} | {wall[c]:.3f} | {best / wall[c]:.2f} | {cpu[c]:.2f} |")
PY
