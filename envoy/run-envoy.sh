#!/usr/bin/env bash
# Runs a real Envoy locally with the tenant-guard filter.
#
#   envoy/run-envoy.sh static   # filter + plugin config inline (envoy/static.yaml)
#   envoy/run-envoy.sh ecds     # filter delivered by ECDS from $WORK_DIR/ecds (envoy/ecds.yaml)
#
# Env (defaults in brackets):
#   LISTENER_PORT [10000]  ADMIN_PORT [9901]  UPSTREAM_PORT [18080]
#   PLUGIN_CONFIG [envoy/sample-config.json]  path of the plugin config JSON
#   WORK_DIR [<repo>/.tools/run]  where the rendered bootstrap (and ECDS dir) go
#   WASM_PATH  use this .wasm instead of building the filter
#   ENVOY_BIN  use this Envoy instead of envoy/install-envoy.sh
#   LOG_LEVEL [info]
#   START_UPSTREAM [1]  when nothing listens on UPSTREAM_PORT, start envoy/echo_upstream.py
#                       there (stopped with Envoy); 0 = leave it to you (requests get 503
#                       until an upstream runs on that port)
# In ECDS mode an initial tenant-guard.ecds.json is written only if none exists;
# afterwards the sync sidecar (or tg_write_ecds_resource) replaces it by rename.
# Extra arguments after the mode are passed to Envoy.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MODE="${1:-static}"
shift || true
LISTENER_PORT="${LISTENER_PORT:-10000}"
ADMIN_PORT="${ADMIN_PORT:-9901}"
UPSTREAM_PORT="${UPSTREAM_PORT:-18080}"
PLUGIN_CONFIG="${PLUGIN_CONFIG:-$TG_ENVOY_DIR/sample-config.json}"
WORK_DIR="${WORK_DIR:-$TG_REPO_ROOT/.tools/run}"
LOG_LEVEL="${LOG_LEVEL:-info}"

WASM="${WASM_PATH:-}"
if [[ -z "$WASM" ]]; then
  echo "run-envoy: building the filter" >&2
  WASM="$(tg_build_wasm)"
fi
ENVOY="$(tg_envoy_bin)"
CONFIG_JSON="$(cat "$PLUGIN_CONFIG")"
mkdir -p "$WORK_DIR"

case "$MODE" in
  static)
    BOOTSTRAP="$WORK_DIR/static.yaml"
    tg_render_static "$BOOTSTRAP" "$CONFIG_JSON" "$ADMIN_PORT" "$LISTENER_PORT" "$UPSTREAM_PORT" "$WASM"
    ;;
  ecds)
    ECDS_DIR="$WORK_DIR/ecds"
    mkdir -p "$ECDS_DIR"
    BOOTSTRAP="$WORK_DIR/ecds.yaml"
    tg_render_ecds_bootstrap "$BOOTSTRAP" "$ECDS_DIR" "$ADMIN_PORT" "$LISTENER_PORT" "$UPSTREAM_PORT"
    if [[ ! -f "$ECDS_DIR/tenant-guard.ecds.json" ]]; then
      tg_write_ecds_resource "$ECDS_DIR" "$CONFIG_JSON" "$WASM" "initial"
    fi
    echo "run-envoy: ECDS resource: $ECDS_DIR/tenant-guard.ecds.json" >&2
    ;;
  *)
    echo "usage: $0 static|ecds [envoy args...]" >&2
    exit 2
    ;;
esac

echo "run-envoy: listener 127.0.0.1:$LISTENER_PORT admin 127.0.0.1:$ADMIN_PORT upstream 127.0.0.1:$UPSTREAM_PORT" >&2
if (exec 3<>"/dev/tcp/127.0.0.1/$UPSTREAM_PORT") 2>/dev/null; then
  echo "run-envoy: 127.0.0.1:$UPSTREAM_PORT answers: using it as the upstream" >&2
elif [[ "${START_UPSTREAM:-1}" == 1 ]]; then
  python3 "$TG_ENVOY_DIR/echo_upstream.py" "$UPSTREAM_PORT" &
  UPSTREAM_PID=$!
  ENVOY_PID=""
  trap 'kill ${ENVOY_PID:+"$ENVOY_PID"} "$UPSTREAM_PID" 2>/dev/null || true' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  tg_wait_http "http://127.0.0.1:$UPSTREAM_PORT/" 10
  echo "run-envoy: started the echo upstream (envoy/echo_upstream.py $UPSTREAM_PORT, pid $UPSTREAM_PID; stops with Envoy)" >&2
  echo "run-envoy: try: curl -i -H 'x-tenant-id: acme' http://127.0.0.1:$LISTENER_PORT/orders" >&2
  # Not exec: this shell stays to stop the upstream with Envoy (and Envoy when
  # the shell is interrupted or terminated).
  "$ENVOY" -c "$BOOTSTRAP" --disable-hot-restart --log-level "$LOG_LEVEL" "$@" &
  ENVOY_PID=$!
  wait "$ENVOY_PID"
  exit
else
  echo "run-envoy: nothing listens on 127.0.0.1:$UPSTREAM_PORT: every request gets 503 until an upstream" \
    "runs there, e.g. \`python3 envoy/echo_upstream.py $UPSTREAM_PORT\`" >&2
fi
exec "$ENVOY" -c "$BOOTSTRAP" --disable-hot-restart --log-level "$LOG_LEVEL" "$@"
