#!/usr/bin/env bash
# Builds the filter as an OCI image in the Wasm "compat" variant that Istio
# (WasmPlugin) and Envoy Gateway (EnvoyExtensionPolicy) pull: one
# application/vnd.oci.image.layer.v1.tar+gzip layer holding `plugin.wasm`, and
# the manifest annotation module.wasm.image/variant=compat. Written as an OCI
# image layout directory; push it with skopeo (printed at the end).
#
#   bash envoy/oci-image.sh [--wasm FILE] [--out DIR] [--tag TAG]
#
#   --wasm FILE  package this .wasm (default: build tenant-guard-filter, release, wasm32-wasip1)
#   --out DIR    the OCI layout directory (default: target/oci/tenant-guard-filter; replaced)
#   --tag TAG    the tag in index.json (default: the crate version)
#
# Reproducible: the tar entry has fixed mtime/owner/mode, gzip stores no name or
# time, and the JSON is written byte for byte, so the same .wasm always gives
# the same image digest. Prints (stdout, one `key=value` a line):
#   image=DIR:TAG
#   image_digest=sha256:...   the manifest digest: what `sha256:` means for an
#                             oci:// URL in Istio's WasmPlugin and Envoy
#                             Gateway's code.image (and what @sha256: pins)
#   wasm_sha256=...           sha256 of plugin.wasm: `sha256:` for http(s)://
#                             and file:// URLs, and the sidecar's content address
# Needs: bash, GNU tar, gzip, sha256sum.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WASM=""
OUT=""
TAG=""
while (($#)); do
  case "$1" in
    --wasm) WASM="${2:?--wasm FILE}"; shift 2 ;;
    --out) OUT="${2:?--out DIR}"; shift 2 ;;
    --tag) TAG="${2:?--tag TAG}"; shift 2 ;;
    -h | --help) sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "oci-image: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [[ -z "$WASM" ]]; then
  WASM="$(tg_build_wasm)"
fi
[[ -s "$WASM" ]] || { echo "oci-image: no .wasm at $WASM" >&2; exit 1; }
if [[ "$(head -c 4 "$WASM" | od -An -tx1 | tr -d ' \n')" != "0061736d" ]]; then
  echo "oci-image: $WASM is not a WebAssembly module (no \\0asm header)" >&2
  exit 1
fi
VERSION="$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$TG_REPO_ROOT/Cargo.toml" | head -1)"
TAG="${TAG:-$VERSION}"
# The OCI reference grammar for a tag.
[[ "$TAG" =~ ^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$ ]] || { echo "oci-image: invalid tag: $TAG" >&2; exit 2; }
OUT="${OUT:-$(tg_target_dir)/oci/tenant-guard-filter}"

sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/root" "$WORK/layout/blobs/sha256"
cp "$WASM" "$WORK/root/plugin.wasm"

# The layer: one regular file, plugin.wasm, in a ustar archive with nothing
# that varies between builds.
tar --create --format=ustar --directory="$WORK/root" \
  --owner=0 --group=0 --numeric-owner --mode=0444 --mtime=@0 \
  --file="$WORK/layer.tar" plugin.wasm
gzip -9 --no-name --stdout "$WORK/layer.tar" >"$WORK/layer.tar.gz"
DIFF_ID="sha256:$(sha "$WORK/layer.tar")"
LAYER_DIGEST="$(sha "$WORK/layer.tar.gz")"
LAYER_SIZE="$(size "$WORK/layer.tar.gz")"
WASM_SHA="$(sha "$WORK/root/plugin.wasm")"

# blob FILE: moves FILE into blobs/sha256/<digest>, prints the digest.
blob() {
  local digest
  digest="$(sha "$1")"
  mv "$1" "$WORK/layout/blobs/sha256/$digest"
  echo "$digest"
}

# The image config: required by the image spec, unused by the Wasm runtimes.
# "architecture":"wasm" says what the layer holds; "os" stays "linux" because
# generic tools (umoci unpack) refuse an os they do not know, such as wasip1.
printf '%s' \
  '{"architecture":"wasm","os":"linux",' \
  '"config":{"Labels":{"org.opencontainers.image.title":"tenant-guard-filter",' \
  '"org.opencontainers.image.version":"'"$VERSION"'"}},' \
  '"rootfs":{"type":"layers","diff_ids":["'"$DIFF_ID"'"]}}' >"$WORK/config.json"
CONFIG_SIZE="$(size "$WORK/config.json")"
CONFIG_DIGEST="$(blob "$WORK/config.json")"
LAYER_DIGEST_CHECK="$(blob "$WORK/layer.tar.gz")"
[[ "$LAYER_DIGEST_CHECK" == "$LAYER_DIGEST" ]]

printf '%s' \
  '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",' \
  '"config":{"mediaType":"application/vnd.oci.image.config.v1+json",' \
  '"digest":"sha256:'"$CONFIG_DIGEST"'","size":'"$CONFIG_SIZE"'},' \
  '"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip",' \
  '"digest":"sha256:'"$LAYER_DIGEST"'","size":'"$LAYER_SIZE"',' \
  '"annotations":{"org.opencontainers.image.title":"plugin.wasm"}}],' \
  '"annotations":{"module.wasm.image/variant":"compat",' \
  '"org.opencontainers.image.title":"tenant-guard-filter",' \
  '"org.opencontainers.image.version":"'"$VERSION"'"}}' >"$WORK/manifest.json"
MANIFEST_SIZE="$(size "$WORK/manifest.json")"
MANIFEST_DIGEST="$(blob "$WORK/manifest.json")"

printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$WORK/layout/oci-layout"
printf '%s' \
  '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",' \
  '"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json",' \
  '"digest":"sha256:'"$MANIFEST_DIGEST"'","size":'"$MANIFEST_SIZE"',' \
  '"annotations":{"org.opencontainers.image.ref.name":"'"$TAG"'"}}]}' >"$WORK/layout/index.json"

# Replace the output directory as a whole (never a mix of two builds).
mkdir -p "$(dirname "$OUT")"
rm -rf "$OUT.tmp"
mv "$WORK/layout" "$OUT.tmp"
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"

cat <<EOF
image=$OUT:$TAG
image_digest=sha256:$MANIFEST_DIGEST
wasm_sha256=$WASM_SHA
EOF
cat >&2 <<EOF
OCI image (Wasm compat variant) written to $OUT, tag $TAG
  plugin.wasm      $(size "$WASM") bytes, sha256 $WASM_SHA
  image digest     sha256:$MANIFEST_DIGEST
Push:    skopeo copy oci:$OUT:$TAG docker://REGISTRY/tenant-guard-filter:$TAG
Use:     url: oci://REGISTRY/tenant-guard-filter:$TAG  with  sha256: $MANIFEST_DIGEST
         (Istio WasmPlugin .spec.sha256, Envoy Gateway .wasm[].code.image.sha256: the image digest)
EOF
