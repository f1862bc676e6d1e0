#!/usr/bin/env bash
# The one command that runs every test: core unit tests (native and compiled to
# wasm32 under wasm-bindgen-test), Envoy config validation, sidecar tests against
# a real PostgreSQL, the end-to-end tests against a real Envoy, and a fuzz smoke.
# Installs what is missing first (tests/setup.sh; the fuzz step its nightly and
# cargo-fuzz) and stops at the first failed step, naming it with a hint.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source envoy/lib.sh
trap 'tg_step_report $?' EXIT

tg_step "setup (toolchain, wasm-bindgen-cli, Envoy, PostgreSQL)" \
  "the failing setup step is named above; \`bash tests/setup.sh\` repeats just the setup"
SETUP="$(bash tests/setup.sh)"
eval "$SETUP"
echo "Envoy: $ENVOY_BIN ($("$ENVOY_BIN" --version | grep -o '[0-9]*\.[0-9]*\.[0-9]*/Clean' | head -1))" >&2
echo "PostgreSQL: $DATABASE_URL" >&2

tg_step "build the filter (wasm32-wasip1)" \
  "a compile error in filter/ (see above); \`cargo build --release --target wasm32-wasip1 -p tenant-guard-filter\` repeats it"
cargo build --release --target wasm32-wasip1 -p tenant-guard-filter
WASM="$(tg_target_dir)/wasm32-wasip1/release/tenant_guard_filter.wasm"
echo "filter size: $(stat -c %s "$WASM") bytes" >&2

tg_step "validate the Envoy bootstraps (envoy --mode validate)" \
  "envoy/static.yaml or envoy/ecds.yaml was rejected; \`bash envoy/validate.sh\` repeats it"
WASM_PATH="$WASM" bash envoy/validate.sh

tg_step "monitoring: promtool check rules + test rules (docs/monitoring), dashboard queries parse" \
  "\`bash docs/monitoring/check.sh\` repeats it"
bash docs/monitoring/check.sh

tg_step "OCI image of the filter: reproducible, compat variant, skopeo/umoci/registry round trip" \
  "\`WASM_PATH=$WASM bash envoy/check-oci-image.sh\` repeats it"
WASM_PATH="$WASM" bash envoy/check-oci-image.sh

tg_step "core unit tests compiled to wasm32 (wasm-bindgen-test on node)" \
  "repeat with \`CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner cargo test -p tenant-guard-core --target wasm32-unknown-unknown\`"
CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
  cargo test -p tenant-guard-core --target wasm32-unknown-unknown

tg_step "all native tests: core, sidecar (real PostgreSQL), e2e (real Envoy)" \
  "the failing test is named above; \`cargo test -p CRATE --test NAME -- TEST\` repeats one (ENVOY_BIN and DATABASE_URL as printed by tests/setup.sh)"
cargo test --workspace

tg_step "demo --fleet (2 Envoys + 2 store sidecars + Redis)" \
  "its own report above names the failed step and keeps the logs; \`bash envoy/demo.sh --fleet\` repeats it"
WASM_PATH="$WASM" ENVOY_BIN="$ENVOY_BIN" bash envoy/demo.sh --fleet

tg_step "fuzz smoke: ${FUZZ_SECONDS:-30}s per target (bash filter/core/fuzz/run.sh SECONDS for long runs)" \
  "a crash input is saved under filter/core/fuzz/artifacts/; \`bash filter/core/fuzz/run.sh\` repeats the smoke"
bash filter/core/fuzz/run.sh "${FUZZ_SECONDS:-30}"
TG_STEP=""
printf '\n%s\n' "$(tg_paint 2 32 "run-all: every step passed")" >&2
