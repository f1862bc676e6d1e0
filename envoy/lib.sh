# Shared helpers for the envoy/*.sh scripts (sourced, not executed).
#
#   tg_repo_root                      the repository root
#   tg_build_wasm                     builds the filter, prints the .wasm path
#   tg_build_sidecar                  builds tenant-guard-sidecar (release), prints its path
#   tg_free_port                      prints a free TCP port on 127.0.0.1
#   tg_envoy_bin                      prints the Envoy binary path (install-envoy.sh)
#   tg_render_static OUT CONFIG_JSON ADMIN LISTENER UPSTREAM WASM
#   tg_render_ecds_bootstrap OUT ECDS_DIR ADMIN LISTENER UPSTREAM
#   tg_write_ecds_resource ECDS_DIR CONFIG_JSON WASM VERSION
#                                     writes <dir>/tenant-guard.ecds.json atomically
#                                     (same shape as tenant_guard_sidecar::envoy::render_ecds_resource)
#   tg_wait_http URL SECONDS          polls until URL answers 200
#   tg_wait_for SECONDS DESC CMD...   polls CMD (quietly) until it succeeds

TG_ENVOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TG_REPO_ROOT="$(cd "$TG_ENVOY_DIR/.." && pwd)"
TG_WASM_REL="target/wasm32-wasip1/release/tenant_guard_filter.wasm"

tg_repo_root() { echo "$TG_REPO_ROOT"; }

tg_build_wasm() {
  (cd "$TG_REPO_ROOT" && cargo build --quiet --release --target wasm32-wasip1 -p tenant-guard-filter) >&2
  local target_dir="${CARGO_TARGET_DIR:-$TG_REPO_ROOT/target}"
  echo "$target_dir/wasm32-wasip1/release/tenant_guard_filter.wasm"
}

tg_build_sidecar() {
  (cd "$TG_REPO_ROOT" && cargo build --quiet --release -p tenant-guard-sidecar) >&2
  local target_dir="${CARGO_TARGET_DIR:-$TG_REPO_ROOT/target}"
  echo "$target_dir/release/tenant-guard-sidecar"
}

tg_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

tg_envoy_bin() { "$TG_ENVOY_DIR/install-envoy.sh"; }

# tg_render TEMPLATE OUT KEY=VALUE... (plain string substitution of __KEY__)
tg_render() {
  python3 - "$@" <<'PY'
import sys
template, out, *pairs = sys.argv[1:]
text = open(template).read()
for pair in pairs:
    key, value = pair.split("=", 1)
    text = text.replace("__%s__" % key, value)
import re
for line in text.splitlines():
    if not line.lstrip().startswith("#") and re.search(r"__[A-Z_]+__", line):
        sys.exit("tg_render: unreplaced placeholder in %s: %s" % (out, line.strip()))
open(out, "w").write(text)
PY
}

tg_json_string_literal() {
  python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1"
}

tg_render_static() {
  local out="$1" config="$2" admin="$3" listener="$4" upstream="$5" wasm="$6"
  tg_render "$TG_ENVOY_DIR/static.yaml" "$out" \
    "ADMIN_PORT=$admin" "LISTENER_PORT=$listener" "UPSTREAM_PORT=$upstream" \
    "WASM_PATH=$wasm" "PLUGIN_CONFIG_JSON=$(tg_json_string_literal "$config")"
}

tg_render_ecds_bootstrap() {
  local out="$1" ecds_dir="$2" admin="$3" listener="$4" upstream="$5"
  tg_render "$TG_ENVOY_DIR/ecds.yaml" "$out" \
    "ADMIN_PORT=$admin" "LISTENER_PORT=$listener" "UPSTREAM_PORT=$upstream" "ECDS_DIR=$ecds_dir"
}

tg_write_ecds_resource() {
  local dir="$1" config="$2" wasm="$3" version="$4"
  python3 - "$dir" "$config" "$wasm" "$version" <<'PY'
import json, os, sys
d, config, wasm, version = sys.argv[1:]
name = "tenant-guard"
doc = {
    "version_info": version,
    "resources": [{
        "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": name,
                "vm_config": {
                    "vm_id": name,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm}},
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": config,
                },
                "failure_policy": "FAIL_RELOAD",
            },
        },
    }],
}
target = os.path.join(d, "tenant-guard.ecds.json")
tmp = os.path.join(d, ".tenant-guard.ecds.json.tmp-%d" % os.getpid())
with open(tmp, "w") as f:
    f.write(json.dumps(doc, indent=2))
    f.flush()
    os.fsync(f.fileno())
os.rename(tmp, target)  # Envoy reacts only to a rename into the watched directory
PY
}

# tg_wait_http URL SECONDS: polls until URL answers 200.
tg_wait_http() {
  local url="$1" deadline=$((SECONDS + ${2:-30}))
  until curl -fsS -o /dev/null "$url" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      echo "timed out waiting for $url" >&2
      return 1
    fi
    sleep 0.1
  done
}

# tg_wait_for SECONDS DESCRIPTION CMD...: polls CMD (output discarded) every
# 50 ms until it succeeds; returns 1 with a message after SECONDS.
tg_wait_for() {
  local seconds="$1" what="$2"
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "timed out after ${seconds}s waiting for $what" >&2
      return 1
    fi
    sleep 0.05
  done
}
