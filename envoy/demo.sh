#!/usr/bin/env bash
# One-command demo of tenant-guard on a real Envoy:
#   builds the filter, installs Envoy if needed, starts an echo upstream and Envoy
#   (static bootstrap, envoy/sample-config.json: acme 3 req/60 s, globex 100 req/60 s),
#   then sends sample traffic and prints it readably. Everything is stopped on exit.
#
# Env: LISTENER_PORT [10000] ADMIN_PORT [9901] UPSTREAM_PORT [18080]
#      PLUGIN_CONFIG [envoy/sample-config.json] WASM_PATH ENVOY_BIN KEEP_WORK_DIR
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

LISTENER_PORT="${LISTENER_PORT:-10000}"
ADMIN_PORT="${ADMIN_PORT:-9901}"
UPSTREAM_PORT="${UPSTREAM_PORT:-18080}"
PLUGIN_CONFIG="${PLUGIN_CONFIG:-$TG_ENVOY_DIR/sample-config.json}"
WORK_DIR="$(mktemp -d -t tenant-guard-demo.XXXXXX)"
PIDS=()

# ---------------------------------------------------------------- plumbing
bold() { printf '\n\033[1m%s\033[0m\n' "$*"; }
info() { printf '   %s\n' "$*"; }

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [[ -n "${KEEP_WORK_DIR:-}" ]]; then
    echo "demo: work dir kept: $WORK_DIR" >&2
  else
    rm -rf "$WORK_DIR"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

build_filter() {
  bold "Building the filter (wasm32-wasip1)"
  WASM="${WASM_PATH:-}"
  [[ -n "$WASM" ]] || WASM="$(tg_build_wasm)"
  info "$WASM ($(wc -c <"$WASM") bytes)"
}

install_envoy() {
  bold "Finding Envoy"
  ENVOY="$(tg_envoy_bin)"
  info "$ENVOY ($("$ENVOY" --version 2>/dev/null | grep -o '[0-9]*\.[0-9]*\.[0-9]*' | head -n1))"
}

start_upstream() {
  bold "Starting the echo upstream on 127.0.0.1:$UPSTREAM_PORT"
  python3 "$TG_ENVOY_DIR/echo_upstream.py" "$UPSTREAM_PORT" 2>"$WORK_DIR/upstream.log" &
  PIDS+=("$!")
  tg_wait_http "http://127.0.0.1:$UPSTREAM_PORT/" 10
}

start_envoy() {
  bold "Starting Envoy (static bootstrap) on 127.0.0.1:$LISTENER_PORT, admin :$ADMIN_PORT"
  tg_render_static "$WORK_DIR/envoy.yaml" "$(cat "$PLUGIN_CONFIG")" \
    "$ADMIN_PORT" "$LISTENER_PORT" "$UPSTREAM_PORT" "$WASM"
  "$ENVOY" -c "$WORK_DIR/envoy.yaml" --disable-hot-restart --concurrency 2 \
    --log-level info --log-path "$WORK_DIR/envoy.log" >"$WORK_DIR/envoy.out" 2>&1 &
  PIDS+=("$!")
  if ! tg_wait_http "http://127.0.0.1:$ADMIN_PORT/ready" 30; then
    tail -n 30 "$WORK_DIR/envoy.log" "$WORK_DIR/envoy.out" >&2
    exit 1
  fi
  info "plugin config: $PLUGIN_CONFIG"
}

# send LABEL CURL_ARGS... : one request through Envoy, printed readably.
send() {
  local label="$1"
  shift
  local headers="$WORK_DIR/headers" body="$WORK_DIR/body" status
  status="$(curl -sS -o "$body" -D "$headers" -w '%{http_code}' "$@" "http://127.0.0.1:$LISTENER_PORT${REQ_PATH:-/orders}")"
  printf '\n   \033[36m%s\033[0m\n   → HTTP %s\n' "$label" "$status"
  grep -iE '^(x-correlation-id|retry-after|ratelimit-policy|ratelimit|content-type):' "$headers" |
    tr -d '\r' | sed 's/^/     /'
  python3 - "$body" <<'PY'
import json, sys
raw = open(sys.argv[1], "rb").read()
try:
    doc = json.loads(raw)
except ValueError:
    print("     body:", raw[:300].decode(errors="replace"))
    sys.exit()
if "headers" in doc:  # the echo upstream: show what it received from Envoy
    seen = {k: v for k, v in doc["headers"].items()
            if k in ("x-tenant-id", "x-correlation-id", "x-tenant-guard-revision")}
    print("     upstream received:", json.dumps(seen))
else:  # a problem+json local reply
    print("     body:", json.dumps(doc))
PY
}

# ---------------------------------------------------------------- scenarios
demo_correlation() {
  bold "1. Correlation id"
  send "valid incoming x-correlation-id is kept, forwarded and echoed" \
    -H 'x-tenant-id: globex' -H 'x-correlation-id: order-flow.42'
  send "no x-correlation-id: a UUIDv7 is generated" -H 'x-tenant-id: globex'
  send "invalid x-correlation-id (contains a space): replaced by a UUIDv7" \
    -H 'x-tenant-id: globex' -H 'x-correlation-id: not valid'
}

demo_rate_limit() {
  bold "2. Per-tenant rate limit: acme may send 3 requests per 60 s"
  local i
  for i in 1 2 3 4 5; do
    send "acme request $i" -H 'x-tenant-id: acme'
  done
  bold "3. globex is unaffected by acme's limit"
  send "globex request" -H 'x-tenant-id: globex'
}

demo_tenant_required() {
  bold "4. Missing tenant"
  send "no x-tenant-id header" -H 'x-correlation-id: demo-missing-tenant'
}

demo_stats() {
  bold "5. Filter metrics (Envoy admin /stats)"
  curl -sS "http://127.0.0.1:$ADMIN_PORT/stats?filter=tenant_guard" | sed 's/^/   /'
}

main() {
  build_filter
  install_envoy
  start_upstream
  start_envoy
  demo_correlation
  demo_rate_limit
  demo_tenant_required
  demo_stats
  bold "Done."
}

main "$@"
