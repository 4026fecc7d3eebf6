#!/usr/bin/env bash
# Sets up everything hookbridge needs to build and to run its tests on a fresh Debian machine:
# system packages (for rdkafka's build and RabbitMQ), the Kafka broker jars, nats-server (built
# with go install), and Stripe's official SDKs (the interop reference). Idempotent: a second run only checks.
#
#   scripts/setup.sh                # everything (scripts/test.sh calls this)
#   scripts/setup.sh --build-only   # only what building hookbridge needs (scripts/run.sh)
#
# Caches live in ${HOOKBRIDGE_CACHE:-$HOME/.cache/hookbridge}, never in the checkout.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { echo "setup: $*" >&2; }

build_only=false
[ "${1:-}" = "--build-only" ] && build_only=true

# Build dependencies of librdkafka (built from source by rdkafka's cmake-build feature: OpenSSL
# for TLS and SASL, zlib for gzip, libcurl's headers for OAUTHBEARER OIDC; libcurl itself and zstd
# are built from their bundled sources and linked in), and openssl for the test certificates of
# deploy/local/certs.sh.
packages=(build-essential cmake pkg-config libssl-dev zlib1g-dev libcurl4-openssl-dev openssl)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

tools=(cargo go java mvn node npm python3)
$build_only && tools=(cargo)
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null || { log "missing $tool: install it first (see README)"; exit 1; }
done
if $build_only; then
  log "done (build dependencies only)"
  exit 0
fi

log "test certificates (deploy/local/certs.sh)"
"$here/deploy/local/certs.sh" >/dev/null
log "Kafka broker jars"
"$here/deploy/local/kafka.sh" fetch
log "RabbitMQ server"
"$here/deploy/local/rabbitmq.sh" install
log "nats-server (go install, cached; for tests/it/nats.rs)"
"$here/deploy/local/nats.sh" install >/dev/null
log "Stripe SDKs"
"$here/deploy/local/stripe-sdk.sh"
log "stripe-mock (Stripe's API mock, for tests/it/replay.rs)"
"$here/deploy/local/stripe-mock.sh" install
log "Helm (tests/it/deploy.rs renders the chart with it)"
"$here/deploy/helm/install-helm.sh" >/dev/null
log "promtool, actionlint, kubernetes-validate (deployment and monitoring checks)"
"$here/deploy/tools/install.sh" promtool actionlint kubernetes-validate >/dev/null
log "done"
