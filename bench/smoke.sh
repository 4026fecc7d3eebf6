#!/usr/bin/env bash
# CI smoke run of the load generator (not the benchmark): starts the bridge on the file sink on
# free ports, runs `hookbridge bench` for about 3 s at low concurrency with --expect-ok, checks
# that every answer was 200 and that the file sink holds one record per answer, then stops the
# bridge with SIGTERM and checks it exited 0.
#
#   bench/smoke.sh            # debug build (SMOKE_PROFILE=release to use a release build)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PROFILE="${SMOKE_PROFILE:-debug}"
TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
SECRET=whsec_bench_not_a_secret
say() { echo "smoke: $*" >&2; }
fail() { say "FAILED: $*"; [[ -f "${WORK:-}/bridge.log" ]] && tail -20 "$WORK/bridge.log" >&2; exit 1; }

if [[ "$PROFILE" == release ]]; then
  cargo build --release --bin hookbridge
else
  cargo build --bin hookbridge
fi
BIN="$TARGET_DIR/$PROFILE/hookbridge"

WORK="$(mktemp -d)"
BRIDGE=""
cleanup() {
  [[ -n "$BRIDGE" ]] && kill -KILL "$BRIDGE" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ready() { python3 -c 'import sys,urllib.request; sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=1).status == 200 else 1)' "$1" 2>/dev/null; }

PORT="$(free_port)"
ADMIN="$(free_port)"
HOOKBRIDGE__LISTEN="127.0.0.1:$PORT" HOOKBRIDGE__ADMIN_LISTEN="127.0.0.1:$ADMIN" \
  HOOKBRIDGE__SINKS__LOCAL__PATH="$WORK/events.jsonl" \
  "$BIN" serve --config bench/configs/file.yaml 2>"$WORK/bridge.log" &
BRIDGE=$!
for _ in $(seq 1 100); do
  ready "http://127.0.0.1:$ADMIN/readyz" && break
  kill -0 "$BRIDGE" 2>/dev/null || fail "the bridge exited at start-up"
  sleep 0.1
done
ready "http://127.0.0.1:$ADMIN/readyz" || fail "the bridge was not ready within 10 s"

"$BIN" bench --url "http://127.0.0.1:$PORT/webhooks/stripe" --secret "$SECRET" \
  --concurrency 4 --duration 3s --size 4096 --json --expect-ok --quiet >"$WORK/summary.json" ||
  fail "hookbridge bench --expect-ok failed: $(cat "$WORK/summary.json")"

python3 - "$WORK/summary.json" "$WORK/events.jsonl" <<'PY' || fail "unexpected results"
import json, sys
s = json.load(open(sys.argv[1]))
ok = s["status"].get("200", 0)
assert s["requests"] > 0, "no requests"
assert set(s["status"]) == {"200"}, f"statuses other than 200: {s['status']}"
assert s["errors"] == 0 and s["unsent"] == 0, f"errors {s['errors']} unsent {s['unsent']}"
records = sum(1 for _ in open(sys.argv[2]))
assert records == ok, f"{ok} answers 200 but {records} records in the file sink"
print(f"smoke: {s['requests']} requests in {s['duration_s']:.1f} s, all 200, "
      f"{s['requests_per_sec']:.0f} req/s, p99 {s['latency_ms']['p99']} ms; {records} records in the file sink",
      file=sys.stderr)
PY

kill -TERM "$BRIDGE"
code=0
wait "$BRIDGE" || code=$?
BRIDGE=""
[[ "$code" == 0 ]] || fail "the bridge exited $code after SIGTERM"
say "ok"
