#!/usr/bin/env bash
# A/B of two (or more) bridge builds or settings, interleaved (A, B, A, B, …) in one sitting, for
# figures that a neighbour's load moves less than wall-clock throughput: CPU per event of the
# server (utime + stime from /proc over the whole load run, warm-up included, divided by the
# requests it answered), plus req/s, p50 and p99 of the load generator.
#
#   bench/ab.sh CONFIG "LOAD ARGS" NAME=COMMAND NAME=COMMAND...
#   AB_ROUNDS=3 bench/ab.sh bench/configs/discard.yaml "--concurrency 64" \
#     old=/tmp/hookbridge-old "new=target/release/hookbridge"
#   bench/ab.sh bench/configs/kafka.yaml "--rate 300" \
#     "linger1=target/release/hookbridge" "linger0=env HOOKBRIDGE__SINKS__EVENTS__LINGER=0ms target/release/hookbridge"
#
# COMMAND is run as `COMMAND serve --config CONFIG` (an `env VAR=value` prefix sets settings), or,
# for a NAME starting with goref, as `COMMAND -listen ADDR -secret SECRET` (bench/goref, built by
# bench/run.sh; give its -mode and broker flags in COMMAND). Needs a release build of hookbridge
# for the load generator (target/release/hookbridge). One line per run on stdout; nothing saved.
# Environment: AB_ROUNDS (2), AB_DURATION (6s), AB_WARMUP (1s), AB_SIZE (4096).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ $# -ge 3 ]] || { sed -n '2,18p' "$0"; exit 2; }
CONFIG="$1"; LOAD="$2"; shift 2
GEN="${CARGO_TARGET_DIR:-target}/release/hookbridge"
SECRET=whsec_bench_not_a_secret
CLK_TCK="$(getconf CLK_TCK)"
PID=""
trap '[[ -n "$PID" ]] && kill "$PID" 2>/dev/null; true' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
count() {
  curl -fsS "$1" | awk '/^hookbridge_requests_total\{/ {s += $NF} /^[0-9]+$/ {s += $1} END {printf "%d\n", s}'
}

printf '%-10s %5s %9s %8s %8s %10s %s\n' side round req/s p50_ms p99_ms cpu_us/ev status
for round in $(seq 1 "${AB_ROUNDS:-2}"); do
  for side in "$@"; do
    name="${side%%=*}"; cmd="${side#*=}"
    port="$(free_port)"; admin="$(free_port)"
    if [[ "$name" == goref* ]]; then
      # shellcheck disable=SC2086
      $cmd -listen "127.0.0.1:$port" -secret "$SECRET" 2>/dev/null &
      PID=$!; ready="http://127.0.0.1:$port/readyz"; counter="http://127.0.0.1:$port/requests"
    else
      # shellcheck disable=SC2086
      HOOKBRIDGE__LISTEN="127.0.0.1:$port" HOOKBRIDGE__ADMIN_LISTEN="127.0.0.1:$admin" \
        $cmd serve --config "$CONFIG" 2>/dev/null &
      PID=$!; ready="http://127.0.0.1:$admin/readyz"; counter="http://127.0.0.1:$admin/metrics"
    fi
    for _ in $(seq 1 300); do curl -fsS -o /dev/null "$ready" 2>/dev/null && break; sleep 0.1; done
    sleep 0.5
    t0="$(ticks "$PID")"; n0="$(count "$counter")"
    # shellcheck disable=SC2086
    out="$("$GEN" bench --url "http://127.0.0.1:$port/webhooks/stripe" --secret "$SECRET" \
      --size "${AB_SIZE:-4096}" --duration "${AB_DURATION:-6s}" --warmup "${AB_WARMUP:-1s}" --json --quiet $LOAD)"
    t1="$(ticks "$PID")"; n1="$(count "$counter")"
    kill -TERM "$PID"; wait "$PID" 2>/dev/null || true; PID=""
    python3 - "$name" "$round" "$t0" "$t1" "$n0" "$n1" "$CLK_TCK" "$out" <<'PY'
import json, sys
name, rnd, t0, t1, n0, n1, hz, out = sys.argv[1:]
s = json.loads(out)
ev = int(n1) - int(n0)
cpu = (int(t1) - int(t0)) / int(hz) / ev * 1e6 if ev else float("nan")
print("%-10s %5s %9.0f %8.2f %8.2f %10.1f %s" % (name, rnd, s["requests_per_sec"], s["latency_ms"]["p50"],
      s["latency_ms"]["p99"], cpu, ",".join("%s:%d" % kv for kv in s["status"].items())))
PY
  done
done
