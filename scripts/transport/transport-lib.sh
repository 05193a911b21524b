# Shared by stream-over-nc.sh and stream-over-ssh.sh. Source it.
#
# The recipes' rule: a side exits 0 only if its own programs succeeded, the other side said it succeeded, and every
# stream's SHA-1 as the receiver got it equals the SHA-1 the producer computed as it wrote it.
set -euo pipefail
set -m # every background job in its own process group, so cleanup can stop a whole pipeline

recipe=$(basename "$0" .sh)
say() { echo "$recipe: $*" >&2; }
die() { say "error: $*"; exit 1; }

# The binaries: $PRODUCER / $CONSUMER, else on PATH, else this checkout's release build.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
find_binary() {
  local name=$1 override=$2
  if [ -n "$override" ]; then echo "$override"; return; fi
  if command -v "$name" >/dev/null; then command -v "$name"; return; fi
  if [ -x "$here/../../target/release/$name" ]; then echo "$here/../../target/release/$name"; return; fi
  die "cannot find $name: put it on PATH or set ${name^^}=/path/to/$name"
}

need_tools() { for t in "$@"; do command -v "$t" >/dev/null || die "missing $t (apt-get install netcat-openbsd pv openssh-client)"; done; }

# stream_digests STATS_JSON: the producer's per-stream SHA-1s (`--digest sha1 --stats-json`), one per line, in
# stream order. The only "sha1" fields of that file are the streams'.
stream_digests() { grep -o '"sha1": *"[0-9a-f]*"' "$1" | sed 's/.*"\([0-9a-f]*\)"$/\1/'; }

# digest_args PRODUCER_ARG...: the --digest the recipe gives the producer: stream-sha1 (the streams' SHA-1s in
# --stats-json), unless the user chose sha1 (per-file SHA-1s too), which hashes the streams as well.
digest_args() {
  local previous=""
  for arg in "$@"; do
    case $previous=$arg in
      --digest=sha1 | --digest=stream-sha1) return ;;
      --digest=*) die "the recipe compares the streams' SHA-1s: use --digest sha1 or stream-sha1, not $arg" ;;
    esac
    case $arg in
      --digest=sha1 | --digest=stream-sha1) return ;;
      --digest=*) die "the recipe compares the streams' SHA-1s: use --digest sha1 or stream-sha1, not ${arg#--digest=}" ;;
    esac
    previous=$arg
  done
  echo "--digest stream-sha1"
}

# compare_digests SENT_FILE RECEIVED_FILE N: both N lines, stream i on line i+1; prints one line per mismatch and
# fails if any.
compare_digests() {
  local sent=$1 received=$2 n=$3 bad=0 i a b
  for ((i = 0; i < n; i++)); do
    a=$(sed -n "$((i + 1))p" "$sent")
    b=$(sed -n "$((i + 1))p" "$received")
    if [ -z "$a" ] || [ "$a" != "$b" ]; then
      say "stream $i: SHA-1 sent ${a:-(none)}, received ${b:-(none)}"
      bad=1
    fi
  done
  return $bad
}

# stop_jobs PID...: SIGTERM to each job's process group (the whole pipeline), then reap.
stop_jobs() {
  local pid
  for pid in "$@"; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

# finish_streams MAIN_PID STREAM_PID...: waits for the main program (the producer or the consumer); if it failed,
# stops the stream jobs first (they may wait forever on a pipe it never opened); then waits for each stream job.
# Sets main_rc, and failed_streams to the numbers of the stream jobs that failed.
finish_streams() {
  local main=$1 rc i
  shift
  local pids=("$@")
  main_rc=0
  wait "$main" || main_rc=$?
  [ $main_rc -eq 0 ] || stop_jobs "${pids[@]}"
  failed_streams=()
  for ((i = 0; i < ${#pids[@]}; i++)); do
    rc=0
    wait "${pids[$i]}" || rc=$?
    [ $rc -eq 0 ] || failed_streams+=("$i")
  done
}

# parse_options OPTION=VAR... -- ARG...: a recipe's command line. Each `OPTION VALUE` in ARG... sets VAR, for the
# OPTIONs named and the ones every recipe takes (--streams, --rate, --wait: streams, rate, wait_s); `--` ends them,
# and the arguments after it (the producer's or the consumer's) are left in the array `rest`; anything else is the
# recipe's usage.
parse_options() {
  local -A vars=([--streams]=streams [--rate]=rate [--wait]=wait_s)
  while [ "$1" != -- ]; do vars[${1%%=*}]=${1#*=}; shift; done
  shift
  rest=()
  while [ $# -gt 0 ]; do
    case $1 in
      --) shift; rest=("$@"); break ;;
      *)
        if [ -z "$1" ] || [ -z "${vars[$1]:-}" ]; then usage; fi
        printf -v "${vars[$1]}" '%s' "$2"
        shift 2
        ;;
    esac
  done
}

# rate_limit RATE: `pv -q -L RATE` when RATE is set, else `cat`.
rate_limit() { if [ -n "$1" ]; then pv -q -L "$1"; else cat; fi; }
