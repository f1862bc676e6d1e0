#!/usr/bin/env bash
# Installs what the tests need and prints `export` lines for their environment:
# the pinned Rust toolchain with its wasm targets, wasm-bindgen-cli matching
# Cargo.lock, Envoy (envoy/install-envoy.sh) and a PostgreSQL (tests/postgres.sh).
# Idempotent; chatter on stderr. Use: eval "$(bash tests/setup.sh)"
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { echo "setup: $*" >&2; }

# Rust: the toolchain and targets pinned in rust-toolchain.toml.
if ! command -v cargo >/dev/null 2>&1; then
  log "cargo not found: install rustup (https://rustup.rs) first"
  exit 1
fi
rustup toolchain install >&2 2>&1 || rustup show active-toolchain >&2

# wasm-bindgen-cli must match the wasm-bindgen version in Cargo.lock.
WBG_VERSION="$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/version = |"/, ""); print; exit}' Cargo.lock)"
if [[ -z "$WBG_VERSION" ]]; then
  log "cannot find wasm-bindgen in Cargo.lock"
  exit 1
fi
if ! wasm-bindgen-test-runner --version 2>/dev/null | grep -q "$WBG_VERSION"; then
  log "installing wasm-bindgen-cli $WBG_VERSION"
  cargo install --quiet wasm-bindgen-cli --version "$WBG_VERSION" >&2
fi
command -v node >/dev/null 2>&1 || { log "node is needed for wasm-bindgen tests"; exit 1; }

ENVOY_BIN="$(bash envoy/install-envoy.sh)"
DATABASE_URL="${DATABASE_URL:-$(bash tests/postgres.sh)}"

echo "export ENVOY_BIN='$ENVOY_BIN'"
echo "export DATABASE_URL='$DATABASE_URL'"
