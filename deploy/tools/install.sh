#!/usr/bin/env bash
# Installs the checking tools the deployment checks use, into
# ${HOOKBRIDGE_CACHE:-$HOME/.cache/hookbridge}, and prints the path of each one asked for on stdout
# (one per line). Idempotent: a tool whose pinned version is already there is only printed.
#
#   deploy/tools/install.sh promtool actionlint kubernetes-validate
#
#   promtool             Prometheus' rule checker and rule unit tester (go install, Go module proxy)
#   actionlint           GitHub Actions workflow checker (go install, Go module proxy)
#   nats-server          NATS server with JetStream, for the NATS sink's tests (go install, Go module
#                        proxy; deploy/local/nats.sh runs it)
#   kubernetes-validate  offline validator with the Kubernetes OpenAPI schemas of many releases
#                        bundled (PyPI, in a venv under the cache)
#
# Go-built tools need Go 1.24+ on PATH; kubernetes-validate needs python3 with venv.
set -euo pipefail

cache="${HOOKBRIDGE_CACHE:-$HOME/.cache/hookbridge}"
bin_dir="$cache/bin"
log() { echo "install-tools: $*" >&2; }

# name -> Go package@version
declare -A go_tools=(
  [promtool]="github.com/prometheus/prometheus/cmd/promtool@${PROMTOOL_VERSION:-v0.316.0}"
  [actionlint]="github.com/rhysd/actionlint/cmd/actionlint@${ACTIONLINT_VERSION:-v1.7.12}"
  [nats-server]="github.com/nats-io/nats-server/v2@${NATS_SERVER_VERSION:-v2.15.2}"
)
# Build tags per tool. promtool without Prometheus' service-discovery plugins (cloud SDKs, which
# `check rules` and `test rules` never use) builds in a fraction of the time.
declare -A go_tags=(
  [promtool]="remove_all_sd"
  [actionlint]=""
  [nats-server]=""
)
kv_version="${KUBERNETES_VALIDATE_VERSION:-1.37.0}"

install_go_tool() {
  local name="$1" pkg="${go_tools[$1]}" tags="${go_tags[$1]}"
  local exe="$bin_dir/$name" stamp="$bin_dir/.$name-version"
  if [ -x "$exe" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$pkg $tags" ]; then
    echo "$exe"
    return
  fi
  command -v go >/dev/null || { log "go is not on PATH; install Go first"; exit 1; }
  mkdir -p "$bin_dir"
  log "building $pkg with go install"
  local start=$SECONDS
  # CGO off: a static binary that does not depend on the machine's C library.
  GOBIN="$bin_dir" CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -trimpath" go install -tags="$tags" "$pkg"
  echo "$pkg $tags" >"$stamp"
  log "$name built in $((SECONDS - start))s"
  echo "$exe"
}

install_kubernetes_validate() {
  local venv="$cache/venv-kubernetes-validate"
  local exe="$venv/bin/kubernetes-validate" stamp="$venv/.version"
  if [ -x "$exe" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$kv_version" ]; then
    echo "$exe"
    return
  fi
  command -v python3 >/dev/null || { log "python3 is not on PATH"; exit 1; }
  log "installing kubernetes-validate $kv_version into $venv"
  local start=$SECONDS
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$kv_version"
  echo "$kv_version" >"$stamp"
  log "kubernetes-validate installed in $((SECONDS - start))s"
  echo "$exe"
}

[ $# -gt 0 ] || { log "usage: $0 promtool|actionlint|nats-server|kubernetes-validate..."; exit 2; }
for tool in "$@"; do
  case "$tool" in
    promtool | actionlint | nats-server) install_go_tool "$tool" ;;
    kubernetes-validate) install_kubernetes_validate ;;
    *) log "unknown tool $tool"; exit 2 ;;
  esac
done
