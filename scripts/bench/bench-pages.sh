#!/usr/bin/env bash
# bench-pages.sh [SIZE_MB] [RUNS]: the cost of --validate-pages on a datadir's worth of real tablespaces.
#
# A private MariaDB (tests/scripts/mariadb-tablespaces.sh) makes tablespaces in every format it writes
# (full_crc32, full_crc32 page_compressed, classic crc32, ROW_FORMAT=COMPRESSED) and the system tablespace; their
# copies fill a tree of about SIZE_MB MiB (default 2048), as many schemas would. Then, in the same run:
# `producer | cat` and `producer | consumer extract` (tmpfs) with and without --validate-pages, medians of RUNS
# (default 5). Target (issue 11): validation costs under 15 %.
source "$(dirname "$0")/bench-lib.sh"
size_mb=${1:-2048}
runs=${2:-5}
need hyperfine mariadbd innochecksum
work=${BENCH_WORK:-/tmp/xbkit-bench-pages}
out=${BENCH_OUT:-$work/results}
mkdir -p "$work" "$out"
build
if [ ! -f "$work/tree/.complete" ]; then
  rm -rf "$work/server" "$work/tree"
  bash "$root/tests/scripts/mariadb-tablespaces.sh" "$work/server" >&2
  data="$work/server/data"
  mkdir -p "$work/tree"
  cp "$data/ibdata1" "$work/tree/"
  copy=0
  while [ "$(du -sm "$work/tree" | cut -f1)" -lt "$size_mb" ]; do
    mkdir -p "$work/tree/db$copy"
    cp "$data"/pages/* "$work/tree/db$copy/"
    copy=$((copy + 1))
  done
  touch "$work/tree/.complete"
fi
tree="$work/tree"
bytes=$(tree_bytes "$tree")
pages=$(find "$tree" -name '*.ibd' -o -name 'ibdata*' | wc -l)
target=/dev/shm/xbkit-bench-pages-out
warm="$(warm_cmd "$tree")"
bench "$out/pages.json" "$runs" "$warm; rm -rf $target" \
  "producer | cat" "$bin/producer -q --source $tree --stream=xbstream | cat > /dev/null" \
  "producer --validate-pages | cat" "$bin/producer -q --source $tree --stream=xbstream --validate-pages | cat > /dev/null" \
  "producer | consumer extract (tmpfs)" \
  "$bin/producer -q --source $tree --stream=xbstream | $bin/consumer -q extract -C $target --no-fsync" \
  "producer --validate-pages | consumer extract (tmpfs)" \
  "$bin/producer -q --source $tree --stream=xbstream --validate-pages | $bin/consumer -q extract -C $target --no-fsync"
rm -rf "$target"
echo
echo "--validate-pages on $bytes bytes ($pages tablespace files, copies of a MariaDB server's own), medians of $runs runs; $(machine)"
echo
table "$out/pages.json" "$bytes" "producer | cat" "producer | consumer extract (tmpfs)"
