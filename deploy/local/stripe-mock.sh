#!/usr/bin/env bash
# Stripe's API mock, stripe-mock (github.com/stripe/stripe-mock), for the `hookbridge replay`
# tests: it answers /v1/events with Stripe's own OpenAPI spec, checking authentication and every
# query parameter's name and type.
#
#   deploy/local/stripe-mock.sh install|start|stop|status
#
# Installed with `go install` into ${HOOKBRIDGE_CACHE:-$HOME/.cache/hookbridge}/bin (pinned
# version; a second run only checks). Serves plain HTTP on 127.0.0.1:$HOOKBRIDGE_STRIPE_MOCK_PORT
# (default 12111; its HTTPS on the next port, also loopback only), in the background, logging to
# the cache directory. The tests read the same variable.
set -euo pipefail

VERSION=v0.203.0
CACHE="${HOOKBRIDGE_CACHE:-${HOME:-/root}/.cache/hookbridge}"
BIN_DIR="$CACHE/bin"
BIN="$BIN_DIR/stripe-mock"
STAMP="$BIN_DIR/stripe-mock.version"
RUN_DIR="$CACHE/stripe-mock"
PORT="${HOOKBRIDGE_STRIPE_MOCK_PORT:-12111}"
PID_FILE="$RUN_DIR/stripe-mock-$PORT.pid"
LOG="$RUN_DIR/stripe-mock-$PORT.log"

log() { echo "stripe-mock.sh: $*" >&2; }

install() {
  if [[ -x $BIN && "$(cat "$STAMP" 2>/dev/null)" == "$VERSION" ]]; then
    return 0
  fi
  command -v go >/dev/null || { log "needs Go to install stripe-mock (see README)"; return 1; }
  log "installing stripe-mock $VERSION into $BIN_DIR"
  mkdir -p "$BIN_DIR"
  GOBIN="$BIN_DIR" GOFLAGS=-mod=mod go install "github.com/stripe/stripe-mock@$VERSION"
  echo "$VERSION" >"$STAMP"
}

# PID of the stripe-mock this script started on $PORT; empty if not running.
server_pid() {
  local pid cmd
  pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  [[ -n $pid ]] || return 0
  cmd="$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" || true)"
  [[ $cmd == "$BIN "*"127.0.0.1:$PORT"* ]] && echo "$pid"
  return 0
}

# True when something on the port answers /v1/events like stripe-mock (401 without a key).
# Plain bash, so that no HTTP client needs installing.
answers() {
  timeout 3 bash -c '
    exec 3<>/dev/tcp/127.0.0.1/'"$PORT"' || exit 1
    printf "GET /v1/events HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" >&3
    IFS= read -r line <&3
    [[ $line == "HTTP/1."?" 401 "* ]]' 2>/dev/null
}

start() {
  install
  if [[ -n "$(server_pid)" ]] && answers; then
    return 0
  fi
  if answers; then
    log "port $PORT already answers like stripe-mock (not started by this script); using it"
    return 0
  fi
  mkdir -p "$RUN_DIR"
  # stripe-mock also serves HTTPS, by default on every interface's port 12112: keep it on
  # loopback, on the next port.
  (exec setsid "$BIN" -http-addr "127.0.0.1:$PORT" -https-addr "127.0.0.1:$((PORT + 1))" \
    </dev/null >"$LOG" 2>&1) &
  local pid=$!
  echo "$pid" >"$PID_FILE"
  local deadline=$((SECONDS + 30))
  until answers; do
    # Not server_pid: until the exec, the child's command line is still this shell's.
    if ! kill -0 "$pid" 2>/dev/null; then
      log "stripe-mock exited; its log:"; tail -n 20 "$LOG" >&2; return 1
    fi
    if ((SECONDS >= deadline)); then
      log "not answering on 127.0.0.1:$PORT after 30s"; tail -n 20 "$LOG" >&2; return 1
    fi
    sleep 0.2
  done
  log "started on 127.0.0.1:$PORT (pid $(server_pid))"
}

stop() {
  local pid
  pid="$(server_pid)"
  if [[ -n $pid ]]; then
    kill -TERM "$pid"
    local deadline=$((SECONDS + 5))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    log "stopped (pid $pid)"
  fi
  rm -f "$PID_FILE"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status)
    if answers; then echo "running on 127.0.0.1:$PORT"; else echo "not running"; exit 1; fi ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
