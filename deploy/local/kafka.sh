#!/usr/bin/env bash
# Single-node Apache Kafka broker (KRaft mode, no ZooKeeper) on 127.0.0.1 for
# hookbridge's integration tests. Needs only Java 17+ and Maven: the jars come
# from Maven Central through deploy/local/kafka/pom.xml and are cached.
#
# Usage: deploy/local/kafka.sh COMMAND
#   start                     fetch jars if needed, format storage if needed,
#                             start the broker and wait until it answers
#                             (no-op when it is already running)
#   stop                      graceful stop (SIGTERM, SIGKILL after 30 s)
#   kill                      SIGKILL at once (for fault tests)
#   restart                   stop, then start
#   status                    exit 0 if running and answering, else 1
#   wait                      wait until the broker answers (60 s max)
#   reset                     stop and wipe all broker data (topics, offsets)
#   fetch                     only download/cache the jars
#   create-topic NAME [PARTS] create a topic if it does not exist (RF 1)
#   prune-tests               delete the topics the tests made (hookbridge-test.*)
#   scram-user NAME PASSWORD  create a SCRAM-SHA-256 and -512 user, or change its password
#
# Listeners, all on 127.0.0.1 (PORT is HOOKBRIDGE_KAFKA_PORT, below):
#   PORT     PLAINTEXT
#   PORT+1   CONTROLLER (KRaft, plaintext)
#   PORT+2   SASL_SSL: SCRAM-SHA-256, SCRAM-SHA-512, PLAIN and OAUTHBEARER (unsecured JWTs,
#            Kafka's test validator: any unsigned token whose `sub` claim is set)
#   PORT+3   SSL with a required client certificate (mutual TLS)
# The certificates come from deploy/local/certs.sh (clients trust its ca.pem). Test users:
#   SCRAM-SHA-256 and SCRAM-SHA-512  hookbridge / hb-scram-secret-4d1c  (made after the first start)
#   PLAIN                            hookbridge / hb-plain-secret-9e27
#
# Environment (all optional):
#   HOOKBRIDGE_CACHE          cache root            (default ~/.cache/hookbridge)
#   HOOKBRIDGE_KAFKA_DIR      run dir: data, config, log, pid
#                                                   (default $HOOKBRIDGE_CACHE/kafka/run)
#   HOOKBRIDGE_KAFKA_PORT     client port           (default 9092; the others are PORT+1..3)
#   HOOKBRIDGE_KAFKA_TIMEOUT  seconds to wait for readiness (default 60)
#
# Data survives stop/kill + start; only `reset` deletes it.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POM="$SCRIPT_DIR/kafka/pom.xml"
# The pom is the single source of truth for the Kafka version.
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")"

CACHE="${HOOKBRIDGE_CACHE:-$HOME/.cache/hookbridge}"
LIB="$CACHE/kafka/lib"
RUN="${HOOKBRIDGE_KAFKA_DIR:-$CACHE/kafka/run}"
HOST=127.0.0.1
PORT="${HOOKBRIDGE_KAFKA_PORT:-9092}"
CONTROLLER_PORT=$((PORT + 1))
SASL_SSL_PORT=$((PORT + 2))
SSL_PORT=$((PORT + 3))
BOOTSTRAP="$HOST:$PORT"
READY_TIMEOUT="${HOOKBRIDGE_KAFKA_TIMEOUT:-60}"
STOP_TIMEOUT=30

DATA="$RUN/data"
PIDFILE="$RUN/kafka.pid"
LOG="$RUN/kafka.log"

CERTS_SH="$SCRIPT_DIR/certs.sh"
CERTS="$CACHE/certs"
# Test users of the secured listeners (tests/kafka_support has the same values).
SCRAM_USER=hookbridge
SCRAM_PASSWORD=hb-scram-secret-4d1c
PLAIN_USER=hookbridge
PLAIN_PASSWORD=hb-plain-secret-9e27

# Main classes (Kafka 4.x): broker, storage formatter (Scala, in kafka_2.13),
# topic admin (Java, in kafka-tools).
BROKER_MAIN=kafka.Kafka
STORAGE_MAIN=kafka.tools.StorageTool
TOPIC_MAIN=org.apache.kafka.tools.TopicCommand
CONFIG_MAIN=org.apache.kafka.tools.ConfigCommand

JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"

say() { echo "kafka.sh: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# --- jars -------------------------------------------------------------------

# Download kafka_2.13 + kafka-tools + Log4j 2 into $LIB once. The stamp is the
# pom's hash, so editing the pom (e.g. a new version) triggers a fresh fetch.
fetch() {
  local stamp tmp
  stamp="$(sha256sum "$POM" | cut -d' ' -f1)"
  [[ -f "$LIB/.stamp" && "$(cat "$LIB/.stamp")" == "$stamp" ]] && return 0
  mkdir -p "$CACHE/kafka"
  exec 8>"$CACHE/kafka/.fetch.lock"
  flock -w 900 8 || die "timed out waiting for another fetch"
  # Another process may have fetched while we waited for the lock.
  if [[ ! -f "$LIB/.stamp" || "$(cat "$LIB/.stamp")" != "$stamp" ]]; then
    command -v mvn >/dev/null || die "mvn not found (needed once to fetch the Kafka jars)"
    say "fetching Kafka $KAFKA_VERSION jars from Maven Central into $LIB ..."
    tmp="$LIB.tmp.$$"
    rm -rf "$tmp"
    # Maven's output goes to a file (it prints stray ANSI codes even with -q)
    # and is shown only on failure.
    if ! mvn -q -B -f "$POM" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$tmp" >"$CACHE/kafka/mvn.log" 2>&1; then
      cat "$CACHE/kafka/mvn.log" >&2
      rm -rf "$tmp"
      die "maven failed to fetch the Kafka jars (log: $CACHE/kafka/mvn.log)"
    fi
    echo "$stamp" >"$tmp/.stamp"
    rm -rf "$LIB"
    mv "$tmp" "$LIB"
  fi
  exec 8>&-
}

# Run a Kafka CLI tool quietly (fast-starting JVM, logs at WARN to stderr).
TOOL_JVM=("$JAVA" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1
  -Dlog4j2.configurationFile="$RUN/tools-log4j2.properties" -cp "$LIB/*")
tool() { "${TOOL_JVM[@]}" "$@"; }

# --- config -----------------------------------------------------------------

write_configs() {
  mkdir -p "$RUN" "$DATA"
  cat >"$RUN/server.properties" <<EOF
# Written by deploy/local/kafka.sh on every start; edits are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT,SASL_SSL://$HOST:$SASL_SSL_PORT,SSL://$HOST:$SSL_PORT
advertised.listeners=PLAINTEXT://$HOST:$PORT,SASL_SSL://$HOST:$SASL_SSL_PORT,SSL://$HOST:$SSL_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$DATA
# Single node: every internal topic has replication factor 1.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
auto.create.topics.enable=true
num.partitions=1
default.replication.factor=1
group.initial.rebalance.delay.ms=0
# After a SIGKILL the controller rejects the restarted broker's registration
# until the old session expires (default 9 s); keep that short for fault tests.
broker.session.timeout.ms=3000
broker.heartbeat.interval.ms=500
# The data dir lives in the cache and outlives runs: a benchmark writes gigabytes to one topic
# per run. Keep at most 512 MiB per partition (64 MiB segments), checked every 30 s, so that the
# test broker never fills the disk it shares with builds.
log.segment.bytes=67108864
log.retention.bytes=536870912
log.retention.check.interval.ms=30000
# Secured listeners (certificates from certs.sh). The broker certificate is for localhost and
# 127.0.0.1; clients must trust certs/ca.pem. Inter-broker and controller traffic stay plaintext.
ssl.keystore.type=PKCS12
ssl.keystore.location=$CERTS/server.p12
ssl.keystore.password=$(cat "$CERTS/p12.password")
ssl.key.password=$(cat "$CERTS/p12.password")
ssl.truststore.type=PEM
ssl.truststore.location=$CERTS/ca.pem
listener.name.ssl.ssl.client.auth=required
sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512,PLAIN,OAUTHBEARER
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$PLAIN_USER="$PLAIN_PASSWORD";
# No callback handler: Kafka checks OAUTHBEARER tokens with its unsecured (test-only) validator.
listener.name.sasl_ssl.oauthbearer.sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required unsecuredLoginStringClaim_sub="$SCRAM_USER";
EOF
  # Broker log: everything at INFO to stdout, which start() sends to $LOG.
  cat >"$RUN/log4j2.properties" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = OUT
logger.request.name = kafka.request.logger
logger.request.level = warn
EOF
  # CLI tools: warnings only, to stderr.
  cat >"$RUN/tools-log4j2.properties" <<'EOF'
status = warn
appender.err.type = Console
appender.err.name = ERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.err.ref = ERR
EOF
  # Admin client settings for the tools: fail fast instead of retrying 60 s.
  cat >"$RUN/admin.properties" <<'EOF'
request.timeout.ms=5000
default.api.timeout.ms=8000
EOF
  # Changing a SCRAM user must not fail just because a loaded machine is slow to answer.
  cat >"$RUN/scram-admin.properties" <<'EOF'
request.timeout.ms=15000
default.api.timeout.ms=30000
EOF
}

# Format the storage once, with a random cluster id. meta.properties marks a
# formatted dir; re-formatting would lose data, so it is never redone.
format_if_needed() {
  [[ -f "$DATA/meta.properties" ]] && return 0
  local cid
  cid="$(tool "$STORAGE_MAIN" random-uuid)"
  say "formatting $DATA (cluster id $cid)"
  tool "$STORAGE_MAIN" format --config "$RUN/server.properties" \
    --cluster-id "$cid" --ignore-formatted >/dev/null
}

# --- process state ----------------------------------------------------------

# Pid of our broker if it is alive (not a zombie, really kafka.Kafka), else "".
broker_pid() {
  local pid
  [[ -f "$PIDFILE" ]] || return 0
  pid="$(cat "$PIDFILE")"
  [[ "$pid" =~ ^[0-9]+$ && -r "/proc/$pid/cmdline" ]] || return 0
  # A zombie is dead, but only once all its threads are gone: after SIGKILL
  # the JVM's main thread shows Z while others still hold the sockets.
  local tasks=("/proc/$pid/task"/*)
  if [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" == Z ]] && ((${#tasks[@]} <= 1)); then
    return 0
  fi
  # A stale pid may have been reused: only a broker of this run dir counts.
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF " $BROKER_MAIN $RUN/server.properties" || return 0
  echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# True if the broker serves metadata (lists topics).
answering() {
  port_open "$PORT" || return 1
  timeout 20 "${TOOL_JVM[@]}" "$TOPIC_MAIN" --bootstrap-server "$BOOTSTRAP" \
    --command-config "$RUN/admin.properties" --list >/dev/null 2>&1
}

log_tail() {
  say "---- last 40 lines of $LOG ----"
  tail -n 40 "$LOG" >&2 2>/dev/null || true
  say "-------------------------------"
}

# Wait until the broker answers; fail loudly if it dies or times out.
wait_ready() {
  local deadline=$((SECONDS + READY_TIMEOUT))
  while :; do
    if [[ -z "$(broker_pid)" ]]; then
      # A pid file without a live process means the broker died: show why.
      [[ -f "$PIDFILE" ]] || die "broker is not running (run: kafka.sh start)"
      log_tail
      die "broker exited (see $LOG)"
    fi
    answering && return 0
    ((SECONDS < deadline)) || { log_tail; die "broker did not answer on $BOOTSTRAP within ${READY_TIMEOUT}s"; }
    sleep 0.3
  done
}

# Wait up to $1 seconds for the broker to exit and release its ports.
gone() {
  [[ -z "$(broker_pid)" ]] && ! port_open "$PORT" && ! port_open "$CONTROLLER_PORT" &&
    ! port_open "$SASL_SSL_PORT" && ! port_open "$SSL_PORT"
}
wait_exit() {
  local deadline=$((SECONDS + $1))
  until gone; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# All lifecycle commands hold a lock on the run dir so they do not race.
lock_run() {
  mkdir -p "$RUN"
  exec 9>"$RUN/.lock"
  flock -w 120 9 || die "timed out waiting for the lock on $RUN"
}

# --- commands ---------------------------------------------------------------

cmd_start() {
  local t0=$SECONDS pid
  fetch
  "$CERTS_SH" "$CERTS" >/dev/null
  lock_run
  write_configs
  pid="$(broker_pid)"
  if [[ -n "$pid" ]]; then
    wait_ready
    ensure_users
    say "already running (pid $pid) on $BOOTSTRAP"
    return 0
  fi
  local p
  for p in "$PORT" "$CONTROLLER_PORT" "$SASL_SSL_PORT" "$SSL_PORT"; do
    port_open "$p" && die "port $p is in use by another process (not our broker)"
  done
  format_if_needed
  [[ -f "$LOG" ]] && mv -f "$LOG" "$LOG.1"   # keep the previous run's log
  # A pid file left by a broker that was killed from outside (SIGKILL, a machine
  # stop) names a dead pid. It must go before the launch: otherwise the wait
  # below could read the stale pid, judge the new broker dead and kill it.
  rm -f "$PIDFILE"
  # New session so the broker outlives the caller; fds 8/9 (locks) not inherited.
  # The inner shell writes its own pid, which exec turns into the JVM's pid.
  # shellcheck disable=SC2016  # $$ and $1 are for the inner shell
  setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PIDFILE" \
    "$JAVA" -Xms256m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$RUN/log4j2.properties" \
    -cp "$LIB/*" "$BROKER_MAIN" "$RUN/server.properties" \
    </dev/null >"$LOG" 2>&1 8>&- 9>&- &
  # Wait for the pid file (written by the inner shell right away).
  local launcher=$!
  for _ in $(seq 100); do [[ -s "$PIDFILE" ]] && break; sleep 0.1; done
  if [[ ! -s "$PIDFILE" ]]; then
    kill -KILL "$launcher" 2>/dev/null || true
    die "the broker's launcher wrote no pid file within 10 s"
  fi
  if ! wait_ready_or_cleanup; then exit 1; fi
  ensure_users
  say "started Kafka $KAFKA_VERSION (pid $(cat "$PIDFILE")) on $BOOTSTRAP in $((SECONDS - t0))s; log: $LOG"
}

# On a failed start, do not leave a half-started broker behind.
wait_ready_or_cleanup() {
  if (wait_ready); then return 0; fi
  local pid; pid="$(broker_pid)"
  if [[ -n "$pid" ]]; then
    kill -KILL "$pid" 2>/dev/null || true
    wait_exit 10 || true
  fi
  rm -f "$PIDFILE"
  return 1
}

cmd_stop() {
  local pid
  lock_run
  pid="$(broker_pid)"
  if [[ -z "$pid" ]]; then
    rm -f "$PIDFILE"
    say "not running"
    return 0
  fi
  say "stopping (pid $pid) ..."
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_exit "$STOP_TIMEOUT"; then
    say "no exit after ${STOP_TIMEOUT}s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_exit 10 || die "pid $pid or ports $PORT/$CONTROLLER_PORT still busy after SIGKILL"
  fi
  rm -f "$PIDFILE"
  say "stopped"
}

cmd_kill() {
  local pid
  lock_run
  pid="$(broker_pid)"
  if [[ -n "$pid" ]]; then
    kill -KILL "$pid" 2>/dev/null || true
    wait_exit 10 || die "pid $pid or ports $PORT/$CONTROLLER_PORT still busy after SIGKILL"
    say "killed (pid $pid)"
  else
    say "not running"
  fi
  rm -f "$PIDFILE"
}

cmd_status() {
  local pid
  pid="$(broker_pid)"
  if [[ -z "$pid" ]]; then
    say "not running"
    return 1
  fi
  [[ -f "$RUN/admin.properties" ]] || write_configs
  if answering; then
    say "running (pid $pid) and answering on $BOOTSTRAP"
    return 0
  fi
  say "running (pid $pid) but not answering on $BOOTSTRAP"
  return 1
}

# Deletes the topics the tests made (hookbridge-test.*): each test run makes its own uniquely
# named topics, and a broker holding thousands of partitions takes minutes to recover them after
# the fault tests kill it. scripts/test.sh runs this before the tests.
cmd_prune_tests() {
  [[ -n "$(broker_pid)" ]] || die "broker is not running (run: $0 start)"
  local n
  n="$(find "$RUN/data" -maxdepth 1 -name 'hookbridge-test.*' ! -name '*-delete' 2>/dev/null | wc -l)"
  if ((n == 0)); then
    say "no test topics to delete"
    return 0
  fi
  tool "$TOPIC_MAIN" --bootstrap-server "$BOOTSTRAP" \
    --command-config "$RUN/admin.properties" --delete --if-exists \
    --topic 'hookbridge-test\..*' >/dev/null
  say "deleted the test topics ($n partition(s))"
}

cmd_create_topic() {
  [[ $# -ge 1 && -n "$1" ]] || die "usage: kafka.sh create-topic NAME [PARTITIONS]"
  local name=$1 parts=${2:-1}
  [[ -n "$(broker_pid)" ]] || die "broker is not running (run: $0 start)"
  tool "$TOPIC_MAIN" --bootstrap-server "$BOOTSTRAP" \
    --command-config "$RUN/admin.properties" --create --if-not-exists \
    --topic "$name" --partitions "$parts" --replication-factor 1 >/dev/null
  say "topic $name ready ($parts partition(s))"
}

# SCRAM credentials live in the cluster metadata; they are set through the PLAINTEXT listener.
# Kafka refuses two mechanisms of one user in one request: one call each.
set_scram() {
  local m
  for m in SCRAM-SHA-256 SCRAM-SHA-512; do
    tool "$CONFIG_MAIN" --bootstrap-server "$BOOTSTRAP" --command-config "$RUN/scram-admin.properties" \
      --alter --entity-type users --entity-name "$1" --add-config "$m=[password=$2]" >/dev/null || return 1
  done
}

# The test user is made once per data dir (a marker file records it).
ensure_users() {
  local marker="$DATA/.hookbridge-users-v1"
  [[ -f "$marker" ]] && return 0
  set_scram "$SCRAM_USER" "$SCRAM_PASSWORD" || die "cannot create the SCRAM test user"
  touch "$marker"
  say "SCRAM-SHA-256/512 user $SCRAM_USER created"
}

cmd_scram_user() {
  [[ $# -eq 2 && -n "$1" && -n "$2" ]] || die "usage: kafka.sh scram-user NAME PASSWORD"
  [[ -n "$(broker_pid)" ]] || die "broker is not running (run: $0 start)"
  set_scram "$1" "$2"
  say "SCRAM user $1 set"
}

cmd_reset() {
  cmd_stop
  rm -rf "$DATA"
  say "wiped $DATA"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  restart) cmd_stop; exec 9>&-; cmd_start ;;
  kill) cmd_kill ;;
  status) cmd_status ;;
  wait) wait_ready; say "answering on $BOOTSTRAP" ;;
  reset) cmd_reset ;;
  fetch) fetch ;;
  create-topic) shift; cmd_create_topic "$@" ;;
  prune-tests) cmd_prune_tests ;;
  scram-user) shift; cmd_scram_user "$@" ;;
  *)
    sed -n '/^# Usage/,/^# Data survives/s/^# \{0,1\}//p' "$0" >&2
    exit 2
    ;;
esac
