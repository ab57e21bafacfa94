# Sourced by the bench scripts (bench-callgrind, bench-dhat, bench-cpu-split): the bench's own
# server (`micdrop bench --serve-only`) under a wrapper (valgrind, taskset).
#
#   serve_only LOG COMMAND...
#
# Runs COMMAND (the wrapper, then the micdrop command line) in the background with
# MICDROP_LOG=warn, its stdin on a fifo held open by file descriptor 3 (`exec 3>&-` closes it
# and the server stops), its stderr in LOG; waits for the URL the server prints, up to 60 s.
# Sets SERVER_PID and URL; needs DIR (a temporary directory of the caller's). The caller's EXIT
# trap should close descriptor 3 and kill SERVER_PID.
serve_only() {
  local log="$1"
  shift
  mkfifo "$DIR/in"
  MICDROP_LOG=warn "$@" <"$DIR/in" >"$DIR/url" 2>"$log" &
  SERVER_PID=$!
  exec 3>"$DIR/in"
  for _ in $(seq 1 600); do [ -s "$DIR/url" ] && break; sleep 0.1; done
  URL="$(head -n1 "$DIR/url")"
  [ -n "$URL" ] || { cat "$log" >&2; echo "the server did not start" >&2; exit 1; }
}
