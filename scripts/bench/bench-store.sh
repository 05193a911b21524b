#!/usr/bin/env bash
# bench-store.sh [SIZE_MB] [RUNS]   (defaults 1024 MB, 3 runs)   |   bench-store.sh --quick   (256 MB, 1 run)
#
# consumer put / get against object storage, with the peers measured in the same run:
#   put file:// (a directory on /tmp, ext4; every object is fsynced) and put s3:// (s3s-fs on loopback, its root on
#   /tmp unless BENCH_S3_ROOT says otherwise, e.g. /dev/shm/...) from STDOUT and from 1, 2, 4, 8 named pipes, the
#   producer running at the same time; get of every stored layout to /dev/null (STDOUT, streams merged) and to its N
#   pipes drained by `cat`; boto3 upload_file / download_file of a tar of the same dataset to the same server
#   (TransferConfig(max_concurrency=8, multipart_chunksize=8 MiB), timed inside python: interpreter start excluded)
#   and, as our layout's request pattern, the same bytes as 8 MiB objects put / got by 8 threads;
#   `tar -c | cat`, `producer | cat`, `tar -cf FILE && sync FILE` and `cat packs` for reference; the objects each
#   backup makes against xbcloud's one object per chunk; and a sweep of --object-size 4M/8M/16M/32M x --parallel
#   4/8/16 on s3 with 4 pipes (SWEEP_RUNS runs, default RUNS, no warm-up); plus get --parallel 16 against boto3 at
#   max_concurrency=16.
# Medians of RUNS (hyperfine, one warm-up); the dataset's cache is re-warmed and `sync` run before every put; peak
# RSS of the consumer from GNU time (the largest of all runs); CPU seconds of the client (hyperfine user+sys: the
# producer and the consumer) and of the server (s3s-fs, from /proc). MB/s = 10^6 bytes of dataset per second.
# Writes ${BENCH_OUT:-/tmp/bench-store}/results.md and results.json (raw: every run) and prints the tables.
source "$(dirname "$0")/bench-lib.sh"
if [ "${1:-}" = --quick ]; then size_mb=256 runs=1; else size_mb=${1:-1024} runs=${2:-3}; fi
sweep_runs=${SWEEP_RUNS:-$runs}
need hyperfine python3 s3s-fs tar /usr/bin/time
python3 -c 'import boto3' || { echo "missing boto3 for python3" >&2; exit 1; }

work=/tmp/xbkit-bench
ds=$work/ds$size_mb
out=${BENCH_OUT:-/tmp/bench-store}
files=$work/store-file                 # file:// root (ext4)
s3root=${BENCH_S3_ROOT:-$work/store-s3} # s3s-fs root
fifo=$work/store-fifo
archive=$work/store-ds$size_mb.tar
ak=AKIABENCHSTORE sk=bench-store-secret-key bucket=bench
rm -rf "$out" "$files" "$s3root" "$fifo"
mkdir -p "$work" "$out"/{raw,rss,cpu} "$files" "$s3root"
bytes=$(prepare "$ds" "$size_mb")
tar -C "$ds" -cf "$archive" .
warm="$(warm_cmd "$ds")"

# The server, on a free port; stopped (by its PID) and the stores removed whatever happens.
cleanup() {
  local rc=$?
  stop_server
  rm -rf "$files" "$s3root" "$fifo" "$archive" "$work/store-check"
  exit $rc
}
trap cleanup EXIT
start_s3s_fs "$s3root" "$ak" "$sk" "$out/s3s-fs.log"
endpoint=http://127.0.0.1:$port

# boto3: the peer (`boto` in bench-lib.sh; up/down RUNS times after one warm-up, timed around the transfer only).
boto mkbucket

s3args="--storage s3://$bucket/xbkit --s3-endpoint $endpoint --s3-access-key $ak --s3-secret-key $sk"
fileargs="--storage file://$files"
rss() { echo "/usr/bin/time -f %M -a -o $out/rss/$1.txt"; }
: > "$out/cases.tsv"

# case SLUG KIND NAME RUNS WARMUP PREPARE CMD: one hyperfine call, with the server's CPU over it.
case_() {
  local slug=$1 kind=$2 name=$3 n=$4 w=$5 prep=$6 cmd=$7 c0 c1
  printf '%s\t%s\t%s\n' "$slug" "$kind" "$name" >> "$out/cases.tsv"
  c0=$(server_cpu)
  hyperfine --style basic --runs "$n" --warmup "$w" --prepare "$prep" --export-json "$out/raw/$slug.json" \
    -n "$name" "$cmd" >&2
  c1=$(server_cpu)
  echo "$c0 $c1 $((n + w))" > "$out/cpu/$slug.txt"
}

# put_cmd SLUG STOREARGS NAME PIPES [EXTRA]: producer and consumer together, STDOUT (PIPES=0) or N named pipes.
put_cmd() {
  local slug=$1 store=$2 name=$3 n=$4 extra=${5:-}
  if [ "$n" = 0 ]; then
    echo "$bin/producer -q --source $ds --stream=xbstream | $(rss "$slug") $bin/consumer -q put $name $store $extra"
  else
    echo "$(rss "$slug") $bin/consumer -q put $name $store $extra --fifo-streams $n --fifo-dir $fifo & c=\$!;" \
      "$bin/producer -q --source $ds --stream=xbstream --fifo-streams $n --fifo-dir $fifo; p=\$?; wait \$c && [ \$p = 0 ]"
  fi
}
# get_cmd SLUG STOREARGS NAME PIPES [EXTRA]: to /dev/null through STDOUT (PIPES=0) or N pipes each drained by cat.
get_cmd() {
  local slug=$1 store=$2 name=$3 n=$4 extra=${5:-} i cats="" pids=""
  if [ "$n" = 0 ]; then
    echo "$(rss "$slug") $bin/consumer -q get $name $store $extra > /dev/null"
  else
    for i in $(seq 0 $((n - 1))); do cats+="mkfifo -m 600 $fifo/thread_$i; cat $fifo/thread_$i > /dev/null & c$i=\$!; "; pids+=" \$c$i"; done
    echo "rm -rf $fifo; mkdir -m 700 $fifo; $cats $(rss "$slug") $bin/consumer -q get $name $store $extra" \
      "--fifo-streams $n --fifo-dir $fifo; r=\$?; [ \$r = 0 ] || kill$pids 2>/dev/null; wait; exit \$r"
  fi
}
layouts="0 1 2 4 8"
label() { if [ "$1" = 0 ]; then echo STDOUT; elif [ "$1" = 1 ]; then echo "1 pipe"; else echo "$1 pipes"; fi; }
# With the defaults (--memory-limit 256M, --max-chunk-size 16M) put refuses 8 streams: 8 chunk buffers of 16 MiB
# leave room for 7 packs and it needs 9 (one per stream and one uploading). 2M is what our producer sends.
put_extra() { if [ "$1" = 8 ]; then echo "--max-chunk-size 2M"; fi; }
put_label() { echo "$(label "$1")${2:+ ($2)}"; }
del() { echo "$bin/consumer -q delete $1 $2 > /dev/null 2>&1 || true"; }

# References, then the puts (boto3 upload first), then the gets (boto3 download first).
case_ ref-tar put "tar -c | cat" "$runs" 1 "$warm" "tar -C $ds -cf - . | cat > /dev/null"
case_ ref-producer put "producer | cat" "$runs" 1 "$warm" "$bin/producer -q --source $ds --stream=xbstream | cat > /dev/null"
case_ ref-tarfile put "tar -cf FILE && sync FILE (file:// dir)" "$runs" 1 "rm -f $files/peer.tar; sync; $warm" \
  "tar -C $ds -cf $files/peer.tar . && sync $files/peer.tar"
rm -f "$files/peer.tar"
printf '%s\t%s\t%s\n' boto-up put "boto3 upload_file (s3)" >> "$out/cases.tsv"
boto up "$archive" peer/ds.tar "$runs" 1 "$server" "boto3 upload_file (s3)" "$out/raw/boto-up.json"
printf '%s\t%s\t%s\n' boto-puts put "boto3 put_object x 8 MiB objects, 8 threads (s3)" >> "$out/cases.tsv"
boto puts "$archive" peer/parts "$runs" 1 "$server" "boto3 put_object x 8 MiB objects, 8 threads (s3)" "$out/raw/boto-puts.json"
for n in $layouts; do
  case_ "put-file-$n" put "put file:// from $(put_label "$n" "$(put_extra "$n")")" "$runs" 1 "$(del "f$n" "$fileargs"); rm -rf $fifo; sync; $warm" \
    "$(put_cmd "put-file-$n" "$fileargs" "f$n" "$n" "$(put_extra "$n")")"
done
for n in $layouts; do
  case_ "put-s3-$n" put "put s3:// from $(put_label "$n" "$(put_extra "$n")")" "$runs" 1 "$(del "s$n" "$s3args"); rm -rf $fifo; sync; $warm" \
    "$(put_cmd "put-s3-$n" "$s3args" "s$n" "$n" "$(put_extra "$n")")"
done
printf '%s\t%s\t%s\n' boto-down get "boto3 download_file (s3)" >> "$out/cases.tsv"
boto down "$archive" peer/ds.tar "$runs" 1 "$server" "boto3 download_file (s3)" "$out/raw/boto-down.json"
printf '%s\t%s\t%s\n' boto-gets get "boto3 get_object x 8 MiB objects, 8 threads (s3)" >> "$out/cases.tsv"
boto gets "$archive" peer/parts "$runs" 1 "$server" "boto3 get_object x 8 MiB objects, 8 threads (s3)" "$out/raw/boto-gets.json"
case_ ref-catpacks get "cat packs > /dev/null (file://, 1 stream)" "$runs" 1 "sync" "cat $files/f0/*/0/*.xbs > /dev/null"
for kind in file s3; do
  if [ $kind = file ]; then args=$fileargs p=f; else args=$s3args p=s; fi
  for n in $layouts; do
    from="stored from $(label "$n")"
    case_ "get-$kind-$n-stdout" get "get $kind:// to STDOUT, $from" "$runs" 1 "rm -rf $fifo; sync" \
      "$(get_cmd "get-$kind-$n-stdout" "$args" "$p$n" 0)"
    if [ "$n" != 0 ]; then
      case_ "get-$kind-$n-pipes" get "get $kind:// to $(label "$n"), $from" "$runs" 1 "rm -rf $fifo; sync" \
        "$(get_cmd "get-$kind-$n-pipes" "$args" "$p$n" "$n")"
    fi
  done
done

# More downloads in flight, on both sides.
case_ get-s3-0-stdout-p16 get "get s3:// to STDOUT, stored from STDOUT, --parallel 16" "$runs" 1 "sync" \
  "$(get_cmd "get-s3-0-stdout-p16" "$s3args" s0 0 "--parallel 16")"
printf '%s\t%s\t%s\n' boto-down-16 get "boto3 download_file, max_concurrency=16 (s3)" >> "$out/cases.tsv"
boto down "$archive" peer/ds.tar "$runs" 1 "$server" "boto3 download_file, max_concurrency=16 (s3)" "$out/raw/boto-down-16.json" 16

# Objects per backup: ours (packs, manifest, index), counted in the store; xbcloud's: one per chunk of the stream.
: > "$out/objects.tsv"
for n in $layouts; do
  cp "$files/f$n/index.json" "$out/index-file-$n.json"
  cp "$s3root/$bucket/xbkit/s$n/index.json" "$out/index-s3-$n.json"
  printf '%s\t%s\t%s\t%s\n' "$(label "$n")" "$(find "$files/f$n" -type f | wc -l)" \
    "$(boto count "xbkit/s$n/" "$out/objects-s3-$n.txt")" "$n" >> "$out/objects.tsv"
done

# Correctness, outside the timing: a merged STDOUT get re-extracted, and get -C (which proves against the manifest),
# both compared byte for byte with the dataset.
check=$work/store-check
for how in "$bin/consumer -q get f8 $fileargs | $bin/consumer -q extract --no-fsync -C $check" \
           "$bin/consumer -q get s4 $s3args --no-fsync -C $check"; do
  rm -rf "$check"
  bash -c "$how"
  diff -r --exclude=backup-manifest.json "$ds" "$check" > /dev/null || { echo "get check FAILED: $how" >&2; exit 1; }
done
rm -rf "$check"
echo "get check: the file:// 8-pipe backup merged to STDOUT and the s3:// 4-pipe backup with -C reproduced the dataset" >&2

# The sweep: s3, 4 pipes; the main backups go first (disk space).
for n in $layouts; do bash -c "$(del "f$n" "$fileargs"); $(del "s$n" "$s3args")"; done
for os in 4M 8M 16M 32M; do
  for par in 4 8 16; do
    name=w$os-$par
    case_ "sweep-put-$os-$par" sweep-put "put s3:// 4 pipes --object-size $os --parallel $par" "$sweep_runs" 0 \
      "$(del "$name" "$s3args"); rm -rf $fifo; sync; $warm" \
      "$(put_cmd "sweep-put-$os-$par" "$s3args" "$name" 4 "--object-size $os --parallel $par")"
    case_ "sweep-get-$os-$par" sweep-get "get s3:// 4 pipes --object-size $os --parallel $par" "$sweep_runs" 0 "sync" \
      "$(get_cmd "sweep-get-$os-$par" "$s3args" "$name" 4 "--parallel $par")"
    bash -c "$(del "$name" "$s3args")"
  done
done

s3fs=$(df -T "$s3root" | awk 'NR == 2 { print $2 }')
filefs=$(df -T "$files" | awk 'NR == 2 { print $2 }')
header="Object storage, $((bytes / 1000000)) MB dataset ($ds, $(find "$ds" -type f | wc -l) files), medians of $runs runs"
header+=" (sweep: $sweep_runs); file:// on $files ($filefs), s3:// = s3s-fs $(s3s-fs --version | awk '{print $2}') on"
header+=" 127.0.0.1, root $s3root ($s3fs); boto3 $(python3 -c 'import boto3; print(boto3.__version__)'); $(machine); $(date -u +%F)"
python3 - "$out" "$bytes" "$header" <<'PY' | tee "$out/results.md"
import json, statistics, sys
out, size, header = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cases = [line.rstrip("\n").split("\t") for line in open(f"{out}/cases.tsv")]
data = {}
for slug, kind, name in cases:
    r = json.load(open(f"{out}/raw/{slug}.json"))["results"][0]
    try:
        kb = [int(x) for x in open(f"{out}/rss/{slug}.txt").read().split() if x.isdigit()]
        r["rss_kb_runs"] = kb
        r["rss_kb"] = max(kb)
    except FileNotFoundError:
        pass
    if "client_cpu" not in r:
        r["client_cpu"] = r["user"] + r["system"]  # hyperfine's means
    try:
        c0, c1, n = open(f"{out}/cpu/{slug}.txt").read().split()
        r["server_cpu"] = (float(c1) - float(c0)) / int(n)
    except FileNotFoundError:
        pass
    r["slug"], r["kind"] = slug, kind
    data[slug] = r
esc = lambda text: text.replace("|", "\\|")
mib = lambda r: f"{r['rss_kb'] / 1024:,.0f}" if "rss_kb" in r else "–"
cpu = lambda r, k: f"{r[k]:.2f}" if r.get(k) is not None and (k != "server_cpu" or r[k] >= 0.005) else "–"
print(header + "\n")
for kind, base, title, base2, title2 in (("put", "boto-up", "upload_file", "boto-puts", "put_object"),
                                         ("get", "boto-down", "download_file", "boto-gets", "get_object")):
    print(f"| {kind} case | median s | MB/s | x boto3 {title} | x boto3 {title2} | peak RSS MiB | client CPU s "
          "| server CPU s |")
    print("|---|---|---|---|---|---|---|---|")
    for slug, k, name in cases:
        if k != kind:
            continue
        r = data[slug]; m = r["median"]
        print(f"| {esc(r['command'])} | {m:.3f} | {size / m / 1e6:,.0f} | {data[base]['median'] / m:.2f} "
              f"| {data[base2]['median'] / m:.2f} | {mib(r)} | {cpu(r, 'client_cpu')} | {cpu(r, 'server_cpu')} |")
    print()
print("Objects per backup (ours: the packs plus backup-manifest.json and index.json; xbcloud: one per chunk):\n")
print("| layout | objects, file:// | objects, s3:// (listed) | mean pack MiB | chunks in the stream = xbcloud objects | fewer objects |")
print("|---|---|---|---|---|---|")
for line in open(f"{out}/objects.tsv"):
    label, nfile, ns3, n = line.rstrip("\n").split("\t")
    ix = {k: json.load(open(f"{out}/index-{k}-{n}.json")) for k in ("file", "s3")}
    packs = {k: sum(len(s["packs"]) for s in ix[k]["streams"]) for k in ix}
    chunks = sum(s["chunks"] for s in ix["s3"]["streams"])
    data.setdefault("objects", {})[label] = {"file": int(nfile), "s3": int(ns3), "packs": packs, "chunks": chunks}
    mean = sum(p["size"] for s in ix["s3"]["streams"] for p in s["packs"]) / packs["s3"] / 2**20
    print(f"| {label} | {nfile} | {ns3} | {mean:.1f} | {chunks:,} | {chunks / int(ns3):.0f}x |")
print()
print("Sweep, s3:// from / to 4 pipes (get with the same --parallel):\n")
print("| --object-size | --parallel | put s | put MB/s | put RSS MiB | get s | get MB/s | get RSS MiB |")
print("|---|---|---|---|---|---|---|---|")
for slug, kind, name in cases:
    if kind != "sweep-put":
        continue
    p, g = data[slug], data[slug.replace("sweep-put", "sweep-get")]
    _, _, os_, par = slug.split("-")
    print(f"| {os_} | {par} | {p['median']:.3f} | {size / p['median'] / 1e6:,.0f} | {mib(p)} | {g['median']:.3f} "
          f"| {size / g['median'] / 1e6:,.0f} | {mib(g)} |")
json.dump({"header": header, "bytes": size, "cases": data}, open(f"{out}/results.json", "w"), indent=1)
PY
