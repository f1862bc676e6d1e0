#!/usr/bin/env bash
# Renders envoy/static.yaml and envoy/ecds.yaml (plus a sample ECDS resource file)
# with dummy values into a temp dir and checks each with `envoy --mode validate`.
# Exits non-zero if any config is rejected.
#
# Env: WASM_PATH (default: build the filter and use target/wasm32-wasip1/release/...),
#      ENVOY_BIN (default: envoy/install-envoy.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ENVOY="$(tg_envoy_bin)"
WASM="${WASM_PATH:-}"
if [[ -z "$WASM" ]]; then
  WASM="$(tg_build_wasm)"
fi
[[ -f "$WASM" ]] || { echo "validate: wasm not found: $WASM" >&2; exit 1; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
CONFIG='{"version":1,"revision":"validate","tenant":{"trust_header_without_jwt":true},"tenants":{"acme":{"rate_limit":{"requests":3,"per_seconds":60}}}}'

tg_render_static "$WORK/static.yaml" "$CONFIG" 19901 19000 19080 "$WASM"
mkdir -p "$WORK/ecds"
tg_render_ecds_bootstrap "$WORK/ecds.yaml" "$WORK/ecds" 19901 19000 19080
tg_write_ecds_resource "$WORK/ecds" "$CONFIG" "$WASM" "validate-1"

status=0
for f in static.yaml ecds.yaml; do
  if out="$("$ENVOY" --mode validate --disable-hot-restart -c "$WORK/$f" 2>&1)"; then
    echo "validate: $f OK"
  else
    echo "validate: $f FAILED" >&2
    echo "$out" | tail -n 20 >&2
    status=1
  fi
done
exit "$status"
