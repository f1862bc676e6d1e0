#!/usr/bin/env bash
# Checks the monitoring files with promtool: `promtool check rules` and
# `promtool test rules` on alerts.yml / alerts.test.yml, that every alert has a
# test case in which it fires, and that every PromQL query of dashboard.json
# parses (each is checked as a recording rule, Grafana's $__rate_interval /
# $__range replaced by 5m). Exits non-zero on the first failure.
#
# promtool: $PROMTOOL, else `promtool` on PATH, else the binary is extracted
# from Debian's `prometheus` package (`apt-get download` + `dpkg-deb -x` into
# target/tools/; installing the package would also start a Prometheus server
# on :9090, which a check has no business doing).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"

find_promtool() {
  if [[ -n "${PROMTOOL:-}" ]]; then
    echo "$PROMTOOL"
    return
  fi
  if command -v promtool >/dev/null 2>&1; then
    command -v promtool
    return
  fi
  local dir="${CARGO_TARGET_DIR:-$ROOT/target}/tools/prometheus-deb"
  [[ "$dir" == /* ]] || dir="$ROOT/$dir"
  if [[ ! -x "$dir/usr/bin/promtool" ]]; then
    command -v apt-get >/dev/null 2>&1 || {
      echo "promtool not found and no apt-get: install Prometheus' promtool or set PROMTOOL" >&2
      return 1
    }
    echo "promtool not found: extracting it from Debian's prometheus package into $dir" >&2
    local download
    download="$(mktemp -d)"
    chmod 0777 "$download" # apt-get download writes it as the unprivileged _apt user
    # A stale package list is the usual reason for a 404; refresh once (needs root).
    (cd "$download" && apt-get download -qq prometheus >&2) || {
      local sudo=()
      [[ "$(id -u)" -eq 0 ]] || sudo=(sudo)
      "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
      (cd "$download" && apt-get download -qq prometheus >&2)
    }
    mkdir -p "$dir"
    dpkg-deb -x "$download"/prometheus_*.deb "$dir"
    rm -rf "$download"
  fi
  echo "$dir/usr/bin/promtool"
}

PROMTOOL_BIN="$(find_promtool)"
echo "promtool: $PROMTOOL_BIN ($("$PROMTOOL_BIN" --version 2>&1 | head -1))" >&2
cd "$HERE"

"$PROMTOOL_BIN" check rules alerts.yml
"$PROMTOOL_BIN" test rules alerts.test.yml

# Every alert needs a test case that expects it to fire (exp_labels present),
# not only cases where it stays silent.
untested="$(
  awk '
    FNR == NR { if ($1 == "-" && $2 == "alert:") alerts[$3] = 1; next }
    $1 == "alertname:" { current = $2 }
    $1 == "-" && $2 == "exp_labels:" { fires[current] = 1 }
    END { for (a in alerts) if (!(a in fires)) print a }
  ' alerts.yml alerts.test.yml
)"
if [[ -n "$untested" ]]; then
  echo "alerts without a test case in which they fire: $untested" >&2
  exit 1
fi
echo "every alert of alerts.yml fires in a test case of alerts.test.yml" >&2

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
python3 - dashboard.json "$WORK/dashboard-queries.yml" <<'PY'
import json, sys
source, out = sys.argv[1:]
exprs = []
def walk(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                exprs.append(value)
            else:
                walk(value)
    elif isinstance(node, list):
        for item in node:
            walk(item)
walk(json.load(open(source)))
if not exprs:
    sys.exit("dashboard.json has no queries")
with open(out, "w") as f:
    f.write("groups:\n  - name: dashboard-queries\n    rules:\n")
    for i, expr in enumerate(exprs):
        expr = expr.replace("$__rate_interval", "5m").replace("$__range", "5m")
        f.write("      - record: dashboard:query_%d\n        expr: %s\n" % (i, json.dumps(expr)))
print("dashboard.json: %d queries" % len(exprs), file=sys.stderr)
PY
"$PROMTOOL_BIN" check rules "$WORK/dashboard-queries.yml"
echo "monitoring checks passed" >&2
