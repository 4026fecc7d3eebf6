#!/usr/bin/env bash
# CI check of the deployment and monitoring assets. Installs Helm, promtool and
# kubernetes-validate if needed (deploy/helm/install-helm.sh, deploy/tools/install.sh), checks
# the alert rules and runs their unit tests with promtool, then runs tests/it/deploy.rs: helm lint
# and helm template with every values file of the chart's ci/ folder (one per sink kind),
# consistency of the rendered chart and the plain manifests, `hookbridge check-config` on every
# config they carry, validation against the Kubernetes 1.30 and newest OpenAPI schemas
# (offline), the metrics the dashboard and alerts use against a running bridge, and the
# libraries the image must carry.
#
#   deploy/helm/check.sh            # from anywhere in the checkout
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$here"

helm="$(bash deploy/helm/install-helm.sh)"
promtool="$(bash deploy/tools/install.sh promtool)"
validate="$(bash deploy/tools/install.sh kubernetes-validate)"
export HOOKBRIDGE_HELM="$helm" HOOKBRIDGE_PROMTOOL="$promtool" HOOKBRIDGE_KUBERNETES_VALIDATE="$validate"

"$HOOKBRIDGE_PROMTOOL" check rules deploy/prometheus/hookbridge-rules.yaml
"$HOOKBRIDGE_PROMTOOL" test rules deploy/prometheus/hookbridge-rules.test.yaml

cargo test --test it deploy::
