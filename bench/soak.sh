#!/usr/bin/env bash
# Soak test: the bridge publishing to Kafka at a fixed rate for a long time, with its RSS and open
# file descriptors sampled at a fixed interval, to show that neither grows. Writes one results file
# (JSON: every sample, the least-squares slope of RSS and of fds after the warm-up, the answers by
# status) and exits non-zero unless every answer was 200 and the bridge stayed up.
#
#   bench/soak.sh                       # 10 minutes at 1,000 events/s (release build)
#   SOAK_DURATION=60 bench/soak.sh      # a one-minute proof of the script
#
# Environment (all optional):
#   SOAK_DURATION  seconds of load            (600)
#   SOAK_RATE      events per second          (1000)
#   SOAK_INTERVAL  seconds between samples    (10)
#   SOAK_WARMUP    seconds left out of the slopes (120 for a run of 10 minutes or more, else a
#                  sixth of the run: RSS settles in the first 80-100 s at 1,000 events/s)
#   SOAK_SIZE      body bytes                 (4096)
#   SOAK_PROFILE   release or debug           (release)
#   SOAK_OUT       results file               (bench/soak/results.json; BENCHMARKS.md's Soak
#                  section is made from it by bench/report.py)
#   HOOKBRIDGE_KAFKA_PORT / HOOKBRIDGE_KAFKA_DIR  the broker, as for deploy/local/kafka.sh
#                  (started if it is not running)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
DURATION="${SOAK_DURATION:-600}"
RATE="${SOAK_RATE:-1000}"
INTERVAL="${SOAK_INTERVAL:-10}"
WARMUP="${SOAK_WARMUP:-$(( DURATION >= 600 ? 120 : DURATION / 6 ))}"
SIZE="${SOAK_SIZE:-4096}"
PROFILE="${SOAK_PROFILE:-release}"
OUT="${SOAK_OUT:-$ROOT/bench/soak/results.json}"
KAFKA_PORT="${HOOKBRIDGE_KAFKA_PORT:-9092}"
SECRET=whsec_bench_not_a_secret
TOPIC=hookbridge.bench # the topic bench/configs/kafka.yaml routes to
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$TARGET_DIR/$PROFILE/hookbridge"

say() { echo "soak: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }
[[ "$DURATION" =~ ^[0-9]+$ && "$RATE" =~ ^[0-9]+$ && "$INTERVAL" =~ ^[0-9]+$ && "$INTERVAL" -gt 0 ]] ||
  die "SOAK_DURATION, SOAK_RATE and SOAK_INTERVAL must be whole numbers (seconds, events/s)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

WORK="$(mktemp -d)"
BRIDGE=""
LOAD=""
cleanup() {
  [[ -n "$LOAD" ]] && kill -TERM "$LOAD" 2>/dev/null || true
  if [[ -n "$BRIDGE" ]] && kill -0 "$BRIDGE" 2>/dev/null; then
    kill -TERM "$BRIDGE"
    wait "$BRIDGE" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

say "building ($PROFILE)"
if [[ "$PROFILE" == release ]]; then
  cargo build --release --bin hookbridge
else
  cargo build --bin hookbridge
fi
# The commit the binary was built from, taken now: a commit made during the run must not relabel it.
COMMIT="$(git rev-parse --short HEAD)"

say "Kafka on 127.0.0.1:$KAFKA_PORT"
deploy/local/kafka.sh start
deploy/local/kafka.sh create-topic "$TOPIC" >/dev/null 2>&1 || true

PORT="$(free_port)"
ADMIN="$(free_port)"
HOOKBRIDGE__LISTEN="127.0.0.1:$PORT" HOOKBRIDGE__ADMIN_LISTEN="127.0.0.1:$ADMIN" \
  HOOKBRIDGE__SINKS__EVENTS__BROKERS="127.0.0.1:$KAFKA_PORT" \
  "$BIN" serve --config bench/configs/kafka.yaml 2>"$WORK/bridge.log" &
BRIDGE=$!
for _ in $(seq 1 300); do
  curl -fsS -o /dev/null "http://127.0.0.1:$ADMIN/readyz" 2>/dev/null && break
  kill -0 "$BRIDGE" 2>/dev/null || die "the bridge exited at start-up: $(tail -5 "$WORK/bridge.log")"
  sleep 0.1
done
curl -fsS -o /dev/null "http://127.0.0.1:$ADMIN/readyz" || die "the bridge was not ready within 30 s"
say "bridge ready (pid $BRIDGE); $RATE events/s for ${DURATION}s, a sample every ${INTERVAL}s"

"$BIN" bench --url "http://127.0.0.1:$PORT/webhooks/stripe" --secret "$SECRET" --size "$SIZE" \
  --rate "$RATE" --concurrency 64 --duration "${DURATION}s" --json --quiet >"$WORK/load.json" \
  2>"$WORK/load.log" &
LOAD=$!

sample() { # elapsed-seconds
  local fds
  fds="$(find "/proc/$BRIDGE/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)"
  printf '{"t": %s, "rss_kib": %s, "fds": %s, "threads": %s}\n' "$1" \
    "$(status_kib "$BRIDGE" VmRSS)" "$fds" "$(status_kib "$BRIDGE" Threads)" >>"$WORK/samples.jsonl"
}
START="$(date +%s)"
sample 0
next="$INTERVAL"
while kill -0 "$LOAD" 2>/dev/null; do
  kill -0 "$BRIDGE" 2>/dev/null || die "the bridge died during the soak: $(tail -5 "$WORK/bridge.log")"
  now="$(( $(date +%s) - START ))"
  if (( now >= next )); then
    sample "$now"
    say "t=${now}s rss $(status_kib "$BRIDGE" VmRSS) KiB, fds $(tail -1 "$WORK/samples.jsonl" | python3 -c 'import json,sys; print(json.load(sys.stdin)["fds"])')"
    next=$(( next + INTERVAL ))
  fi
  sleep 1
done
load_code=0
wait "$LOAD" || load_code=$?
LOAD=""
sample "$(( $(date +%s) - START ))"

mkdir -p "$(dirname "$OUT")"
python3 - "$WORK/samples.jsonl" "$WORK/load.json" "$OUT" "$WARMUP" "$DURATION" "$RATE" "$INTERVAL" "$SIZE" \
  "$COMMIT" "$PROFILE" "$load_code" <<'PY'
import json, sys, time
samples_path, load_path, out, warmup, duration, rate, interval, size, commit, profile, load_code = sys.argv[1:]
samples = [json.loads(l) for l in open(samples_path)]
try:
    load = json.load(open(load_path))
except (OSError, ValueError):
    load = {}

# The last sample is taken after the load ended: it shows what was released, not the trend.
run = [s for s in samples if s["t"] <= int(duration)] or samples

def slope(key):
    pts = [(s["t"], s[key]) for s in run if s["t"] >= int(warmup)]
    if len(pts) < 2:
        return None
    n = len(pts)
    mt = sum(t for t, _ in pts) / n
    mv = sum(v for _, v in pts) / n
    var = sum((t - mt) ** 2 for t, _ in pts)
    return None if var == 0 else sum((t - mt) * (v - mv) for t, v in pts) / var * 60  # per minute

status = load.get("status", {})
ok = (int(load_code) == 0 and load.get("requests", 0) > 0 and set(status) == {"200"}
      and load.get("errors", 1) == 0 and load.get("unsent", 1) == 0)
result = {
    "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "commit": commit, "profile": profile,
    "duration_s": int(duration), "rate": int(rate), "interval_s": int(interval),
    "warmup_s": int(warmup), "size": int(size),
    "requests": load.get("requests", 0), "status": status, "errors": load.get("errors"),
    "unsent": load.get("unsent"), "requests_per_sec": load.get("requests_per_sec"),
    "latency_ms": load.get("latency_ms"),
    "rss_kib_first": run[0]["rss_kib"], "rss_kib_last": run[-1]["rss_kib"],
    "rss_kib_max": max(s["rss_kib"] for s in samples),
    "fds_first": run[0]["fds"], "fds_last": run[-1]["fds"],
    "fds_max": max(s["fds"] for s in samples),
    "rss_kib_after_load": samples[-1]["rss_kib"], "fds_after_load": samples[-1]["fds"],
    "rss_slope_kib_per_min": slope("rss_kib"), "fds_slope_per_min": slope("fds"),
    "all_200": ok, "samples": samples,
}
json.dump(result, open(out, "w"), indent=1)
fmt = lambda x: "n/a" if x is None else f"{x:+.1f}"
print(f"soak: {result['requests']} requests, status {status}, {fmt(result['requests_per_sec'])}/s; "
      f"RSS {result['rss_kib_first']} -> {result['rss_kib_last']} KiB (max {result['rss_kib_max']}), "
      f"slope {fmt(result['rss_slope_kib_per_min'])} KiB/min after {warmup}s; fds {result['fds_first']} -> "
      f"{result['fds_last']}, slope {fmt(result['fds_slope_per_min'])}/min; all 200: {ok}", file=sys.stderr)
sys.exit(0 if ok else 1)
PY
say "results in $OUT"
