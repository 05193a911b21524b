#!/usr/bin/env bash
# bench-crypt.sh [MB]: the encryption's raw speed on this machine, before it is wired into the producer and the
# consumer (issue #21): our segments sealed and opened on 1 and on every core (crypt/examples/seal_speed.rs), beside
# the stock `age` encrypting and decrypting the same amount of data (one stream, one core), medians of 3.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
mb=${1:-1024}
command -v age >/dev/null || { echo "missing age (apt-get install age)" >&2; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/bench-crypt.XXXXXX")
trap 'rm -rf "$work"' EXIT
(cd "$root" && cargo build --release --quiet -p crypt --example seal_speed)
example="$root/target/release/examples/seal_speed"
echo "machine: $(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p' | head -1)), kernel $(uname -r)"
for threads in 1 "$(nproc)"; do
  for _ in 1 2 3; do "$example" "$mb" "$threads"; done | sort -t' ' -k6 -n | sed -n 2p
done
age-keygen -o "$work/key" 2>/dev/null
recipient=$(sed -n 's/^# public key: //p' "$work/key")
head -c "$((mb << 20))" /dev/zero | tr '\0' 'x' > "$work/plain"
median() { sort -n | sed -n 2p; }
enc=$(for _ in 1 2 3; do /usr/bin/time -f %e age -r "$recipient" -o "$work/plain.age" "$work/plain" 2>&1; done | median)
dec=$(for _ in 1 2 3; do /usr/bin/time -f %e age -d -i "$work/key" -o /dev/null "$work/plain.age" 2>&1; done | median)
echo "stock age $(age --version): encrypt $(echo "$mb / $enc * 1.048576" | bc -l | xargs printf '%.0f') MB/s, decrypt $(echo "$mb / $dec * 1.048576" | bc -l | xargs printf '%.0f') MB/s (one core)"
