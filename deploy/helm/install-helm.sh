#!/usr/bin/env bash
# Installs the Helm v3 CLI into ${HOOKBRIDGE_CACHE:-$HOME/.cache/hookbridge}/bin, built from the Go
# module proxy with `go install` (no download site needed). Idempotent: when the pinned version is
# already there it only prints its path. CI calls it before `deploy/helm/check.sh` and the tests.
#
#   deploy/helm/install-helm.sh          # prints the path of the helm binary on stdout
#
# Needs Go 1.24 or newer on PATH. Override the version with HELM_VERSION=v3.x.y.
set -euo pipefail

version="${HELM_VERSION:-v3.22.0}"
bin_dir="${HOOKBRIDGE_CACHE:-$HOME/.cache/hookbridge}/bin"
helm="$bin_dir/helm"
stamp="$bin_dir/.helm-version"

log() { echo "install-helm: $*" >&2; }

if [ -x "$helm" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$version" ]; then
  echo "$helm"
  exit 0
fi

command -v go >/dev/null || { log "go is not on PATH; install Go first"; exit 1; }
mkdir -p "$bin_dir"
log "building helm $version with go install (a few minutes on 2 cores)"
# CGO off: a static binary that does not depend on the machine's C library.
GOBIN="$bin_dir" CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -trimpath" \
  go install "helm.sh/helm/v3/cmd/helm@$version"
echo "$version" >"$stamp"
"$helm" version --short >&2
echo "$helm"
