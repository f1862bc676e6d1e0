#!/usr/bin/env bash
# Checks the OCI image envoy/oci-image.sh builds, with third-party tools only:
#   1. two builds of the same .wasm give byte-identical layouts (same digest);
#   2. skopeo reads the layout: one application/vnd.oci.image.layer.v1.tar+gzip
#      layer, the module.wasm.image/variant=compat annotation;
#   3. umoci unpacks it, and `skopeo copy` to a dir: gives the layer blob:
#      both hold exactly one file, plugin.wasm, byte-identical to the build;
#   4. a push to a local docker-registry (on 127.0.0.1, a free port) keeps the
#      image digest oci-image.sh printed (what WasmPlugin/EnvoyExtensionPolicy
#      `sha256` is compared with), and the image pulled back unpacks to the
#      same plugin.wasm.
# Exits non-zero on the first failure.
#
# Env: WASM_PATH (default: build the filter). Installs skopeo and umoci from
# Debian when missing; docker-registry is extracted from its Debian package
# into target/tools/ (installing it would start a registry service on :5000).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

fail() {
  echo "check-oci-image: FAIL: $*" >&2
  exit 1
}
ok() { echo "   ✓ $*" >&2; }

tg_ensure_command skopeo skopeo
tg_ensure_command umoci umoci

# deb_binary PACKAGE BINARY: prints the path of BINARY from PACKAGE, extracted
# (not installed) into target/tools/PACKAGE-deb.
deb_binary() {
  local dir download sudo=()
  dir="$(tg_target_dir)/tools/$1-deb"
  if [[ ! -x "$dir/usr/bin/$2" ]]; then
    download="$(mktemp -d)"
    chmod 0777 "$download" # apt-get download writes it as the unprivileged _apt user
    [[ "$(id -u)" -eq 0 ]] || sudo=(sudo)
    (cd "$download" && apt-get download -qq "$1" >&2) || {
      "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
      (cd "$download" && apt-get download -qq "$1" >&2)
    }
    mkdir -p "$dir"
    dpkg-deb -x "$download/$1"_*.deb "$dir"
    rm -rf "$download"
  fi
  echo "$dir/usr/bin/$2"
}

WASM="${WASM_PATH:-}"
[[ -n "$WASM" ]] || WASM="$(tg_build_wasm)"
WORK="$(mktemp -d)"
REGISTRY_PID=""
cleanup() {
  [[ -z "$REGISTRY_PID" ]] || kill "$REGISTRY_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# kv FILE KEY: a value of oci-image.sh's key=value output.
kv() { sed -n "s/^$2=//p" "$1"; }

tg_step "build the image twice"
TAG="check"
bash "$TG_ENVOY_DIR/oci-image.sh" --wasm "$WASM" --out "$WORK/a" --tag "$TAG" >"$WORK/a.out" 2>/dev/null
bash "$TG_ENVOY_DIR/oci-image.sh" --wasm "$WASM" --out "$WORK/b" --tag "$TAG" >"$WORK/b.out" 2>/dev/null
DIGEST="$(kv "$WORK/a.out" image_digest)"
WASM_SHA="$(kv "$WORK/a.out" wasm_sha256)"
[[ "$DIGEST" =~ ^sha256:[0-9a-f]{64}$ ]] || fail "no image digest printed: $(cat "$WORK/a.out")"
[[ "$WASM_SHA" == "$(sha256sum "$WASM" | cut -d' ' -f1)" ]] || fail "printed wasm_sha256 is not the .wasm's sha256"
[[ "$(kv "$WORK/b.out" image_digest)" == "$DIGEST" ]] || fail "two builds gave different digests"
diff -r "$WORK/a" "$WORK/b" >/dev/null || fail "two builds gave different layouts"
ok "reproducible: $DIGEST"

tg_step "skopeo inspect: the compat variant"
IMAGE="oci:$WORK/a:$TAG"
skopeo inspect --raw "$IMAGE" >"$WORK/manifest.json"
[[ "sha256:$(sha256sum "$WORK/manifest.json" | cut -d' ' -f1)" == "$DIGEST" ]] ||
  fail "skopeo's manifest does not hash to the printed digest"
[[ "$(skopeo inspect --format '{{.Digest}}' "$IMAGE")" == "$DIGEST" ]] || fail "skopeo reports another digest"
python3 - "$WORK/manifest.json" <<'PY' || fail "the manifest is not the Wasm compat variant"
import json, sys
m = json.load(open(sys.argv[1]))
assert m["schemaVersion"] == 2, m
assert m["mediaType"] == "application/vnd.oci.image.manifest.v1+json", m
assert m["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json", m
assert len(m["layers"]) == 1, m["layers"]
assert m["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip", m["layers"]
assert m["annotations"]["module.wasm.image/variant"] == "compat", m["annotations"]
PY
ok "one tar+gzip layer, annotation module.wasm.image/variant=compat"

# only_plugin_wasm DIR WHAT: DIR holds exactly plugin.wasm, equal to the build.
only_plugin_wasm() {
  local files
  files="$(cd "$1" && find . -mindepth 1 -printf '%P\n' | sort | tr '\n' ' ')"
  [[ "$files" == "plugin.wasm " ]] || fail "$2 holds [$files], expected exactly plugin.wasm"
  cmp -s "$1/plugin.wasm" "$WASM" || fail "$2: plugin.wasm differs from the build"
  ok "$2: exactly plugin.wasm, byte-identical to the build"
}

tg_step "umoci unpack"
umoci unpack --rootless --image "$WORK/a:$TAG" "$WORK/bundle" >/dev/null
only_plugin_wasm "$WORK/bundle/rootfs" "umoci unpack"

tg_step "skopeo copy to dir: and extract the layer as Istio does (tar.gz, plugin.wasm)"
skopeo copy --quiet "$IMAGE" "dir:$WORK/copied"
LAYER="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["layers"][0]["digest"].split(":")[1])' "$WORK/manifest.json")"
mkdir "$WORK/layer"
tar -xzf "$WORK/copied/$LAYER" -C "$WORK/layer"
only_plugin_wasm "$WORK/layer" "the layer blob"

tg_step "push to a local docker-registry and pull it back"
REGISTRY_BIN="$(deb_binary docker-registry docker-registry)"
PORT="$(tg_free_port)"
cat >"$WORK/registry.yml" <<EOF
version: 0.1
log: { level: warn }
storage: { filesystem: { rootdirectory: $WORK/registry-data } }
http: { addr: 127.0.0.1:$PORT }
EOF
"$REGISTRY_BIN" serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
REGISTRY_PID=$!
tg_wait_http "http://127.0.0.1:$PORT/v2/" 20 || { cat "$WORK/registry.log" >&2; fail "docker-registry did not start"; }
REMOTE="docker://127.0.0.1:$PORT/tenant-guard-filter:$TAG"
skopeo copy --quiet --dest-tls-verify=false "$IMAGE" "$REMOTE"
[[ "$(skopeo inspect --tls-verify=false --format '{{.Digest}}' "$REMOTE")" == "$DIGEST" ]] ||
  fail "the registry serves another digest than oci-image.sh printed"
ok "the registry serves $DIGEST"
skopeo copy --quiet --src-tls-verify=false "$REMOTE" "oci:$WORK/pulled:$TAG"
umoci unpack --rootless --image "$WORK/pulled:$TAG" "$WORK/pulled-bundle" >/dev/null
only_plugin_wasm "$WORK/pulled-bundle/rootfs" "the pulled image"

echo "check-oci-image: all checks passed ($DIGEST, plugin.wasm sha256 $WASM_SHA)" >&2
