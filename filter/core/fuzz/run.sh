#!/usr/bin/env bash
# Runs every fuzz target of tenant-guard-core for SECONDS each (default 30),
# with libFuzzer's RSS and malloc limits so unbounded allocation fails the run.
#   bash filter/core/fuzz/run.sh            # CI smoke: 30 s per target
#   bash filter/core/fuzz/run.sh 3600       # long run: an hour per target
# Needs a nightly toolchain and cargo-fuzz (installed here when missing).
set -euo pipefail
SECONDS_PER_TARGET="${1:-30}"
cd "$(dirname "${BASH_SOURCE[0]}")"
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --quiet cargo-fuzz
for target in $(cargo +nightly fuzz list); do
  echo "==> fuzz $target for ${SECONDS_PER_TARGET}s"
  mkdir -p "corpus/$target" artifacts
  log="artifacts/$target.log"
  if cargo +nightly fuzz run "$target" "corpus/$target" -- \
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
