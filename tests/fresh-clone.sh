#!/usr/bin/env bash
# Proves the README's demo command works the first time on a fresh machine:
#
#   1. clones this repository into a scratch directory (no target/, no .tools/);
#   2. builds a throwaway RUSTUP_HOME whose only toolchain is the one
#      rust-toolchain.toml pins, with its wasm targets and its clippy/rustfmt
#      components removed (a hard-linked copy of the installed toolchain, so it
#      costs seconds and no disk; the removed components' files are unlinked
#      in the copy only);
#   3. runs `bash envoy/demo.sh` in the clone with that RUSTUP_HOME and none of
#      the shortcuts (no ENVOY_BIN, WASM_PATH, SIDECAR_BIN, CARGO_TARGET_DIR);
#   4. asserts the demo ended with "all N checks passed" for every check in
#      envoy/demo.sh (none skipped), that the targets and
#      components are now installed in the throwaway RUSTUP_HOME, and that the
#      clone installed Envoy 1.40.0 into its own .tools/venv.
#
# Shared with the machine: CARGO_HOME (the crates registry cache) and the
# PostgreSQL on 127.0.0.1:5432 (or $DATABASE_URL), in a schema of its own.
# Env: FRESH_CLONE_SOURCE=worktree  copy the working tree (tracked and untracked,
#        not ignored files) instead of cloning HEAD, to try uncommitted changes;
#      KEEP_FRESH_CLONE=1  keep the scratch directory.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/envoy/lib.sh"

SCRATCH="$(mktemp -d -t tenant-guard-fresh.XXXXXX)"
CLONE="$SCRATCH/tenant-guard"
FRESH_RUSTUP_HOME="$SCRATCH/rustup"
finish() {
  local rc=$?
  tg_step_report "$rc"
  if [[ -n "${KEEP_FRESH_CLONE:-}" ]]; then
    echo "fresh-clone: kept $SCRATCH" >&2
  else
    rm -rf "$SCRATCH"
  fi
}
trap finish EXIT
fail() {
  printf '%s\n' "$(tg_paint 2 31 "fresh-clone: $*")" >&2
  exit 1
}
T0=$SECONDS

tg_step "copy of the repository into $CLONE" "git must be able to clone $ROOT"
if [[ "${FRESH_CLONE_SOURCE:-clone}" == worktree ]]; then
  mkdir -p "$CLONE"
  (cd "$ROOT" && git ls-files -z -co --exclude-standard |
    tar --null --ignore-failed-read -T - -cf -) | tar -xf - -C "$CLONE"
  tg_note "working tree copied (tracked and untracked files, ignored ones left out)"
else
  git clone --quiet "$ROOT" "$CLONE"
  tg_note "cloned $(git -C "$CLONE" rev-parse --short HEAD)"
  if [[ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no)" ]]; then
    tg_note "note: $ROOT has uncommitted changes; they are not in the clone (FRESH_CLONE_SOURCE=worktree tries them)"
  fi
fi
[[ ! -e "$CLONE/target" && ! -e "$CLONE/.tools" ]] || fail "the copy already has target/ or .tools/"

tg_step "throwaway RUSTUP_HOME without the wasm targets" \
  "the pinned toolchain must be installed here (rustup toolchain list) to be copied"
CHANNEL="$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$ROOT/rust-toolchain.toml")"
tg_ensure_rust
HOST="$(rustc -vV | sed -n 's/^host: //p')"
SRC="$(cd "$(rustup run "$CHANNEL" rustc --print sysroot)" && pwd -P)"
DEST="$FRESH_RUSTUP_HOME/toolchains/$CHANNEL-$HOST"
mkdir -p "$DEST"
# Hard links where possible (same file system); a real copy otherwise.
COPY="hard-linked, no extra disk"
if ! cp -al "$SRC/." "$DEST/" 2>/dev/null; then
  rm -rf "$DEST" && mkdir -p "$DEST" && cp -a "$SRC/." "$DEST/"
  COPY="copied: $(du -sh "$DEST" | cut -f1)"
fi
printf 'version = "12"\nprofile = "minimal"\nauto_self_update = "disable"\n' >"$FRESH_RUSTUP_HOME/settings.toml"
read -ra TARGETS <<<"$(tg_toolchain_list targets)"
read -ra COMPONENTS <<<"$(tg_toolchain_list components)"
python3 - "$DEST" "$HOST" "${TARGETS[@]/#/rust-std-}" "${COMPONENTS[@]/%/-preview-$HOST}" <<'PY'
# Uninstalls components from the copied toolchain the way rustup records them:
# files listed in lib/rustlib/manifest-<component>, a line in
# lib/rustlib/components and a [[components]] entry in multirust-config.toml.
# rustup rewrites those metadata files in place, so they are un-hard-linked first.
import os, re, shutil, sys
dest, host, *drop = sys.argv[1:]
rustlib = os.path.join(dest, "lib", "rustlib")
for name in os.listdir(rustlib):
    path = os.path.join(rustlib, name)
    if os.path.isfile(path):
        data = open(path, "rb").read()
        os.unlink(path)
        open(path, "wb").write(data)
for component in drop:
    manifest = os.path.join(rustlib, "manifest-" + component)
    if not os.path.exists(manifest):
        sys.exit("fresh-clone: %s is not installed in the pinned toolchain" % component)
    for line in open(manifest).read().splitlines():
        kind, _, rel = line.partition(":")
        target = os.path.join(dest, rel)
        if kind == "dir":
            shutil.rmtree(target, ignore_errors=True)
        elif os.path.lexists(target):
            os.unlink(target)
    os.unlink(manifest)
components = os.path.join(rustlib, "components")
kept = [c for c in open(components).read().split() if c not in drop]
open(components, "w").write("".join(c + "\n" for c in kept))
config = os.path.join(rustlib, "multirust-config.toml")
blocks = open(config).read().split("[[components]]")
out = [blocks[0]]
for block in blocks[1:]:
    pkg = re.search(r'pkg = "([^"]*)"', block).group(1)
    target = re.search(r'target = "([^"]*)"', block).group(1)
    if "%s-%s" % (pkg, target) not in drop:
        out.append(block)
open(config, "w").write("[[components]]".join(out))
PY
fresh_rustup() { RUSTUP_HOME="$FRESH_RUSTUP_HOME" rustup "$@"; }
BEFORE="$(fresh_rustup target list --installed --toolchain "$CHANNEL")"
for t in "${TARGETS[@]}"; do
  if grep -qx "$t" <<<"$BEFORE"; then fail "the throwaway toolchain still has $t"; fi
done
tg_note "RUSTUP_HOME=$FRESH_RUSTUP_HOME: only $CHANNEL-$HOST ($COPY), targets: $(echo "$BEFORE" | tr '\n' ' ')"

tg_step "bash envoy/demo.sh in the copy (first run, nothing built or installed)" \
  "the demo's own report above names its failed step; the demo log is $SCRATCH/demo.log (KEEP_FRESH_CLONE=1)"
T_DEMO=$SECONDS
set +e
(
  cd "$CLONE"
  env -u ENVOY_BIN -u WASM_PATH -u SIDECAR_BIN -u CARGO_TARGET_DIR -u RUSTUP_TOOLCHAIN -u CARGO_BUILD_TARGET_DIR \
    RUSTUP_HOME="$FRESH_RUSTUP_HOME" TG_DEMO_SCHEMA=tenant_guard_fresh_clone \
    bash envoy/demo.sh
) >"$SCRATCH/demo.log" 2>&1
DEMO_RC=$?
set -e
DEMO_SECONDS=$((SECONDS - T_DEMO))
tail -n 25 "$SCRATCH/demo.log" | sed 's/^/   | /' >&2
((DEMO_RC == 0)) || fail "bash envoy/demo.sh exited with $DEMO_RC after ${DEMO_SECONDS}s"
# Every check the demo has must have run: a scenario skipped silently would
# lower the count.
EXPECTED_CHECKS="$(grep -c '^ *check "' "$CLONE/envoy/demo.sh")"
grep -Eq "^Done: all $EXPECTED_CHECKS checks passed" "$SCRATCH/demo.log" ||
  fail "the demo did not print 'all $EXPECTED_CHECKS checks passed' ($(grep -Eo 'all [0-9]+ checks passed' "$SCRATCH/demo.log" || echo 'no summary'))"

tg_step "what the demo installed" "compare with the demo log above"
AFTER="$(fresh_rustup target list --installed --toolchain "$CHANNEL")"
for t in "${TARGETS[@]}"; do
  grep -qx "$t" <<<"$AFTER" || fail "the demo did not install the target $t"
done
AFTER_COMPONENTS="$(fresh_rustup component list --installed --toolchain "$CHANNEL")"
for c in "${COMPONENTS[@]}"; do
  grep -qE "^$c(-preview)?-" <<<"$AFTER_COMPONENTS" || fail "the demo did not install the component $c"
done
"$CLONE/.tools/venv/bin/envoy" --version | grep -q '/1\.40\.0/' || fail "the clone has no Envoy 1.40.0 in .tools/venv"
TG_STEP=""
printf '%s\n' "$(tg_paint 2 32 "fresh-clone: $(grep -Eo 'all [0-9]+ checks passed' "$SCRATCH/demo.log") from a fresh copy; demo ${DEMO_SECONDS}s, total $((SECONDS - T0))s; installed targets ${TARGETS[*]}, components ${COMPONENTS[*]}, Envoy 1.40.0")" >&2
