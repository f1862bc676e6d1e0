# Shared helpers for the envoy/*.sh and tests/*.sh scripts (sourced, not executed).
#
#   tg_repo_root                      the repository root
#   tg_paint FD SGR TEXT...           TEXT in colour when FD is a terminal and NO_COLOR is unset
#   tg_step TITLE [HINT]              announces a step; tg_step_report RC (from an EXIT trap)
#                                     names the step that failed and prints HINT
#   tg_ensure_rust                    installs what rust-toolchain.toml pins and is missing
#                                     (toolchain, targets, components); nothing else
#   tg_ensure_command CMD DEBIAN_PKG  apt-get installs DEBIAN_PKG when CMD is missing
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

# ---------------------------------------------------------------- output
# Colour only on a terminal, never with NO_COLOR set to anything (no-color.org).
tg_color() { [[ -z "${NO_COLOR:-}" && "${TERM:-}" != dumb && -t "$1" ]]; }

# tg_paint FD SGR TEXT...: prints TEXT (no newline), wrapped in the SGR code
# (1 bold, 31 red, 32 green, 36 cyan) when FD is a terminal.
tg_paint() {
  local fd="$1" sgr="$2"
  shift 2
  if tg_color "$fd"; then printf '\033[%sm%s\033[0m' "$sgr" "$*"; else printf '%s' "$*"; fi
}

tg_note() { echo "   $*" >&2; }

# tg_step TITLE [HINT]: the scripts run under `set -e`, so the first failing
# command ends the script; the step remembered here lets the EXIT trap say
# which step it was and what to try (tg_step_report).
TG_STEP=""
TG_STEP_HINT=""
tg_step() {
  TG_STEP="$1"
  TG_STEP_HINT="${2:-}"
  printf '\n%s\n' "$(tg_paint 2 1 "==> $1")" >&2
}

# tg_step_report RC: call first thing in an EXIT trap with the exit status.
tg_step_report() {
  local rc="$1"
  if ((rc == 0)) || [[ -z "$TG_STEP" ]]; then return 0; fi
  printf '\n%s\n' "$(tg_paint 2 31 "✗ step failed: $TG_STEP (exit status $rc; its error is above)")" >&2
  if [[ -n "$TG_STEP_HINT" ]]; then printf '  hint: %s\n' "$TG_STEP_HINT" >&2; fi
}

# ---------------------------------------------------------------- installing
# tg_toolchain_list KEY: the items of `KEY = ["a", "b"]` in rust-toolchain.toml.
tg_toolchain_list() {
  sed -n "s/^$1 *= *\[\(.*\)\]/\1/p" "$TG_REPO_ROOT/rust-toolchain.toml" | tr -d '" ' | tr ',' ' '
}

# Installs only what rust-toolchain.toml asks for and is missing: never
# `rustup toolchain install` on an existing toolchain, which replaces every
# component (rustc included) under any build running at the time.
TG_RUST_READY=0
tg_ensure_rust() {
  ((TG_RUST_READY)) && return 0
  if ! command -v rustup >/dev/null 2>&1; then
    echo "rustup not found: install it from https://rustup.rs (the toolchain itself is installed here)" >&2
    return 1
  fi
  local channel targets components have t c missing=()
  channel="$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$TG_REPO_ROOT/rust-toolchain.toml")"
  read -ra targets <<<"$(tg_toolchain_list targets)"
  read -ra components <<<"$(tg_toolchain_list components)"
  [[ -n "$channel" ]] || { echo "no channel in rust-toolchain.toml" >&2; return 1; }
  if ! rustup toolchain list | grep -q "^$channel-"; then
    tg_note "installing Rust $channel (profile minimal, components ${components[*]}, targets ${targets[*]})"
    local args=()
    for c in "${components[@]}"; do args+=(--component "$c"); done
    for t in "${targets[@]}"; do args+=(--target "$t"); done
    rustup toolchain install "$channel" --profile minimal "${args[@]}" >&2 || return 1
  fi
  have="$(rustup target list --installed --toolchain "$channel")" || return 1
  for t in "${targets[@]}"; do grep -qx "$t" <<<"$have" || missing+=("$t"); done
  if ((${#missing[@]})); then
    tg_note "adding Rust $channel targets: ${missing[*]}"
    rustup target add --toolchain "$channel" "${missing[@]}" >&2 || return 1
  fi
  missing=()
  have="$(rustup component list --installed --toolchain "$channel")" || return 1
  for c in "${components[@]}"; do grep -qE "^$c(-preview)?(-|$)" <<<"$have" || missing+=("$c"); done
  if ((${#missing[@]})); then
    tg_note "adding Rust $channel components: ${missing[*]}"
    rustup component add --toolchain "$channel" "${missing[@]}" >&2 || return 1
  fi
  TG_RUST_READY=1
}

# tg_ensure_command CMD DEBIAN_PACKAGE: installs the package only when CMD is missing.
tg_ensure_command() {
  command -v "$1" >/dev/null 2>&1 && return 0
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "$1 not found (and no apt-get to install $2): install it" >&2
    return 1
  fi
  local sudo=()
  [[ "$(id -u)" -eq 0 ]] || sudo=(sudo)
  tg_note "$1 not found: installing Debian package $2"
  # Waits for another apt/dpkg run (an unattended upgrade, a second setup)
  # instead of failing on its lock.
  local wait_for_lock=(-o DPkg::Lock::Timeout=600)
  {
    "${sudo[@]}" apt-get "${wait_for_lock[@]}" update -qq &&
      DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get "${wait_for_lock[@]}" install -y -qq "$2"
  } >&2 || return 1
}

# ---------------------------------------------------------------- building
tg_target_dir() {
  local dir="${CARGO_TARGET_DIR:-$TG_REPO_ROOT/target}"
  [[ "$dir" == /* ]] || dir="$TG_REPO_ROOT/$dir"
  echo "$dir"
}

# Each build returns non-zero when cargo fails, so `X="$(tg_build_wasm)"`
# stops a `set -e` script (command substitution does not inherit -e).
tg_build_wasm() {
  tg_ensure_rust || return 1
  (cd "$TG_REPO_ROOT" && cargo build --quiet --release --target wasm32-wasip1 -p tenant-guard-filter) >&2 ||
    return 1
  local wasm
  wasm="$(tg_target_dir)/wasm32-wasip1/release/tenant_guard_filter.wasm"
  [[ -s "$wasm" ]] || { echo "cargo built nothing at $wasm" >&2; return 1; }
  echo "$wasm"
}

tg_build_sidecar() {
  tg_ensure_rust || return 1
  (cd "$TG_REPO_ROOT" && cargo build --quiet --release -p tenant-guard-sidecar) >&2 || return 1
  local bin
  bin="$(tg_target_dir)/release/tenant-guard-sidecar"
  [[ -x "$bin" ]] || { echo "cargo built nothing at $bin" >&2; return 1; }
  echo "$bin"
}

tg_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

tg_envoy_bin() { bash "$TG_ENVOY_DIR/install-envoy.sh"; }

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
    "STORE_PORT=${TG_STORE_PORT:-9912}" \
    "WASM_PATH=$wasm" "PLUGIN_CONFIG_JSON=$(tg_json_string_literal "$config")"
}

tg_render_ecds_bootstrap() {
  local out="$1" ecds_dir="$2" admin="$3" listener="$4" upstream="$5"
  tg_render "$TG_ENVOY_DIR/ecds.yaml" "$out" \
    "ADMIN_PORT=$admin" "LISTENER_PORT=$listener" "UPSTREAM_PORT=$upstream" \
    "STORE_PORT=${TG_STORE_PORT:-9912}" "ECDS_DIR=$ecds_dir"
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
                # As the sidecar renders it: Envoy holds the headers for the
                # filter only when the document says so too.
                "allow_on_headers_stop_iteration": bool(
                    json.loads(config).get("host", {}).get("allow_on_headers_stop_iteration", False)),
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
