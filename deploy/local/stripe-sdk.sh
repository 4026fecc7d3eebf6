#!/usr/bin/env bash
# Install Stripe's OFFICIAL SDKs (PyPI `stripe`, npm `stripe`) as reference
# webhook signer/verifier for the interop tests (tests/interop/), and the CNCF
# CloudEvents SDK (PyPI `cloudevents`) that reads back `headers: cloudevents` messages.
#
#   deploy/local/stripe-sdk.sh          # install (no-op when pinned versions present)
#   deploy/local/stripe-sdk.sh --force  # reinstall
#
# Layout (DIR = $HOOKBRIDGE_STRIPE_SDK, default ${HOOKBRIDGE_CACHE:-$HOME/.cache/hookbridge}/stripe-sdk):
#   $DIR/venv/bin/python            python venv with stripe==$STRIPE_PY_VERSION
#                                   and cloudevents==$CLOUDEVENTS_PY_VERSION
#   $DIR/node/node_modules/stripe   npm prefix with stripe@$STRIPE_NODE_VERSION
# Needs: python3 (>=3.9, with venv), node (>=20) + npm, and access to PyPI/npm.
set -euo pipefail

STRIPE_PY_VERSION=16.1.0
STRIPE_NODE_VERSION=23.1.0
CLOUDEVENTS_PY_VERSION=2.2.0

DIR="${HOOKBRIDGE_STRIPE_SDK:-${HOOKBRIDGE_CACHE:-$HOME/.cache/hookbridge}/stripe-sdk}"
PYTHON="${PYTHON:-python3}"   # interpreter used to create the venv
FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1

log() { echo "stripe-sdk: $*" >&2; }

py_installed() {
  [ -x "$DIR/venv/bin/python" ] || return 1
  [ "$("$DIR/venv/bin/python" -c 'import importlib.metadata as m; print(m.version("stripe"), m.version("cloudevents"))' 2>/dev/null)" = "$STRIPE_PY_VERSION $CLOUDEVENTS_PY_VERSION" ]
}

node_installed() {
  local pj="$DIR/node/node_modules/stripe/package.json"
  [ -f "$pj" ] || return 1
  [ "$(node -p 'require(process.argv[1]).version' "$pj" 2>/dev/null)" = "$STRIPE_NODE_VERSION" ]
}

mkdir -p "$DIR"

if [ "$FORCE" = 0 ] && py_installed; then
  log "python stripe==$STRIPE_PY_VERSION cloudevents==$CLOUDEVENTS_PY_VERSION already in $DIR/venv"
else
  log "installing python stripe==$STRIPE_PY_VERSION cloudevents==$CLOUDEVENTS_PY_VERSION into $DIR/venv"
  # recreate a venv whose interpreter no longer runs (e.g. python3 moved)
  "$DIR/venv/bin/python" -c '' 2>/dev/null || { rm -rf "$DIR/venv"; "$PYTHON" -m venv "$DIR/venv"; }
  "$DIR/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "stripe==$STRIPE_PY_VERSION" "cloudevents==$CLOUDEVENTS_PY_VERSION"
  py_installed || { log "python stripe install failed verification"; exit 1; }
fi

if [ "$FORCE" = 0 ] && node_installed; then
  log "npm stripe@$STRIPE_NODE_VERSION already in $DIR/node"
else
  log "installing npm stripe@$STRIPE_NODE_VERSION into $DIR/node"
  mkdir -p "$DIR/node"
  npm install --prefix "$DIR/node" --no-audit --no-fund --save-exact --silent \
    "stripe@$STRIPE_NODE_VERSION"
  node_installed || { log "npm stripe install failed verification"; exit 1; }
fi

log "ready: HOOKBRIDGE_STRIPE_SDK=$DIR"
