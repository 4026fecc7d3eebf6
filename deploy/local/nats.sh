#!/usr/bin/env bash
# Local NATS servers with JetStream for the NATS sink's integration tests (tests/it/nats.rs).
#
#   deploy/local/nats.sh start|stop|kill|status|wait|install
#
# nats-server is built once with `go install` by deploy/tools/install.sh and cached under
# ${HOOKBRIDGE_CACHE:-$HOME/.cache/hookbridge}/bin. `start` runs two server processes, both bound to
# 127.0.0.1, both with JetStream on a file store whose size is bounded (max_file_store):
#
#   127.0.0.1:$HOOKBRIDGE_NATS_PORT (default 4222), plain TCP, one account HB with JetStream:
#     no credentials                   logs in as the account's anonymous user (no_auth_user)
#     hookbridge / hb-nats-secret-3d7a user and password
#     NKey UBEGKYBO…                   the seed SUAML2SI… (tests/secure_support has both)
#   127.0.0.1:$HOOKBRIDGE_NATS_TLS_PORT (default port + 1), TLS with the test CA of
#     deploy/local/certs.sh, a client certificate required (mutual TLS) and the token
#     hb-nats-token-8c21.
#
# Idempotent: `start` leaves running servers alone and only waits for them. Data survives
# stop/start; it lives under $HOOKBRIDGE_NATS_DIR (default $cache/nats, or $cache/nats-PORT for
# another port). A private server for a test that breaks it: set HOOKBRIDGE_NATS_PORT and
# HOOKBRIDGE_NATS_DIR, then `stop` it and delete the dir when done. `kill` is SIGKILL (a crash).
set -euo pipefail

SCRIPT_DIR="$(cd -P -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${HOOKBRIDGE_CACHE:-${HOME:-/root}/.cache/hookbridge}"
PORT="${HOOKBRIDGE_NATS_PORT:-4222}"
TLS_PORT="${HOOKBRIDGE_NATS_TLS_PORT:-$((PORT + 1))}"
if [[ -n ${HOOKBRIDGE_NATS_DIR:-} ]]; then
  BASE="$HOOKBRIDGE_NATS_DIR"
elif [[ $PORT == 4222 ]]; then
  BASE="$CACHE/nats"
else
  BASE="$CACHE/nats-$PORT"
fi
MAX_STORE="${HOOKBRIDGE_NATS_MAX_STORE:-1G}"
TIMEOUT="${HOOKBRIDGE_NATS_TIMEOUT:-20}"   # seconds for start/wait/stop
# Go threads that run the server's goroutines. With one per core (Go's default here, two), Go's
# scheduler wakes an idle thread to spin for work each time a goroutine is readied, which on a
# small machine shared with the bridge and the load generator takes CPU from them (as Erlang's
# busy-waiting does; rabbitmq.sh turns that off). One is what Go itself picks for a server given
# one CPU in a container (its GOMAXPROCS follows the cgroup's CPU limit).
PROCS="${HOOKBRIDGE_NATS_GOMAXPROCS:-1}"
# Test credentials (tests/secure_support has the same values).
PASSWORD_USER=hookbridge
PASSWORD_USER_SECRET=hb-nats-secret-3d7a
NKEY_USER=UBEGKYBOJVPBFBEI7ZPQXBZMVRCDOAYPVNNX53UOE4ATNY4ODDAGJ4PU
TOKEN=hb-nats-token-8c21

log() { echo "nats.sh: $*" >&2; }

server_bin() { "$SCRIPT_DIR/../tools/install.sh" nats-server; }

# PID of the server `name` (plain or tls), if it runs. Empty otherwise.
server_pid() {
  local pid cmd
  pid="$(cat "$BASE/$1.pid" 2>/dev/null || true)"
  [[ -n $pid ]] || return 0
  cmd="$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" || true)"
  [[ $cmd == *nats-server*"$BASE/$1.conf"* ]] && echo "$pid"
  return 0
}

# True when 127.0.0.1:$1 greets with a NATS INFO line that says JetStream is on.
nats_ok() {
  timeout 3 bash -c '
    exec 3<>/dev/tcp/127.0.0.1/'"$1"' || exit 1
    IFS= read -r -t 2 line <&3 || exit 1
    [[ $line == INFO* && $line == *"\"jetstream\":true"* ]]' 2>/dev/null
}

write_configs() {
  local certs
  certs="$("$SCRIPT_DIR/certs.sh")"
  mkdir -p "$BASE"
  cat >"$BASE/plain.conf" <<EOF
# Written by deploy/local/nats.sh on every start.
server_name: hookbridge-test-$PORT
listen: 127.0.0.1:$PORT
pid_file: "$BASE/plain.pid"
log_file: "$BASE/plain.log"
max_payload: 1MB
jetstream {
  store_dir: "$BASE/plain-js"
  max_file_store: $MAX_STORE
  max_memory_store: 64MB
}
accounts {
  HB {
    jetstream: enabled
    users: [
      { user: anonymous, password: "not-a-login-$RANDOM$RANDOM" }
      { user: $PASSWORD_USER, password: "$PASSWORD_USER_SECRET" }
      { nkey: $NKEY_USER }
    ]
  }
}
no_auth_user: anonymous
EOF
  cat >"$BASE/tls.conf" <<EOF
# Written by deploy/local/nats.sh on every start.
server_name: hookbridge-test-tls-$TLS_PORT
listen: 127.0.0.1:$TLS_PORT
pid_file: "$BASE/tls.pid"
log_file: "$BASE/tls.log"
tls {
  cert_file: "$certs/server.pem"
  key_file: "$certs/server.key"
  ca_file: "$certs/ca.pem"
  verify: true
  timeout: 2
}
authorization { token: "$TOKEN" }
jetstream {
  store_dir: "$BASE/tls-js"
  max_file_store: $MAX_STORE
  max_memory_store: 64MB
}
EOF
}

show_log() {
  local f="$BASE/$1.log"
  [[ -f $f ]] && { log "last lines of $f:"; tail -n 20 "$f" >&2; }
  return 0
}

# Waits until the server `name` answers on `port`; `pid` (optional) is the process just started,
# which writes its pid file only once it is up.
wait_ready() {
  local name="$1" port="$2" pid="${3:-}" deadline=$((SECONDS + TIMEOUT))
  until nats_ok "$port"; do
    if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null || [[ -z $pid && -z "$(server_pid "$name")" ]]; then
      log "the $name server is not running"; show_log "$name"; return 1
    fi
    if ((SECONDS >= deadline)); then
      log "the $name server does not answer on 127.0.0.1:$port after ${TIMEOUT}s"; show_log "$name"; return 1
    fi
    sleep 0.1
  done
}

start_one() {
  local name="$1" port="$2" bin="$3"
  if [[ -n "$(server_pid "$name")" ]]; then
    wait_ready "$name" "$port"
    return
  fi
  if nats_ok "$port"; then
    log "something else answers NATS on 127.0.0.1:$port; not starting another server there"
    return 1
  fi
  # setsid: the server outlives the shell (and the test) that started it.
  GOMAXPROCS="$PROCS" setsid "$bin" -c "$BASE/$name.conf" </dev/null >>"$BASE/$name.out" 2>&1 &
  wait_ready "$name" "$port" "$!"
}

stop_one() {
  local name="$1" signal="$2" pid deadline=$((SECONDS + TIMEOUT))
  pid="$(server_pid "$name")"
  [[ -n $pid ]] || return 0
  kill "-$signal" "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      log "the $name server (pid $pid) did not stop in ${TIMEOUT}s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    sleep 0.1
  done
  rm -f "$BASE/$name.pid"
}

status_one() {
  local name="$1" port="$2" pid
  pid="$(server_pid "$name")"
  if [[ -n $pid ]] && nats_ok "$port"; then
    echo "$name: running (pid $pid) on 127.0.0.1:$port, data in $BASE"
  elif [[ -n $pid ]]; then
    echo "$name: running (pid $pid) but not answering on 127.0.0.1:$port"
    return 1
  else
    echo "$name: not running (127.0.0.1:$port)"
    return 1
  fi
}

case "${1:-}" in
  install)
    server_bin
    ;;
  start)
    bin="$(server_bin)"
    write_configs
    start_one plain "$PORT" "$bin"
    start_one tls "$TLS_PORT" "$bin"
    log "ready on 127.0.0.1:$PORT (plain) and 127.0.0.1:$TLS_PORT (TLS), data in $BASE"
    ;;
  wait)
    wait_ready plain "$PORT"
    wait_ready tls "$TLS_PORT"
    ;;
  stop)
    stop_one plain TERM
    stop_one tls TERM
    ;;
  kill)
    stop_one plain KILL
    stop_one tls KILL
    ;;
  status)
    rc=0
    status_one plain "$PORT" || rc=1
    status_one tls "$TLS_PORT" || rc=1
    exit "$rc"
    ;;
  *)
    log "usage: $0 start|stop|kill|status|wait|install"
    exit 2
    ;;
esac
