#!/usr/bin/env bash
# Local RabbitMQ (Debian's rabbitmq-server package) for integration tests.
#
#   deploy/local/rabbitmq.sh start|stop|restart|kill|status|wait|reset
#   deploy/local/rabbitmq.sh ctl ARGS...   # rabbitmqctl against this node,
#                                          # e.g. ctl list_queues name messages
#
# AMQP listens on 127.0.0.1:5672 (guest/guest), AMQPS on 127.0.0.1:5671 with the test CA of
# deploy/local/certs.sh. Test users (made once per data dir):
#   hookbridge / hb-amqp-secret-71b0   password login (over TLS or not)
#   hookbridge-client                  no password: EXTERNAL login with certs/client.pem (CN)
# No systemd: the node runs as
# root in the background, node name rabbit@localhost, with data and logs under
# ${HOOKBRIDGE_CACHE:-$HOME/.cache/hookbridge}/rabbitmq. Data survives
# stop/start/kill; only `reset` wipes it.
set -euo pipefail

SCRIPT_DIR="$(cd -P -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
BASE="${HOOKBRIDGE_CACHE:-${HOME:-/root}/.cache/hookbridge}/rabbitmq"
RMQ_BIN=/usr/lib/rabbitmq/bin      # the real scripts; /usr/sbin/* would su to user rabbitmq
NODE=rabbit@localhost
PORT=5672
TLS_PORT=5671
CERTS="${HOOKBRIDGE_CACHE:-${HOME:-/root}/.cache/hookbridge}/certs"
# Test users (tests/amqp_support has the same values).
PASSWORD_USER=hookbridge
PASSWORD_USER_SECRET=hb-amqp-secret-71b0
CERT_USER=hookbridge-client
TIMEOUT="${RABBITMQ_WAIT_TIMEOUT:-60}"  # seconds for start/wait/stop
PID_FILE="$BASE/beam.pid"
LOG_DIR="$BASE/log"

# Environment shared by the server and the CLI tools.
export HOME="$BASE"                          # .erlang.cookie lives here
export RABBITMQ_NODENAME="$NODE"
export RABBITMQ_CONF_ENV_FILE=/dev/null      # ignore /etc/rabbitmq/rabbitmq-env.conf
# Written on every start from $SCRIPT_DIR/rabbitmq/rabbitmq.conf with the certificates' path.
export RABBITMQ_CONFIG_FILE="$BASE/rabbitmq.conf"
export RABBITMQ_ADVANCED_CONFIG_FILE="$BASE/advanced.config"   # absent = none
export RABBITMQ_ENABLED_PLUGINS_FILE="$BASE/enabled_plugins"
export RABBITMQ_MNESIA_BASE="$BASE/mnesia"
export RABBITMQ_LOG_BASE="$LOG_DIR"
export RABBITMQ_PID_FILE="$BASE/rabbit.pid"
export ERL_EPMD_ADDRESS=127.0.0.1            # epmd on loopback only
export ERL_CRASH_DUMP="$LOG_DIR/erl_crash.dump"
# Erlang distribution (port 25672) on loopback only.
# Erlang schedulers busy-wait by default; on a small machine shared with the bridge and the load
# generator that spinning takes CPU from them, so it is turned off (RabbitMQ's advice for
# shared hosts).
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1} +sbwt none +sbwtdcpu none +sbwtdio none"

log() { echo "rabbitmq.sh: $*" >&2; }

ctl() { "$RMQ_BIN/rabbitmqctl" -q -n "$NODE" "$@"; }

# Install the package if missing, without letting postinst start the service.
install_if_missing() {
  if [[ "$(dpkg-query -W -f='${Status}' rabbitmq-server 2>/dev/null)" == "install ok installed" ]]; then
    return 0
  fi
  log "installing rabbitmq-server with apt-get"
  local policy=/usr/sbin/policy-rc.d own_policy=""
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
    own_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold rabbitmq-server
  if [[ -n $own_policy ]]; then rm -f "$policy"; trap - EXIT; fi
}

# PID of the server job: the package's rabbitmq-server sh script, which runs
# beam as its child and forwards SIGTERM to it. Empty if not running.
server_pid() {
  local pid cmd
  pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  [[ -n $pid ]] || return 0
  cmd="$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" || true)"
  [[ $cmd == *"$RMQ_BIN/rabbitmq-server"* ]] && echo "$pid"
  return 0
}

# PID of our beam process (child of the server job). Empty if not running.
beam_pid() {
  local parent pid cmd
  parent="$(server_pid)"
  [[ -n $parent ]] || return 0
  for pid in $(pgrep -P "$parent" || true); do
    cmd="$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" || true)"
    [[ $cmd == *beam*"-home $BASE "* ]] && echo "$pid"
  done
  return 0
}

# True if something on 127.0.0.1:$PORT answers the AMQP 0-9-1 header with a frame
# (Connection.Start, frame type 1) -- i.e. the broker accepts AMQP clients.
amqp_ok() {
  timeout 3 bash -c '
    exec 3<>/dev/tcp/127.0.0.1/'"$PORT"' || exit 1
    printf "AMQP\x00\x00\x09\x01" >&3
    [[ "$(head -c 1 <&3 | od -An -tx1)" == " 01" ]]' 2>/dev/null
}

# Wait up to $TIMEOUT s until AMQP is accepted; fail early if the node died.
wait_ready() {
  local deadline=$((SECONDS + TIMEOUT))
  until amqp_ok; do
    if [[ -z "$(server_pid)" ]]; then
      log "node is not running"; show_logs; return 1
    fi
    if ((SECONDS >= deadline)); then
      log "not accepting AMQP on 127.0.0.1:$PORT after ${TIMEOUT}s"; show_logs; return 1
    fi
    sleep 0.2
  done
}

show_logs() {
  local f
  for f in "$LOG_DIR/startup.log" "$LOG_DIR/$NODE.log"; do
    [[ -s $f ]] && { echo "--- tail $f" >&2; tail -n 40 "$f" >&2; }
  done
  return 0
}

# Wait up to $1 s for process $2 to exit. A zombie counts as gone: our
# detached job is reaped by pid 1, which may take a second or two.
wait_gone() {
  local deadline=$((SECONDS + $1)) state
  while read -r _ _ state _ 2>/dev/null <"/proc/$2/stat" && [[ $state != Z ]]; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

# The test users, once per data dir (a marker file records it).
ensure_users() {
  local marker="$RABBITMQ_MNESIA_BASE/.hookbridge-users-v1"
  [[ -f $marker ]] && return 0
  ctl add_user "$PASSWORD_USER" "$PASSWORD_USER_SECRET" >/dev/null 2>&1 ||
    ctl change_password "$PASSWORD_USER" "$PASSWORD_USER_SECRET" >/dev/null
  ctl add_user "$CERT_USER" "unused-$RANDOM$RANDOM" >/dev/null 2>&1 || true
  ctl clear_password "$CERT_USER" >/dev/null
  local u
  for u in "$PASSWORD_USER" "$CERT_USER"; do
    ctl set_permissions -p / "$u" '.*' '.*' '.*' >/dev/null
  done
  touch "$marker"
  log "test users $PASSWORD_USER and $CERT_USER created"
}

start() {
  install_if_missing
  "$SCRIPT_DIR/certs.sh" "$CERTS" >/dev/null
  if [[ -n "$(server_pid)" ]]; then
    wait_ready; ensure_users; return
  fi
  if amqp_ok; then
    log "port $PORT is already served by a broker not started by this script"; return 1
  fi
  mkdir -p "$BASE" "$LOG_DIR" "$RABBITMQ_MNESIA_BASE"
  sed "s|@CERTS@|$CERTS|g" "$SCRIPT_DIR/rabbitmq/rabbitmq.conf" >"$RABBITMQ_CONFIG_FILE"
  # EXTERNAL (certificate) login.
  echo '[rabbitmq_auth_mechanism_ssl].' >"$RABBITMQ_ENABLED_PLUGINS_FILE"
  # Start detached from this shell (own session, no inherited fds).
  (cd "$BASE" && exec setsid "$RMQ_BIN/rabbitmq-server" </dev/null >"$LOG_DIR/startup.log" 2>&1) &
  echo $! >"$PID_FILE"
  wait_ready
  ensure_users
  log "started (beam pid $(beam_pid)); AMQP on 127.0.0.1:$PORT, AMQPS on 127.0.0.1:$TLS_PORT"
}

stop() {
  local job pid
  job="$(server_pid)"
  if [[ -z $job ]]; then rm -f "$PID_FILE"; return 0; fi
  # Graceful: on SIGTERM the node shuts down cleanly (as with `rabbitmqctl
  # stop`, without booting a CLI VM). Escalate to SIGKILL only on timeout.
  pid="$(beam_pid)"
  kill -TERM "${pid:-$job}"
  if ! wait_gone "$TIMEOUT" "$job"; then
    log "no clean stop after ${TIMEOUT}s; killing it"
    kill_node; return 1
  fi
  rm -f "$PID_FILE"
  log "stopped"
}

# Hard crash of the broker (for fault tests); data is recovered on next start.
kill_node() {
  local job pid
  job="$(server_pid)"
  if [[ -z $job ]]; then rm -f "$PID_FILE"; return 0; fi
  pid="$(beam_pid)"
  # The job was started with setsid, so its process group holds just it and beam.
  kill -KILL -- "-$job"
  wait_gone 10 "$job"; [[ -z $pid ]] || wait_gone 10 "$pid"
  rm -f "$PID_FILE"
  log "killed beam pid ${pid:-?} (job $job)"
}

case "${1:-}" in
  install) install_if_missing ;;
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  kill) kill_node ;;
  status)
    if amqp_ok; then echo "running (accepting AMQP on 127.0.0.1:$PORT)"
    else echo "not running"; exit 1; fi ;;
  wait) wait_ready ;;
  reset) stop; rm -rf "$BASE"; log "wiped $BASE" ;;
  ctl) shift; ctl "$@" ;;
  *) echo "usage: $0 install|start|stop|restart|kill|status|wait|reset|ctl ARGS..." >&2; exit 2 ;;
esac
