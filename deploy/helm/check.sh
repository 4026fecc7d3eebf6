#!/usr/bin/env bash
# CI check of the deployment assets: installs Helm if needed (deploy/helm/install-helm.sh), lints
# the chart, renders it with the defaults and with every optional resource enabled, then runs the
# consistency test (tests/deploy.rs) against the rendered chart and the plain manifests.
#
#   deploy/helm/check.sh            # from anywhere in the checkout
#
# The test finds helm through HOOKBRIDGE_HELM, which this script sets.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$here"

helm="$(bash deploy/helm/install-helm.sh)"
export HOOKBRIDGE_HELM="$helm"
chart=deploy/helm/hookbridge

"$helm" lint --strict "$chart"
"$helm" template hookbridge "$chart" >/dev/null
"$helm" template hookbridge "$chart" \
  --set ingress.enabled=true --set networkPolicy.enabled=true >/dev/null
echo "check: helm lint and helm template passed" >&2

cargo test --test deploy
