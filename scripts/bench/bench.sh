#!/usr/bin/env bash
# bench.sh [--quick] [--out DIR] [bench.py options]: the whole benchmark matrix, with peers in the same run.
#
# Builds the release binaries, makes a Python venv with matplotlib and boto3 (once, in $BENCH_VENV, default
# ~/.cache/xbkit-bench-venv), and runs scripts/bench/bench.py: {STDOUT, FIFO 1, 2, 4, 8} x {drain, extract,
# put file://, put s3://} x {none, zstd -1}, the peers (cat, a raw pipe, tar | cat, tar | tar,
# mbstream -c | mbstream -x, tar | zstd -1 -T2, boto3), and the emulated link (root: a veth pair into a network
# namespace, an htb cap per TCP connection, streams over scripts/transport/stream-over-nc.sh, N = 1, 2, 4, 8).
# Results: OUT/results.md, OUT/results.json, OUT/throughput.svg (OUT: --out, else $BENCH_OUT, else target/bench).
#
# Needs: cargo, python3 (with venv), tar, zstd, mbstream (mariadb-backup), nc (netcat-openbsd), s3s-fs
# (`cargo install s3s-fs --version 0.14.1 --features binary --locked`; or --no-s3), GNU time, and for the link
# ip and tc (iproute2) as root (else it is skipped, and said so). --quick: 128 MiB, one run, under 2 minutes.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
for tool in cargo python3 tar zstd mbstream nc /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "bench: missing $tool" >&2; exit 1; }
done
(cd "$root" && cargo build --release --quiet)
venv=${BENCH_VENV:-$HOME/.cache/xbkit-bench-venv}
if ! "$venv/bin/python" -c 'import matplotlib, boto3' 2>/dev/null; then
  echo "bench: making $venv (matplotlib, boto3)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'matplotlib>=3.7,<4' 'boto3>=1.34,<2'
fi
exec "$venv/bin/python" "$root/scripts/bench/bench.py" "$@"
