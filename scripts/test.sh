#!/usr/bin/env bash
# Runs every test on a fresh machine or an old one: sets everything up first (scripts/setup.sh:
# system packages, broker jars, Stripe's SDKs, Helm and the checking tools; idempotent, a few
# seconds when all is there), starts a real Kafka, a real RabbitMQ and a real nats-server on
# 127.0.0.1 (leaving them running for the next run), then runs the whole cargo test suite (unit, integration, and the
# benches once in test mode). Tests that need a broker fail, loudly, when it is missing; none is
# skipped. Ends with one line: "N passed, N failed".
#
#   scripts/test.sh [extra cargo test args]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

"$here/scripts/setup.sh"
"$here/deploy/local/kafka.sh" start
"$here/deploy/local/rabbitmq.sh" start
"$here/deploy/local/nats.sh" start           # nats-server with JetStream, for tests/it/nats.rs
"$here/deploy/local/stripe-mock.sh" start   # Stripe's API mock, for tests/it/replay.rs

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --lib --bins --tests --benches "$@" 2>&1 | tee "$log" || status=$?
summary=$(awk '/^test result:/ { for (i = 1; i < NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
  END { printf "tests: %d passed, %d failed\n", p, f }' "$log")
mkdir -p target
echo "$summary" > target/test-summary.txt
echo "$summary"
exit "$status"
