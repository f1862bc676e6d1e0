#!/usr/bin/env bash
# Runs every fuzz target of tenant-guard-core for SECONDS each (default 30),
# with libFuzzer's RSS and malloc limits so unbounded allocation fails the run.
#   bash filter/core/fuzz/run.sh            # CI smoke: 30 s per target
#   bash filter/core/fuzz/run.sh 3600       # long run: an hour per target
# Needs a nightly toolchain and cargo-fuzz; the pinned ones are installed here
# when missing (nothing is installed when they are present).
set -euo pipefail
SECONDS_PER_TARGET="${1:-30}"
# Pinned: a nightly that builds these targets with cargo-fuzz's sanitizer flags.
NIGHTLY="${FUZZ_TOOLCHAIN:-nightly-2026-05-20}"
CARGO_FUZZ_VERSION="0.13.2"
cd "$(dirname "${BASH_SOURCE[0]}")"
if ! rustup toolchain list | grep -q "^$NIGHTLY-"; then
  echo "fuzz: installing Rust $NIGHTLY (profile minimal)" >&2
  rustup toolchain install "$NIGHTLY" --profile minimal >&2
fi
if ! cargo fuzz --version 2>/dev/null | grep -qw -- "$CARGO_FUZZ_VERSION"; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
  cargo install --quiet --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION" >&2
fi
for target in $(cargo "+$NIGHTLY" fuzz list); do
  echo "==> fuzz $target for ${SECONDS_PER_TARGET}s"
  mkdir -p "corpus/$target" artifacts
  log="artifacts/$target.log"
  if cargo "+$NIGHTLY" fuzz run "$target" "corpus/$target" -- \
    -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=1024 -malloc_limit_mb=256 \
    -max_len=16384 -print_final_stats=1 >"$log" 2>&1; then
    grep -E '^(Done|stat::)' "$log"
  else
    tail -n 80 "$log"
    echo "fuzz: $target FAILED (crash input under filter/core/fuzz/artifacts/$target/)"
    exit 1
  fi
done
echo "fuzz: all targets ran ${SECONDS_PER_TARGET}s without a crash"
