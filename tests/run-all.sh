#!/usr/bin/env bash
# The one command that runs every test: core unit tests (native and compiled to
# wasm32 under wasm-bindgen-test), Envoy config validation, sidecar tests against
# a real PostgreSQL, and the end-to-end tests against a real Envoy.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
step() { printf '\n==> %s\n' "$*" >&2; }

step "setup (toolchain, wasm-bindgen-cli, Envoy, PostgreSQL)"
eval "$(bash tests/setup.sh)"
echo "Envoy: $ENVOY_BIN ($("$ENVOY_BIN" --version | grep -o '[0-9]*\.[0-9]*\.[0-9]*/Clean' | head -1))" >&2
echo "PostgreSQL: $DATABASE_URL" >&2

step "build the filter (wasm32-wasip1)"
cargo build --release --target wasm32-wasip1 -p tenant-guard-filter
WASM="target/wasm32-wasip1/release/tenant_guard_filter.wasm"
echo "filter size: $(stat -c %s "$WASM") bytes" >&2

step "validate the Envoy bootstraps (envoy --mode validate)"
bash envoy/validate.sh

step "core unit tests compiled to wasm32 (wasm-bindgen-test on node)"
CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
  cargo test -p tenant-guard-core --target wasm32-unknown-unknown

step "all native tests: core, sidecar (real PostgreSQL), e2e (real Envoy)"
cargo test --workspace

step "fuzz smoke: ${FUZZ_SECONDS:-30}s per target (bash filter/core/fuzz/run.sh SECONDS for long runs)"
bash filter/core/fuzz/run.sh "${FUZZ_SECONDS:-30}"
