#!/usr/bin/env bash
# stream-over-ssh.sh: a backup over N ssh connections, stream i on connection i, into N pipes on the remote host,
# where `consumer` extracts or stores it. Everything is started from the sending side.
#
#   scripts/transport/stream-over-ssh.sh --to backup@db2 --streams 4 --remote 'consumer extract -C /restore' \
#       -- --source /var/lib/mysql
#   scripts/transport/stream-over-ssh.sh --to backup@db2 --remote 'consumer put NIGHTLY --storage file:///backups' \
#       --rate 50M -- --source /var/lib/mysql
#
# --remote CMD: the consumer command line run by the remote shell; the recipe appends the pipe options
# (--fifo-dir, --fifo-streams). After `--`: the producer's options. --ssh CMD: the ssh command with its options
# (default `ssh`; e.g. 'ssh -p 2222 -i ~/.ssh/backup'); --rate R: `pv -L R` on each stream; --wait S: how long
# either side waits for the other's pipes (default 60). The remote host needs bash, sha1sum, tee and mktemp.
#
# Exits 0 only if the producer succeeded, the remote consumer succeeded, every connection carried its stream to
# the end, and the SHA-1 of every stream as the remote side received it equals the producer's (--digest
# stream-sha1, or the user's --digest sha1).
# On any failure the remote consumer is stopped and its temporary directory removed.
source "$(dirname "$0")/transport-lib.sh"

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
to="" remote="" streams=4 rate="" wait_s=60 ssh_cmd=ssh
parse_options --to=to --remote=remote --ssh=ssh_cmd -- "$@"
set -- "${rest[@]}"
[ -n "$to" ] && [ -n "$remote" ] || usage
[[ $streams =~ ^[1-9][0-9]*$ ]] || die "--streams must be a positive number"
read -r -a ssh_argv <<< "$ssh_cmd"
need_tools "${ssh_argv[0]}"
[ -z "$rate" ] || need_tools pv
producer=$(find_binary producer "${PRODUCER:-}")
remote_ssh() { "${ssh_argv[@]}" -o BatchMode=yes "$to" "$@"; }

work=$(mktemp -d /tmp/xbkit-ssh.XXXXXX)
remote_dir=""
jobs_to_stop=()
cleanup() {
  local rc=$?
  stop_jobs "${jobs_to_stop[@]}"
  if [ -n "$remote_dir" ]; then
    # The consumer is the one remote process whose command line holds "--fifo-dir <dir>" ([-] keeps this
    # command's own shell from matching).
    remote_ssh "pkill -TERM -f -- '[-]-fifo-dir $remote_dir/fifo' ; rm -rf '$remote_dir'" < /dev/null || true
  fi
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT
trap 'say "stopped by a signal"; exit 1' INT TERM HUP

remote_dir=$(remote_ssh 'mktemp -d /tmp/xbkit-ssh.XXXXXX' < /dev/null) || die "cannot reach $to with: $ssh_cmd"
[[ $remote_dir == /tmp/xbkit-ssh.* ]] || die "unexpected answer from $to: $remote_dir"

# The remote consumer, reading the N pipes it makes in $remote_dir/fifo.
remote_ssh "$remote --fifo-dir $remote_dir/fifo --fifo-streams $streams --fifo-timeout $wait_s" < /dev/null &
consumer_pid=$!
jobs_to_stop+=("$consumer_pid")

digest=$(digest_args "$@")
# shellcheck disable=SC2086 # $digest is empty or two words
"$producer" --stream=xbstream --fifo-dir "$work/fifo" --fifo-streams "$streams" --fifo-timeout "$wait_s" \
  $digest --stats-json "$work/stats.json" "$@" &
producer_pid=$!
jobs_to_stop+=("$producer_pid")

# Stream i: local pipe i → ssh → remote pipe i (once the consumer has made it), its SHA-1 back on the same ssh.
stream_pids=()
for ((i = 0; i < streams; i++)); do
  fifo=$remote_dir/fifo/thread_$i
  receive="set -o pipefail; for n in \$(seq $((wait_s * 10))); do [ -p $fifo ] && break; sleep 0.1; done;"
  receive+=" [ -p $fifo ] || { echo \"no pipe $fifo\" >&2; exit 3; }; tee $fifo | sha1sum | cut -c1-40"
  (
    set -o pipefail
    deadline=$((SECONDS + wait_s))
    until [ -p "$work/fifo/thread_$i" ]; do
      [ $SECONDS -lt $deadline ] && kill -0 "$producer_pid" 2>/dev/null || exit 3
      sleep 0.05
    done
    rate_limit "$rate" < "$work/fifo/thread_$i" | remote_ssh "bash -c '$receive'" > "$work/received-$i"
  ) &
  stream_pids+=($!)
  jobs_to_stop+=($!)
done

finish_streams "$producer_pid" "${stream_pids[@]}"
rc_producer=$main_rc
# Streams that failed leave the consumer waiting for bytes that will not come: stop it.
[ ${#failed_streams[@]} -eq 0 ] && [ $rc_producer -eq 0 ] ||
  remote_ssh "pkill -TERM -f -- '[-]-fifo-dir $remote_dir/fifo'" < /dev/null || true
rc_consumer=0; wait "$consumer_pid" || rc_consumer=$?
jobs_to_stop=()

[ $rc_producer -eq 0 ] || die "the producer failed (exit $rc_producer)"
[ ${#failed_streams[@]} -eq 0 ] || die "stream(s) ${failed_streams[*]} failed (connection to $to lost?)"
[ $rc_consumer -eq 0 ] || die "the remote consumer failed (exit $rc_consumer)"
stream_digests "$work/stats.json" > "$work/sent"
for ((i = 0; i < streams; i++)); do cat "$work/received-$i" 2>/dev/null || echo; done > "$work/received"
compare_digests "$work/sent" "$work/received" "$streams" || die "SHA-1 mismatch"
say "OK: $streams streams over ssh to $to; the remote consumer succeeded and every stream's SHA-1 matches"
