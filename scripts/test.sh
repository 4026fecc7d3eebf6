#!/usr/bin/env bash
# Runs every test: starts a real Kafka and a real RabbitMQ on 127.0.0.1 (leaving them running for
# the next run), makes sure Stripe's SDKs are installed, then runs the whole cargo test suite.
# Tests that need a broker fail, loudly, when it is missing; none is skipped.
#
#   scripts/test.sh [extra cargo test args]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

"$here/deploy/local/stripe-sdk.sh"
"$here/deploy/local/kafka.sh" start
"$here/deploy/local/rabbitmq.sh" start

cargo test --all-targets "$@"
