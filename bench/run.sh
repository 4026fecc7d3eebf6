#!/usr/bin/env bash
# hookbridge's benchmark, in one sitting (about 10 minutes on the 2-core dev machine):
# starts the local brokers, builds in release mode, runs the micro-benchmarks, the start-up
# measurement and the four scenarios one after another, then writes BENCHMARKS.md and
# bench/latency.svg from the JSON results in bench/results/.
#
#   bench/run.sh
#
# Scenarios (4 KiB events; closed loop at each concurrency, then open loop at a fixed rate):
#   1. discard sink: the HTTP + verification ceiling
#   2. Kafka sink, and its ceiling (examples/kafka_ceiling, same producer settings)
#   3. RabbitMQ sink, and its ceiling (examples/amqp_ceiling, same topology and guarantees)
#   4. fan-out to both
#   Kafka and RabbitMQ also against bench/goref, a hand-written Go peer (net/http + stripe-go +
#   franz-go / amqp091-go, same guarantees), run side by side with the bridge: each load point
#   goes to the bridge and then to the Go peer, so every ratio is of two runs minutes apart.
#   5. discard sink, open loop, while 300 uploads stall (each sends 900 KB of a declared 1 MB body
#      and then nothing): valid events keep flowing and RSS stays under the body memory budget
#   6. NATS JetStream sink, and its ceiling (examples/nats_ceiling, same stream and headers)
# For every bridge run: peak RSS (VmHWM, reset before the run), CPU seconds per 1,000 events
# (utime+stime of the bridge over the run / requests it answered), and its idle RSS.
#
# Environment (all optional): BENCH_DURATION (10s), BENCH_WARMUP (2s), BENCH_SIZE (4096),
# BENCH_RATE (1000), BENCH_LOW_RATE (300), BENCH_CONCURRENCY ("64 256"), BENCH_OUT (bench/results), BENCH_STALLED (300),
# BENCH_SKIP_CRITERION=1 to reuse the last criterion results, BENCH_SKIP_BUILD=1 to use the release
# build as it is (a commit since it was built would otherwise rebuild it: build.rs records HEAD), BENCH_SKIP_GOREF=1 to run without
# the Go peer (which needs Go 1.23+ and the Go module proxy, or a warm module cache).
# BENCH_SCENARIOS (default "discard kafka rabbitmq fanout stalled nats") runs only those scenarios:
# such a partial run skips criterion and start-up, writes to bench/results/partial (or BENCH_OUT)
# and leaves BENCHMARKS.md alone, whose figures all come from one full sitting.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
ALL_SCENARIOS="discard kafka rabbitmq fanout stalled nats"
SCENARIOS="${BENCH_SCENARIOS:-$ALL_SCENARIOS}"
want() { [[ " $SCENARIOS " == *" $1 "* ]]; }
partial() { [[ "$SCENARIOS" != "$ALL_SCENARIOS" ]]; }
if partial; then
  OUT="${BENCH_OUT:-$ROOT/bench/results/partial}"
else
  OUT="${BENCH_OUT:-$ROOT/bench/results}"
fi
DURATION="${BENCH_DURATION:-10s}"
WARMUP="${BENCH_WARMUP:-2s}"
SIZE="${BENCH_SIZE:-4096}"
RATE="${BENCH_RATE:-1000}"
LOW_RATE="${BENCH_LOW_RATE:-300}"
CONCURRENCIES="${BENCH_CONCURRENCY:-64 256}"
SECRET=whsec_bench_not_a_secret
TOPIC=hookbridge.bench
QUEUE=hookbridge.bench
CFG="$ROOT/bench/configs"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$TARGET_DIR/release/hookbridge"
EXAMPLES="$TARGET_DIR/release/examples"
CLK_TCK="$(getconf CLK_TCK)"
GOREF="${HOOKBRIDGE_CACHE:-$HOME/.cache/hookbridge}/goref/goref"
# The server under load: its pid, webhook port and the URL that counts the requests it answered.
BRIDGE=""
B_PID=""
B_PORT=""
PORT=""
COUNT_URL=""
# The Go peer, while it runs next to the bridge.
GO_PID=""
GO_PORT=""

say() { echo "bench: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
kafka_pid() { cat "${HOOKBRIDGE_KAFKA_DIR:-${HOOKBRIDGE_CACHE:-$HOME/.cache/hookbridge}/kafka/run}/kafka.pid" 2>/dev/null || true; }
rabbit_pid() { pgrep -o -x beam.smp 2>/dev/null || true; }
nats_pid() { cat "${HOOKBRIDGE_CACHE:-$HOME/.cache/hookbridge}/nats/plain.pid" 2>/dev/null || true; }
# broker_ticks: "KAFKA_TICKS RABBIT_TICKS NATS_TICKS" (0 for a broker not running).
broker_ticks() {
  local k r n
  k="$(kafka_pid)"; r="$(rabbit_pid)"; n="$(nats_pid)"
  echo "$( [[ -n "$k" ]] && cpu_ticks "$k" 2>/dev/null || echo 0) $( [[ -n "$r" ]] && cpu_ticks "$r" 2>/dev/null || echo 0)" \
    "$( [[ -n "$n" ]] && cpu_ticks "$n" 2>/dev/null || echo 0)"
}
secs() { awk -v a="$1" -v b="$2" -v hz="$CLK_TCK" 'BEGIN {printf "%.3f", (b - a) / hz}'; }
purge_queue() { deploy/local/rabbitmq.sh ctl purge_queue "$QUEUE" >/dev/null 2>&1 || true; }

stop_pid() {
  if [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null; then
    kill -TERM "$1"
    wait "$1" 2>/dev/null || true
  fi
}
stop_bridge() { stop_pid "$BRIDGE"; BRIDGE=""; }
stop_goref() { stop_pid "$GO_PID"; GO_PID=""; }
trap 'stop_pid "${B_PID:-}"; stop_bridge; stop_goref' EXIT

# start_bridge NAME CONFIG: serve on free ports, wait for /readyz, record idle RSS.
start_bridge() {
  local name="$1" config="$2"
  PORT="$(free_port)"
  ADMIN="$(free_port)"
  HOOKBRIDGE__LISTEN="127.0.0.1:$PORT" HOOKBRIDGE__ADMIN_LISTEN="127.0.0.1:$ADMIN" \
    "$BIN" serve --config "$config" 2>"$OUT/$name.bridge.log" &
  BRIDGE=$!
  B_PID=$BRIDGE B_PORT=$PORT
  COUNT_URL="http://127.0.0.1:$ADMIN/metrics"
  local i
  for i in $(seq 1 300); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$ADMIN/readyz" 2>/dev/null; then
      sleep 1
      printf '{"idle_rss_kib": %s}\n' "$(status_kib "$BRIDGE" VmRSS)" >"$OUT/$name.idle.json"
      say "$name: bridge ready (pid $BRIDGE, port $PORT), idle RSS $(status_kib "$BRIDGE" VmRSS) KiB"
      return 0
    fi
    kill -0 "$BRIDGE" 2>/dev/null || die "$name: the bridge exited; see $OUT/$name.bridge.log"
    sleep 0.1
  done
  die "$name: the bridge was not ready within 30 s; see $OUT/$name.bridge.log"
}

# start_goref NAME MODE ARGS...: the Go peer (bench/goref) in MODE (kafka or rabbitmq), next to
# a running bridge; records its idle RSS. Loads go to it after use_goref.
start_goref() {
  local name="$1" mode="$2" i; shift 2
  GO_PORT="$(free_port)"
  "$GOREF" -listen "127.0.0.1:$GO_PORT" -secret "$SECRET" -mode "$mode" "$@" 2>"$OUT/$name.goref.log" &
  GO_PID=$!
  for i in $(seq 1 300); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$GO_PORT/readyz" 2>/dev/null; then
      sleep 1
      printf '{"idle_rss_kib": %s}\n' "$(status_kib "$GO_PID" VmRSS)" >"$OUT/$name.idle.json"
      say "$name: Go peer ready (pid $GO_PID, port $GO_PORT), idle RSS $(status_kib "$GO_PID" VmRSS) KiB"
      return 0
    fi
    kill -0 "$GO_PID" 2>/dev/null || die "$name: the Go peer exited; see $OUT/$name.goref.log"
    sleep 0.1
  done
  die "$name: the Go peer was not ready within 30 s; see $OUT/$name.goref.log"
}
# Which of the two running servers the next load() goes to.
use_bridge() { BRIDGE=$B_PID PORT=$B_PORT COUNT_URL="http://127.0.0.1:$ADMIN/metrics"; }
use_goref() { BRIDGE=$GO_PID PORT=$GO_PORT COUNT_URL="http://127.0.0.1:$GO_PORT/requests"; }

requests_total() {
  curl -fsS "$COUNT_URL" | awk '/^hookbridge_requests_total\{/ {s += $NF} /^[0-9]+$/ {s += $1} END {printf "%d\n", s}'
}

# line_of RESULT.json: one line with the rate, p50, p99 and outcome counts.
line_of() {
  python3 - "$1" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
l = s["latency_ms"]
rate = s.get("requests_per_sec", s.get("messages_per_sec", 0))
print("%.0f/s p50 %s ms p99 %s ms status %s errors %s" % (rate, l["p50"], l["p99"], s.get("status", "-"), s["errors"]))
PY
}

all_ok() { python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); sys.exit(0 if s["requests"]>0 and s["errors"]==0 and s["unsent"]==0 and all(k.startswith("2") for k in s["status"]) else 1)' "$1"; }

# load RUN BENCH-ARGS...: one load run against the running bridge, with its process figures.
# A run that saw errors is repeated once (other engineers' fault tests restart the brokers).
load() {
  local run="$1"; shift
  local attempt
  for attempt in 1 2; do
    [[ "$run" == rabbitmq-* || "$run" == fanout-* ]] && purge_queue
    echo 5 >"/proc/$BRIDGE/clear_refs" 2>/dev/null || true # resets VmHWM to the current RSS
    local t0 n0 t1 n1 k0 r0 s0 k1 r1 s1
    read -r k0 r0 s0 <<<"$(broker_ticks)"
    t0="$(cpu_ticks "$BRIDGE")"
    n0="$(requests_total)"
    "$BIN" bench --url "http://127.0.0.1:$PORT/webhooks/stripe" --secret "$SECRET" --size "$SIZE" \
      --duration "$DURATION" --warmup "$WARMUP" --json "$@" >"$OUT/$run.json" 2>"$OUT/$run.progress" || true
    t1="$(cpu_ticks "$BRIDGE")"
    n1="$(requests_total)"
    read -r k1 r1 s1 <<<"$(broker_ticks)"
    printf '{"cpu_s": %s, "events": %d, "peak_rss_kib": %s, "attempt": %d, "kafka_cpu_s": %s, "rabbitmq_cpu_s": %s, "nats_cpu_s": %s}\n' \
      "$(secs "$t0" "$t1")" "$((n1 - n0))" "$(status_kib "$BRIDGE" VmHWM)" "$attempt" \
      "$(secs "$k0" "$k1")" "$(secs "$r0" "$r1")" "$(secs "$s0" "$s1")" >"$OUT/$run.proc.json"
    say "$run: $(line_of "$OUT/$run.json") $(cat "$OUT/$run.proc.json")"
    all_ok "$OUT/$run.json" && return 0
    say "$run: not every request was answered 2xx; $([[ $attempt == 1 ]] && echo retrying once || echo keeping the result)"
    sleep 3
  done
}

# ceiling KIND RUN ARGS...: a broker ceiling program, with the bridge stopped. A run that failed
# or saw errors is repeated once after the broker answers again.
ceiling() {
  local kind="$1" run="$2" attempt broker; shift 2
  case "$kind" in amqp) broker=rabbitmq ;; nats) broker=nats ;; *) broker=kafka ;; esac
  for attempt in 1 2; do
    [[ "$kind" == amqp ]] && purge_queue
    local k0 r0 s0 k1 r1 s1
    read -r k0 r0 s0 <<<"$(broker_ticks)"
    if "$EXAMPLES/${kind}_ceiling" --size "$SIZE" --duration "$DURATION" --warmup "$WARMUP" --json "$@" \
      >"$OUT/$run.json" 2>"$OUT/$run.log" &&
      python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["errors"] == 0 else 1)' "$OUT/$run.json"; then
      read -r k1 r1 s1 <<<"$(broker_ticks)"
      printf '{"kafka_cpu_s": %s, "rabbitmq_cpu_s": %s, "nats_cpu_s": %s}\n' "$(secs "$k0" "$k1")" "$(secs "$r0" "$r1")" \
        "$(secs "$s0" "$s1")" >"$OUT/$run.proc.json"
      say "$run: $(line_of "$OUT/$run.json") $(cat "$OUT/$run.proc.json")"
      return 0
    fi
    say "$run: failed or saw errors (see $OUT/$run.log); $([[ $attempt == 1 ]] && echo retrying once || echo keeping what it wrote)"
    deploy/local/$broker.sh start >/dev/null 2>&1 || true
    sleep 3
  done
  [[ -s "$OUT/$run.json" ]] && python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$OUT/$run.json" 2>/dev/null || rm -f "$OUT/$run.json"
}

scenario() {
  local name="$1" config="$2" c
  case "$name" in
    nats) deploy/local/nats.sh start >/dev/null 2>&1 || true ;;
    *)
      deploy/local/kafka.sh start >/dev/null 2>&1 || true
      deploy/local/rabbitmq.sh start >/dev/null 2>&1 || true
      ;;
  esac
  start_bridge "$name" "$config"
  for c in $CONCURRENCIES; do load "$name-c$c" --concurrency "$c"; done
  load "$name-r$RATE" --rate "$RATE" --concurrency 64
  stop_bridge
}

# with_goref NAME CONFIG MODE GOREF-ARGS...: the scenario NAME against the bridge and, run by run,
# against the Go peer (runs goref-NAME-*), then the low fixed rate for both. Without the Go peer
# (BENCH_SKIP_GOREF=1) the bridge's runs only.
with_goref() {
  local name="$1" config="$2" mode="$3" c r; shift 3
  if [[ "${BENCH_SKIP_GOREF:-0}" == 1 ]]; then
    scenario "$name" "$config"
    start_bridge "$name" "$config"
    load "$name-r$LOW_RATE" --rate "$LOW_RATE" --concurrency 64
    stop_bridge
    return
  fi
  deploy/local/kafka.sh start >/dev/null 2>&1 || true
  deploy/local/rabbitmq.sh start >/dev/null 2>&1 || true
  start_bridge "$name" "$config"
  start_goref "goref-$name" "$mode" "$@"
  for c in $CONCURRENCIES; do
    use_bridge; load "$name-c$c" --concurrency "$c"
    use_goref; load "goref-$name-c$c" --concurrency "$c"
  done
  for r in "$RATE" "$LOW_RATE"; do
    use_bridge; load "$name-r$r" --rate "$r" --concurrency 64
    use_goref; load "goref-$name-r$r" --rate "$r" --concurrency 64
  done
  stop_goref
  use_bridge
  stop_bridge
}

rm -rf "$OUT"
mkdir -p "$OUT"
STARTED="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

say "starting the brokers"
if want kafka || want fanout; then
  deploy/local/kafka.sh start
  deploy/local/kafka.sh create-topic "$TOPIC" >/dev/null 2>&1 || true
fi
if want rabbitmq || want fanout; then deploy/local/rabbitmq.sh start; fi
if want nats; then deploy/local/nats.sh start; fi

if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  say "building in release mode"
  cargo build --release --bin hookbridge --example kafka_ceiling --example amqp_ceiling --example nats_ceiling
fi
[[ -x "$BIN" && -x "$EXAMPLES/kafka_ceiling" && -x "$EXAMPLES/amqp_ceiling" && -x "$EXAMPLES/nats_ceiling" ]] ||
  die "no release build in $TARGET_DIR"
if [[ "${BENCH_SKIP_GOREF:-0}" != 1 ]] && { want kafka || want rabbitmq; }; then
  say "building the Go peer (bench/goref) into $GOREF"
  command -v go >/dev/null || die "the Go peer needs Go 1.23+ on PATH (or set BENCH_SKIP_GOREF=1)"
  mkdir -p "$(dirname "$GOREF")"
  (cd bench/goref && go build -trimpath -o "$GOREF" .)
fi

if ! partial; then
  if [[ "${BENCH_SKIP_CRITERION:-0}" != 1 ]]; then
    say "micro-benchmarks (criterion)"
    cargo bench --bench verify >"$OUT/criterion.txt" 2>&1
  fi
  mkdir -p "$OUT/criterion"
  for f in "$TARGET_DIR"/criterion/*/*/new/estimates.json; do
    [[ -e "$f" ]] || continue
    rel="${f#"$TARGET_DIR"/criterion/}"
    mkdir -p "$OUT/criterion/$(dirname "$rel")"
    cp "$f" "$OUT/criterion/$rel"
  done

  say "start-up with the file sink"
  HOOKBRIDGE__SINKS__LOCAL__PATH="$OUT/events.jsonl" python3 bench/startup.py "$BIN" "$CFG/file.yaml" 5 "$OUT/startup.json"
  rm -f "$OUT/events.jsonl"
fi

if want discard; then
  say "scenario 1: discard sink (HTTP + verification ceiling)"
  scenario discard "$CFG/discard.yaml"
fi

if want kafka; then
  say "scenario 2: Kafka"
  for c in $CONCURRENCIES; do ceiling kafka "kafka-ceiling-c$c" --config "$CFG/kafka.yaml" --topic "$TOPIC" --in-flight "$c"; done
  for r in "$LOW_RATE" "$RATE"; do
    ceiling kafka "kafka-ceiling-r$r" --config "$CFG/kafka.yaml" --topic "$TOPIC" --in-flight 64 --rate "$r"
  done
  with_goref kafka "$CFG/kafka.yaml" kafka -brokers 127.0.0.1:9092 -topic "$TOPIC"
  # The batching producer's default linger (1 ms) against 3 ms, under load: a longer linger
  # spends less CPU in librdkafka's broker thread but paces each batch (bench/FINDINGS.md).
  HOOKBRIDGE__SINKS__EVENTS__LINGER=3ms start_bridge kafka-linger3ms "$CFG/kafka.yaml"
  load "kafka-linger3ms-c64" --concurrency 64
  load "kafka-linger3ms-c256" --concurrency 256
  stop_bridge
fi

if want rabbitmq; then
  say "scenario 3: RabbitMQ"
  for c in $CONCURRENCIES; do ceiling amqp "rabbitmq-ceiling-c$c" --config "$CFG/rabbitmq.yaml" --in-flight "$c"; done
  ceiling amqp "rabbitmq-ceiling-r$RATE" --config "$CFG/rabbitmq.yaml" --in-flight 64 --rate "$RATE"
  with_goref rabbitmq "$CFG/rabbitmq.yaml" rabbitmq -exchange hookbridge.bench -queue "$QUEUE" -channels 256
  # Idle memory with a smaller AMQP frame_max: lapin keeps 32 frames of buffer each way, and
  # RabbitMQ's default frame_max (128 KiB) makes that 2 x 4 MiB.
  HOOKBRIDGE__SINKS__AMQP__URL="amqp://guest:guest@127.0.0.1:5672/%2f?frame_max=16384" \
    start_bridge rabbitmq-framemax16k "$CFG/rabbitmq.yaml"
  stop_bridge
  purge_queue
fi

if want fanout; then
  say "scenario 4: fan-out to Kafka and RabbitMQ"
  scenario fanout "$CFG/fanout.yaml"
  purge_queue
fi

if want stalled; then
  say "scenario 5: discard sink while 300 uploads stall (the body memory budget)"
  start_bridge stalled "$CFG/discard.yaml"
  load "stalled-r$RATE" --rate "$RATE" --concurrency 64 --stalled "${BENCH_STALLED:-300}"
  stop_bridge
fi

if want nats; then
  say "scenario 6: NATS JetStream"
  # A fresh stream (the ceiling creates it from the config), so that every sitting starts alike.
  deploy/local/nats.sh stop >/dev/null
  rm -rf "${HOOKBRIDGE_CACHE:-$HOME/.cache/hookbridge}"/nats/plain-js/jetstream/*/streams/HOOKBRIDGE_BENCH
  deploy/local/nats.sh start
  for c in $CONCURRENCIES; do ceiling nats "nats-ceiling-c$c" --config "$CFG/nats.yaml" --in-flight "$c"; done
  ceiling nats "nats-ceiling-r$RATE" --config "$CFG/nats.yaml" --in-flight 64 --rate "$RATE"
  say "nats: waiting 21 s for the ceiling's event ids to leave the stream's duplicate window"
  sleep 21
  scenario nats "$CFG/nats.yaml"
fi

cat >"$OUT/run.json" <<JSON
{"started": "$STARTED", "finished": "$(date -u +%Y-%m-%dT%H:%M:%SZ)", "commit": "$(git rev-parse HEAD)",
 "dirty": $( [[ -z "$(git status --porcelain -- src Cargo.toml Cargo.lock)" ]] && echo false || echo true ),
 "duration": "$DURATION", "warmup": "$WARMUP", "size": $SIZE, "rate": $RATE, "low_rate": $LOW_RATE,
 "criterion_rerun": $( [[ "${BENCH_SKIP_CRITERION:-0}" != 1 ]] && echo true || echo false ), "concurrency": "$CONCURRENCIES",
 "rustc": "$(rustc --version)", "kafka_scenario_topic": "$TOPIC", "rabbitmq_queue": "$QUEUE",
 "scenarios": "$SCENARIOS"}
JSON

if partial; then
  say "partial run ($SCENARIOS): results in $OUT; BENCHMARKS.md is written by a full run only"
  exit 0
fi

say "writing BENCHMARKS.md and bench/latency.svg"
python3 bench/report.py "$OUT" "$ROOT/BENCHMARKS.md" "$ROOT/bench/latency.svg"
say "done"
