#!/usr/bin/env bash
# Runs hookbridge from a fresh checkout in one command: installs what the build needs
# (scripts/setup.sh --build-only), builds the release binary (cargo only rebuilds what changed),
# and serves the quick-start config: no broker, every verified event printed to stdout as a JSON
# line, webhook on 127.0.0.1:8080, admin (/metrics, /healthz, /readyz) on 127.0.0.1:9090.
# Idempotent: a second run goes straight to serving.
#
#   scripts/run.sh                              # config/quickstart.yaml
#   scripts/run.sh --config my-hookbridge.yaml  # any `hookbridge serve` arguments
#
# HOOKBRIDGE_RUN_PROFILE=dev builds the (faster to compile) debug binary instead.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

"$here/scripts/setup.sh" --build-only
profile="${HOOKBRIDGE_RUN_PROFILE:-release}"
cargo build --locked --profile "$profile" --bin hookbridge
dir=release
[ "$profile" = dev ] && dir=debug
if [ $# -eq 0 ]; then
  set -- --config config/quickstart.yaml
  echo "run: serving config/quickstart.yaml; in another terminal, post a signed fixture:" >&2
  echo "  target/$dir/hookbridge send --url http://127.0.0.1:8080/webhooks/stripe --secret whsec_quickstart_not_secret tests/fixtures/invoice.paid.json" >&2
fi
exec "target/$dir/hookbridge" serve "$@"
