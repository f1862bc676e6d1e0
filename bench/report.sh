#!/usr/bin/env bash
# One command for the cost figures of BENCHMARKS.md §10, in one run on one
# machine: instr-bench (CPU, latency and storm exactness natively;
# instructions per request under callgrind; memory per worker; the peers when
# their binaries are given), store-bench (the store sidecar's release build
# against its speed-tuned `sidecar` profile) and fleet-report (3 replicas:
# Redis round trips per 100 requests, admitted ÷ allowed for a rate and a
# monthly quota).
#
#   bash bench/report.sh [--limitador PATH] [--wasm-shim PATH] > report.md
#
# Needs valgrind, wrk, redis-server and redis-cli (Debian packages); Envoy
# and PostgreSQL come from tests/setup.sh when ENVOY_BIN is not set. The
# peers are built by the user from their own sources (BENCHMARKS.md §11).
# Takes about 25 minutes on 2 vCPUs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

peers=()
while [ $# -gt 0 ]; do
  case "$1" in
    --limitador | --wasm-shim)
      [ $# -ge 2 ] || { echo "report.sh: $1 needs a path" >&2; exit 2; }
      peers+=("$1" "$2")
      shift 2
      ;;
    -h | --help)
      sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "report.sh: unknown argument \`$1\` (see --help)" >&2
      exit 2
      ;;
  esac
done

for tool in valgrind wrk redis-server redis-cli; do
  command -v "$tool" > /dev/null || {
    echo "report.sh: \`$tool\` is not installed (Debian: apt-get install -y valgrind wrk redis-server)" >&2
    exit 2
  }
done
if [ -z "${ENVOY_BIN:-}" ]; then
  eval "$(bash tests/setup.sh)"
fi

cargo build --quiet --release -p tenant-guard-bench --bins
cargo build --quiet --release -p tenant-guard-sidecar
cargo build --quiet --profile sidecar -p tenant-guard-sidecar

echo "# tenant-guard cost report"
echo
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD), $(nproc) vCPUs, Linux $(uname -r), $("$ENVOY_BIN" --version 2>/dev/null | grep -o 'version: [^ ]*' | head -1)"
echo
echo "## Per request: natively, instructions, memory (instr-bench)"
echo
target/release/instr-bench "${peers[@]}"
echo
echo "## The store sidecar's builds (store-bench)"
echo
target/release/store-bench \
  --sidecar target/release/tenant-guard-sidecar \
  --sidecar target/sidecar/tenant-guard-sidecar
echo
echo "## A fleet of 3 replicas on Redis (fleet-report)"
echo
TENANT_GUARD_SIDECAR_BIN=target/sidecar/tenant-guard-sidecar target/release/fleet-report
