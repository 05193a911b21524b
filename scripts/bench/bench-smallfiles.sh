#!/usr/bin/env bash
# bench-smallfiles.sh [FILES] [RUNS]
#
# Per-file overhead: FILES (default 100,000) small files of 1..8 KiB in 1,000 directories, in tmpfs (so that the
# page cache's moods do not decide the result), streamed into a pipe drained by cat, against tar -c | cat and
# mbstream -c | cat; and the round trips producer | consumer extract, tar | tar and mbstream -c | mbstream -x into
# tmpfs. Medians of RUNS (default 5). Needs about 2 x 0.5 GB of /dev/shm for the default size.
source "$(dirname "$0")/bench-lib.sh"
files=${1:-100000}
runs=${2:-5}
dir=/dev/shm/xbkit-small-$files
need hyperfine mbstream python3
build
if [ ! -d "$dir" ]; then
  python3 - "$dir" "$files" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
for i in range(n):
    d = os.path.join(root, "db%03d" % (i % 1000))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "t%06d.frm" % i), "wb") as f:
        f.write(rng.randbytes(rng.randint(1, 8) * 1024))
PY
fi
bytes=$(tree_bytes "$dir")
out=/dev/shm/xbkit-small-out
json=${BENCH_OUT:-/tmp/xbkit-bench}/smallfiles.json
mkdir -p "$(dirname "$json")"
bench "$json" "$runs" "rm -rf $out; mkdir -p $out" \
  "tar -c | cat" "tar -C $dir -cf - . | cat > /dev/null" \
  "mbstream -c | cat" "cd $dir && $(mbstream_files) | xargs -d '\\n' mbstream -c | cat > /dev/null" \
  "producer | cat" "$bin/producer -q --source $dir --stream=xbstream | cat > /dev/null" \
  "tar -c | tar -x" "tar -C $dir -cf - . | tar -C $out -xf -" \
  "mbstream -c | mbstream -x" "cd $dir && $(mbstream_files) | xargs -d '\\n' mbstream -c | mbstream -x -C $out" \
  "producer | consumer extract" "$bin/producer -q --source $dir --stream=xbstream | $bin/consumer -q extract --no-fsync -C $out"
rm -rf "$out"
echo
echo "$(find "$dir" -type f | wc -l) small files, $((bytes / 1000000)) MB in tmpfs ($dir), into tmpfs; medians of $runs runs; $(machine); $(date -u +%F)"
echo
table "$json" "$bytes" "tar -c | cat" "tar -c | tar -x" "mbstream -c | mbstream -x"
