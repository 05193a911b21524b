#!/usr/bin/env bash
# stream-over-nc.sh: a backup over N TCP connections (netcat), stream i on connection i, into N pipes at the
# receiver. Start the receiving side first; it waits for the sender.
#
#   receiver$ scripts/transport/stream-over-nc.sh receive --port 9100 --streams 4 -- extract -C /restore
#   receiver$ scripts/transport/stream-over-nc.sh receive --port 9100 --streams 4 -- put NIGHTLY --storage file:///backups
#   sender$   scripts/transport/stream-over-nc.sh send --host db2 --port 9100 --streams 4 [--rate 50M] -- --source /var/lib/mysql
#
# After `--`: the receiver's `consumer` subcommand and its options, or the sender's `producer` options; the
# recipe adds the pipe options (--fifo-dir, --fifo-streams) and, on the sender, --digest sha1 --stats-json.
#
# Ports: PORT is a control connection (the sender's report and the receiver's verdict); PORT+1 … PORT+N carry
# streams 0 … N-1. Options: --listen ADDR (receiver; default 0.0.0.0), --rate R (sender: `pv -L R` on each
# stream), --wait S (how long either side waits for the other to appear; default 60).
#
# Each side exits 0 only if its own programs succeeded, the other side reported success, and the SHA-1 of every
# stream as the receiver got it equals the SHA-1 the producer computed as it wrote it (`--digest stream-sha1`,
# or the user's `--digest sha1`; an `extract` receiver hashes each stream as it reads it, any other subcommand
# gets a `tee | sha1sum` per stream). A dead connection, a
# failed producer or consumer, or a mismatch on any stream is a non-zero exit on both sides, with the reason.
# The binaries: $PRODUCER / $CONSUMER, else on PATH, else this checkout's target/release.
source "$(dirname "$0")/transport-lib.sh"

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 1 ] || usage
role=$1; shift
host="" port="" streams=4 listen=0.0.0.0 rate="" wait_s=60
parse_options --host=host --port=port --listen=listen -- "$@"
set -- "${rest[@]}"
[ -n "$port" ] || die "--port is required"
[[ $streams =~ ^[1-9][0-9]*$ ]] || die "--streams must be a positive number"
need_tools nc
[ -z "$rate" ] || need_tools pv

work=$(mktemp -d /tmp/xbkit-nc.XXXXXX)
jobs_to_stop=()
cleanup() {
  local rc=$?
  stop_jobs "${jobs_to_stop[@]}" ${CTRL_PID:+"$CTRL_PID"}
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT
trap 'say "stopped by a signal"; exit 1' INT TERM HUP

# control_write FD LINE...: the lines to the control connection. SIGPIPE is ignored while writing, so a peer that
# has gone (a refused connection: nc exited) is a failed write, not a silently killed script.
control_write() {
  local fd=$1 rc=0; shift
  trap '' PIPE
  printf '%s\n' "$@" >&"$fd" 2>/dev/null || rc=1
  trap - PIPE
  return $rc
}

# wait_for_pipes PID: until the N pipes exist in $work/fifo (made by the program PID), or it dies, or --wait.
wait_for_pipes() {
  local pid=$1 deadline=$((SECONDS + wait_s)) i
  for ((i = 0; i < streams; i++)); do
    until [ -p "$work/fifo/thread_$i" ]; do
      kill -0 "$pid" 2>/dev/null || die "the ${2:-program} stopped before making its pipes"
      [ $SECONDS -lt $deadline ] || die "no pipes in $work/fifo after ${wait_s} s"
      sleep 0.05
    done
  done
}

receive() {
  local consumer rc_consumer=0 rc i line kind a b verdict=ok
  consumer=$(find_binary consumer "${CONSUMER:-}")
  [ $# -ge 1 ] || die "after --: the consumer subcommand (extract -C DIR, put NAME --storage URL, …)"
  # extract hashes every stream as it reads it (--digest sha1 --stats-json): what arrived, with no extra copy.
  # Other subcommands get a `tee | sha1sum` on each stream.
  local self_hashing="" arg
  for arg in "$@"; do # the subcommand: the first word that is not an option (-q, -v come before it)
    case $arg in
      -*) ;;
      *) [ "$arg" != extract ] || self_hashing=1; break ;;
    esac
  done
  local extra=()
  [ -z "$self_hashing" ] || extra=(--digest sha1 --stats-json "$work/consumer-stats.json")
  "$consumer" "$@" --fifo-dir "$work/fifo" --fifo-streams "$streams" --fifo-timeout "$wait_s" "${extra[@]}" &
  local consumer_pid=$!
  jobs_to_stop+=("$consumer_pid")
  wait_for_pipes "$consumer_pid" consumer
  # Stream i: connection PORT+1+i → pipe i (and its SHA-1).
  local stream_pids=()
  for ((i = 0; i < streams; i++)); do
    if [ -n "$self_hashing" ]; then
      nc -d -l "$listen" $((port + 1 + i)) > "$work/fifo/thread_$i" &
    else
      (set -o pipefail; nc -d -l "$listen" $((port + 1 + i)) | tee "$work/fifo/thread_$i" | sha1sum | cut -c1-40 \
        > "$work/received-$i") &
    fi
    stream_pids+=($!)
    jobs_to_stop+=($!)
  done
  # Listening on every stream port before the control port opens: the sender starts once the control answers.
  local deadline=$((SECONDS + 10))
  while command -v ss >/dev/null && [ "$(ss -Hltn | awk -v lo=$((port + 1)) -v hi=$((port + streams)) \
      '{ n = split($4, a, ":"); p = a[n] + 0; if (p >= lo && p <= hi) c++ } END { print c + 0 }')" -lt "$streams" ]; do
    [ $SECONDS -lt $deadline ] || die "the stream listeners did not start"
    sleep 0.05
  done
  coproc CTRL { exec nc -N -l "$listen" "$port"; }
  local to=${CTRL[1]} from=${CTRL[0]} control_pid=$CTRL_PID
  say "listening on $listen ports $port-$((port + streams)); waiting ${wait_s} s for the sender"
  if ! read -r -t "$wait_s" -u "$from" line || [ "$line" != "hello $streams" ]; then
    die "no sender said hello on port $port within ${wait_s} s${line:+ (it said: $line)}"
  fi
  control_write "$to" "ready" || die "the sender went away before the transfer"

  finish_streams "$consumer_pid" "${stream_pids[@]}"
  rc_consumer=$main_rc
  jobs_to_stop=()
  # The sender's report: its producer's exit status and what it wrote on each stream.
  local sender_rc="" got_end=""
  : > "$work/sent"
  while read -r -t "$wait_s" -u "$from" kind a b; do
    case $kind in
      producer) sender_rc=$a ;;
      sha1) echo "$b" >> "$work/sent" ;;
      end) got_end=1; break ;;
    esac
  done
  if [ -n "$self_hashing" ]; then
    stream_digests "$work/consumer-stats.json" > "$work/received" 2>/dev/null || true
  else
    for ((i = 0; i < streams; i++)); do cat "$work/received-$i" 2>/dev/null || echo; done > "$work/received"
  fi
  if [ $rc_consumer -ne 0 ]; then verdict="the consumer failed (exit $rc_consumer)"
  elif [ ${#failed_streams[@]} -gt 0 ]; then verdict="stream(s) ${failed_streams[*]} failed at the receiver"
  elif [ -z "$got_end" ]; then verdict="the sender went away without its report"
  elif [ "$sender_rc" != 0 ]; then verdict="the sender's producer failed (exit $sender_rc)"
  elif ! compare_digests "$work/sent" "$work/received" "$streams"; then verdict="SHA-1 mismatch"
  fi
  control_write "$to" "$verdict" || true
  exec {to}>&-
  # Let nc deliver the verdict (it exits once the sender has read it and hung up) before cleanup stops it.
  for _ in $(seq 300); do kill -0 "$control_pid" 2>/dev/null || break; sleep 0.05; done
  if [ "$verdict" != ok ]; then die "$verdict"; fi
  say "OK: $streams streams received; every stream's SHA-1 matches the producer's"
}

send() {
  local producer rc_producer=0 rc i line reply=""
  [ -n "$host" ] || die "--host is required"
  producer=$(find_binary producer "${PRODUCER:-}")
  # The control connection first: retried until the receiver answers, or --wait.
  local deadline=$((SECONDS + wait_s)) to from
  while :; do
    coproc CTRL { exec nc -N "$host" "$port" 2>/dev/null; }
    to=${CTRL[1]} from=${CTRL[0]}
    control_write "$to" "hello $streams" || true
    # A refused connection ends the read at once (nc exits); a live one has until --wait to answer, so a loaded
    # receiver is waited for rather than dropped and then found busy.
    if read -r -t "$(( deadline > SECONDS ? deadline - SECONDS : 1 ))" -u "$from" line 2>/dev/null \
        && [ "$line" = ready ]; then break; fi
    stop_jobs "$CTRL_PID"
    [ $SECONDS -lt $deadline ] || die "no receiver answered on $host:$port within ${wait_s} s"
    sleep 0.2
  done
  local digest
  digest=$(digest_args "$@")
  # shellcheck disable=SC2086 # $digest is empty or two words
  "$producer" --stream=xbstream --fifo-dir "$work/fifo" --fifo-streams "$streams" --fifo-timeout "$wait_s" \
    $digest --stats-json "$work/stats.json" "$@" &
  local producer_pid=$!
  jobs_to_stop+=("$producer_pid")
  wait_for_pipes "$producer_pid" producer
  local stream_pids=()
  for ((i = 0; i < streams; i++)); do
    (set -o pipefail; rate_limit "$rate" < "$work/fifo/thread_$i" | nc -N "$host" $((port + 1 + i))) &
    stream_pids+=($!)
    jobs_to_stop+=($!)
  done
  finish_streams "$producer_pid" "${stream_pids[@]}"
  rc_producer=$main_rc
  jobs_to_stop=()
  local report_rc=$rc_producer
  [ ${#failed_streams[@]} -eq 0 ] || report_rc=1
  local report="producer $report_rc"
  if [ $rc_producer -eq 0 ]; then
    report+=$'\n'$(stream_digests "$work/stats.json" | awk '{ print "sha1", NR - 1, $1 }')
  fi
  control_write "$to" "$report" "end" || true
  read -r -t "$wait_s" -u "$from" reply 2>/dev/null || true
  [ $rc_producer -eq 0 ] || die "the producer failed (exit $rc_producer); the receiver says: ${reply:-nothing}"
  [ ${#failed_streams[@]} -eq 0 ] || die "stream(s) ${failed_streams[*]} failed (connection to $host lost?)"
  [ "$reply" = ok ] || die "the receiver says: ${reply:-nothing (it went away)}"
  say "OK: $streams streams sent to $host; the receiver matched every stream's SHA-1"
}

case $role in
  receive) receive "$@" ;;
  send) send "$@" ;;
  *) usage ;;
esac
