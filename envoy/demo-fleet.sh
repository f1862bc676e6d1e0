#!/usr/bin/env bash
# Fleet demo (`bash envoy/demo.sh --fleet`): two gateway replicas share one
# limit and one set of idempotency records through Redis (README "Running a fleet"):
#
#   client --> Envoy A + filter.wasm --> store sidecar A --\
#          \-> Envoy B + filter.wasm --> store sidecar B ---+--> Redis
#              (both) --> echo upstream
#
# Starts its own redis-server on a free port (unless $REDIS_URL is set: then the
# keys tg:{acme}:* and tg:{globex}:* there are deleted first), builds the filter
# and the sidecar, starts the echo upstream, two `tenant-guard-sidecar store`
# endpoints and two Envoys (static bootstrap, `store.backend: cluster`), then
# shows acme's 5 req/60 s holding across both replicas and a globex POST with an
# Idempotency-Key replayed by the other replica. Every wait is a poll with a
# deadline; everything started here is stopped on exit; the exit status is
# non-zero if any check failed. Installs what is missing like envoy/demo.sh
# (Rust targets, Envoy 1.40.0, redis-server, redis-tools, curl).
#
# Env: REDIS_URL  UPSTREAM_PORT [free]  WASM_PATH SIDECAR_BIN ENVOY_BIN (skip
#      building/installing)  KEEP_WORK_DIR (also kept when a check fails)  CARGO_TARGET_DIR
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

UPSTREAM_PORT="${UPSTREAM_PORT:-$(tg_free_port)}"
WORK_DIR="$(mktemp -d -t tenant-guard-fleet.XXXXXX)"
REPLICAS=(A B)
declare -A ADMIN LISTENER STORE
CONFIG='{"version":1,"revision":"fleet-demo","tenant":{"trust_header_without_jwt":true},"store":{"backend":"cluster","cluster":{"fallback_share_percent":50}},"tenants":{"acme":{"rate_limit":{"requests":5,"per_seconds":60}},"initech":{"rate_limits":[{"name":"month","requests":6,"per":"month"}]},"umbrella":{"rate_limits":[{"name":"tokens","requests":100,"per":"month","usage_header":"x-tokens"}]},"globex":{"idempotency":{"methods":["POST"],"ttl_seconds":600,"max_body_bytes":4096}}}}'
SCENARIO_HINT="an Envoy or a store sidecar misbehaved: their logs are printed above and kept in the work dir"
PIDS=()
FAILED=0
CHECKS=0

# ---------------------------------------------------------------- plumbing
phase() {
  TG_STEP="$1" TG_STEP_HINT="$2"
  printf '\n%s\n' "$(tg_paint 1 1 "$1")"
}
info() { printf '   %s\n' "$*"; }
die() { printf '%s\n' "$(tg_paint 2 31 "demo --fleet: $*")" >&2; exit 1; }

cleanup() {
  local rc=$? i log
  tg_step_report "$rc"
  if ((rc != 0)); then
    for log in "$WORK_DIR"/*.log; do
      [[ -s "$log" ]] || continue
      printf '\n--- last lines of %s ---\n' "${log##*/}" >&2
      grep -v 'server.cc:\(467\|547\)\]' "$log" | tail -n 12 >&2 || true
    done
  fi
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill "${PIDS[i]}" 2>/dev/null || true; done
  for i in "${PIDS[@]}"; do wait "$i" 2>/dev/null || true; done
  if [[ -n "${KEEP_WORK_DIR:-}" ]] || ((rc != 0)); then
    echo "demo --fleet: logs (redis, upstream, store-A/B, envoy-A/B) kept in $WORK_DIR" >&2
  else
    rm -rf "$WORK_DIR"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# check DESCRIPTION CMD...: records and prints whether CMD succeeds.
check() {
  local what="$1"
  shift
  CHECKS=$((CHECKS + 1))
  if "$@" >/dev/null 2>&1; then
    printf '     %s %s\n' "$(tg_paint 1 32 ✓)" "$what"
  else
    printf '     %s\n' "$(tg_paint 1 31 "✗ $what")"
    FAILED=$((FAILED + 1))
  fi
}
eq() { [[ "$1" == "$2" ]]; }
nonempty() { [[ -n "$1" ]]; }
contains() { [[ "$1" == *"$2"* ]]; }

# send REPLICA CURL_ARGS...: one request to /orders on that replica's Envoy;
# leaves $STATUS, $WORK_DIR/headers and $WORK_DIR/body.
send() {
  local replica="$1"
  shift
  STATUS="$(curl -sS -o "$WORK_DIR/body" -D "$WORK_DIR/headers" -w '%{http_code}' "$@" \
    "http://127.0.0.1:${LISTENER[$replica]}/orders")"
}
hdr() { grep -i "^$1:" "$WORK_DIR/headers" | head -n1 | cut -d: -f2- | tr -d '\r' | sed 's/^ *//'; }
show_headers() {
  grep -iE '^(ratelimit-policy|ratelimit|retry-after|idempotent-replayed|content-type):' \
    "$WORK_DIR/headers" | tr -d '\r' | sed 's/^/       /'
}
# counter REPLICA REGEX: the sum of that Envoy's stats matching REGEX (0 if none).
counter() {
  curl -fsSG --data-urlencode "filter=$2" "http://127.0.0.1:${ADMIN[$1]}/stats" |
    awk -F': ' '{ n += $2 } END { print n + 0 }'
}
# upstream REPLICA STAT: that Envoy's counter cluster.upstream.STAT (requests to the echo upstream).
upstream() { counter "$1" "^cluster\\.upstream\\.$2\$"; }
# exited_or PID CMD...: true when CMD holds or process PID is gone (so polls end early).
exited_or() { ! kill -0 "$1" 2>/dev/null || "${@:2}"; }
redis_up() { redis-cli -u "$REDIS_URL" ping | grep -q PONG; }
store_listening() { grep -q '^store endpoint listening on ' "$WORK_DIR/store-$1.log"; }
envoy_ready() { curl -fsS -o /dev/null "http://127.0.0.1:${ADMIN[$1]}/ready"; }

# ---------------------------------------------------------------- setup
start_redis() {
  phase "Redis" "set REDIS_URL=redis://HOST:PORT, or install redis-server (Debian redis-server)"
  tg_ensure_command curl curl
  tg_ensure_command redis-cli redis-tools
  if [[ -n "${REDIS_URL:-}" ]]; then
    info "using REDIS_URL=$REDIS_URL; deleting its tg:{acme}:* and tg:{globex}:* keys"
    redis-cli -u "$REDIS_URL" --scan --pattern 'tg:{acme}:*' >"$WORK_DIR/old-keys" || die "cannot reach $REDIS_URL"
    redis-cli -u "$REDIS_URL" --scan --pattern 'tg:{globex}:*' >>"$WORK_DIR/old-keys"
    [[ -s "$WORK_DIR/old-keys" ]] && xargs redis-cli -u "$REDIS_URL" del <"$WORK_DIR/old-keys" >/dev/null
    return 0
  fi
  tg_ensure_command redis-server redis-server
  local port
  port="$(tg_free_port)"
  REDIS_URL="redis://127.0.0.1:$port"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK_DIR" \
    >"$WORK_DIR/redis.log" 2>&1 &
  PIDS+=("$!")
  tg_wait_for 10 "redis-server on :$port" exited_or "$!" redis_up || die "redis-server did not start"
  redis_up || die "redis-server exited during start-up"
  info "redis-server $(redis-server --version | grep -o 'v=[0-9.]*' | cut -c3-) on $REDIS_URL (pid ${PIDS[-1]}, no persistence)"
}

build() {
  phase "Building the filter (wasm32-wasip1, release) and the sidecar (release); Envoy 1.40.0" \
    "run \`cargo build --release --target wasm32-wasip1 -p tenant-guard-filter\` / \`cargo build --release -p tenant-guard-sidecar\`; ENVOY_BIN skips envoy/install-envoy.sh"
  WASM="${WASM_PATH:-$(tg_build_wasm)}"
  SIDECAR="${SIDECAR_BIN:-$(tg_build_sidecar)}"
  ENVOY="$(tg_envoy_bin)"
  [[ -s "$WASM" && -x "$SIDECAR" && -x "$ENVOY" ]] || die "missing: $WASM $SIDECAR $ENVOY"
  info "filter:  $WASM ($(wc -c <"$WASM") bytes)"
  info "sidecar: $SIDECAR"
  info "envoy:   $ENVOY"
}

start_fleet() {
  phase "Starting the echo upstream, 2 store sidecars and 2 Envoys" \
    "UPSTREAM_PORT must be free; the store sidecar needs the \`store\` subcommand; logs are printed above"
  python3 "$TG_ENVOY_DIR/echo_upstream.py" "$UPSTREAM_PORT" 2>"$WORK_DIR/upstream.log" &
  PIDS+=("$!")
  tg_wait_http "http://127.0.0.1:$UPSTREAM_PORT/" 10 || die "the upstream did not start"
  info "echo upstream        127.0.0.1:$UPSTREAM_PORT"
  local r pid log
  for r in "${REPLICAS[@]}"; do
    log="$WORK_DIR/store-$r.log"
    # Port 0: the sidecar binds a free port and prints it (no race with another process).
    "$SIDECAR" store --store-addr 127.0.0.1:0 --redis-url "$REDIS_URL" >"$log" 2>&1 &
    PIDS+=("$!")
    pid=$!
    tg_wait_for 30 "store sidecar $r" exited_or "$pid" store_listening "$r" ||
      die "store sidecar $r did not start"
    STORE[$r]="$(sed -n 's/^store endpoint listening on //p' "$log" | head -n1)"
    [[ -n "${STORE[$r]}" ]] || die "store sidecar $r exited during start-up"
    info "store sidecar $r      ${STORE[$r]} -> $REDIS_URL (pid $pid)"
  done
  for r in "${REPLICAS[@]}"; do
    ADMIN[$r]="$(tg_free_port)"
    LISTENER[$r]="$(tg_free_port)"
    TG_STORE_PORT="${STORE[$r]##*:}" tg_render_static "$WORK_DIR/envoy-$r.yaml" "$CONFIG" \
      "${ADMIN[$r]}" "${LISTENER[$r]}" "$UPSTREAM_PORT" "$WASM"
    "$ENVOY" -c "$WORK_DIR/envoy-$r.yaml" --disable-hot-restart --concurrency 2 --log-level info \
      --log-path "$WORK_DIR/envoy-$r.log" >"$WORK_DIR/envoy-$r.out" 2>&1 &
    PIDS+=("$!")
    pid=$!
    tg_wait_for 60 "Envoy $r's admin /ready" exited_or "$pid" envoy_ready "$r" ||
      die "Envoy $r did not become ready"
    kill -0 "$pid" 2>/dev/null || die "Envoy $r exited during start-up"
    info "Envoy $r (pid $pid)    127.0.0.1:${LISTENER[$r]}, admin :${ADMIN[$r]}, cluster tenant_guard_store -> ${STORE[$r]}"
  done
  info "plugin config (both): $CONFIG"
}

# ---------------------------------------------------------------- scenarios
one_limit() {
  phase "1. One limit across both replicas: acme may send 5 requests per 60 s in all" "$SCENARIO_HINT"
  local i r statuses="" per_a=0 per_b=0
  for i in $(seq 1 10); do
    r="${REPLICAS[$(((i - 1) % 2))]}"
    send "$r" -H 'x-tenant-id: acme'
    statuses+="$STATUS "
    if [[ "$STATUS" == 200 && $r == A ]]; then per_a=$((per_a + 1)); fi
    if [[ "$STATUS" == 200 && $r == B ]]; then per_b=$((per_b + 1)); fi
    printf '   GET #%-2s replica %s → %s   %s\n' "$i" "$r" "$STATUS" \
      "$(hdr ratelimit | sed 's/^/RateLimit: /')$([[ $STATUS == 429 ]] && printf '  Retry-After: %s' "$(hdr retry-after)")"
  done
  check "exactly 5 × 200 then 5 × 429 (A admitted $per_a, B $per_b: one limit, not 5 per replica)" \
    eq "$statuses" "200 200 200 200 200 429 429 429 429 429 "
  check "the last 429 (replica B) carries Retry-After" nonempty "$(hdr retry-after)"
  check "… RateLimit-Policy q=5;w=60" contains "$(hdr ratelimit-policy)" ";q=5;w=60"
  check "… RateLimit header" nonempty "$(hdr ratelimit)"
  for r in "${REPLICAS[@]}"; do
    check "replica $r used the store ($(counter "$r" tenant_guard_store_round_trips$) round trips) and never fell back" \
      eq "$(($(counter "$r" tenant_guard_store_round_trips$) > 0)) $(counter "$r" tenant_guard_store_down$)" "1 0"
  done
}

replay_elsewhere() {
  phase "2. Idempotency-Key across replicas (globex: POST, records kept 600 s)" "$SCENARIO_HINT"
  local post=(-X POST -H 'x-tenant-id: globex' -H 'Idempotency-Key: "order-1"' -H 'content-type: application/json')
  local done_a done_b sent_b reset_b
  done_a="$(upstream A upstream_rq_completed)" done_b="$(upstream B upstream_rq_completed)"
  sent_b="$(upstream B upstream_rq_total)" reset_b="$(upstream B upstream_cx_destroy_local_with_active_rq)"
  send A "${post[@]}" -H 'x-correlation-id: order-1-try-1' --data '{"item": "anvil", "qty": 1}'
  info "POST order-1 → replica A → $STATUS"
  show_headers
  check "first POST executed on A (200, not replayed)" eq "$STATUS $(hdr idempotent-replayed)" "200 "
  cp "$WORK_DIR/body" "$WORK_DIR/first-body"
  send B "${post[@]}" -H 'x-correlation-id: order-1-try-2' --data '{"item": "anvil", "qty": 1}'
  info "same POST (a client retry) → replica B → $STATUS"
  show_headers
  check "B replays it: 200 with idempotent-replayed: true" eq "$STATUS $(hdr idempotent-replayed)" "200 true"
  check "body byte-identical to A's ($(wc -c <"$WORK_DIR/body") bytes, cmp)" cmp "$WORK_DIR/first-body" "$WORK_DIR/body"
  send B "${post[@]}" --data '{"item": "anvil", "qty": 2}'
  info "same key, different body → replica B → $STATUS"
  check "422 (key reused with a different request)" eq "$STATUS" "422"
  # Envoy's own counters of the upstream cluster: a request the upstream
  # answered is `upstream_rq_completed`. B's two requests needed their body for
  # the fingerprint, so their headers had started upstream and were reset
  # (README "One host limitation"): never a complete request.
  local up_a=$(($(upstream A upstream_rq_completed) - done_a))
  local up_b=$(($(upstream B upstream_rq_completed) - done_b))
  check "the upstream executed the POST once (requests it answered: A +$up_a, B +$up_b)" eq "$up_a $up_b" "1 0"
  info "B: headers started upstream $(($(upstream B upstream_rq_total) - sent_b))×, reset before the body" \
    "$(($(upstream B upstream_cx_destroy_local_with_active_rq) - reset_b))× (a replay needs the body first)"
}

one_quota() {
  phase "3. One monthly quota across both replicas: initech may send 6 requests per calendar month (UTC)" "$SCENARIO_HINT"
  local i r statuses="" key expected
  for i in $(seq 1 12); do
    r="${REPLICAS[$(((i - 1) % 2))]}"
    send "$r" -H 'x-tenant-id: initech'
    statuses+="$STATUS "
    printf '   GET #%-2s replica %s → %s   %s\n' "$i" "$r" "$STATUS" \
      "$(hdr ratelimit | sed 's/^/RateLimit: /')$([[ $STATUS == 429 ]] && printf '  Retry-After: %s' "$(hdr retry-after)")"
  done
  check "exactly 6 × 200 then 6 × 429: the month's quota is one count in Redis, not one per replica" \
    eq "$statuses" "200 200 200 200 200 200 429 429 429 429 429 429 "
  expected="$(python3 -c 'import datetime as d; n = d.datetime.now(d.timezone.utc); m = (n.replace(day=28) + d.timedelta(days=4)).replace(day=1, hour=0, minute=0, second=0, microsecond=0); print(int((m - n).total_seconds()))')"
  check "Retry-After is the time to the 1st of next month, UTC ($(hdr retry-after) s, expected $expected ± 5)" \
    test "$(( $(hdr retry-after) - expected ))" -le 5 -a "$(( expected - $(hdr retry-after) ))" -le 5
  key="$(redis-cli -u "$REDIS_URL" --scan --pattern 'tg:{initech}:q:month:*' | head -n1)"
  info "Redis: $key = $(redis-cli -u "$REDIS_URL" GET "$key"), expires in $(redis-cli -u "$REDIS_URL" TTL "$key") s (an hour after the month ends)"
  check "Redis counts the 6 admitted requests of this month in one key" \
    eq "$(redis-cli -u "$REDIS_URL" GET "$key")" "6"
}

# A request of umbrella on replica B answered 429 (the usage A's upstream
# reported reached Redis).
umbrella_spent() {
  send B -H 'x-tenant-id: umbrella'
  [[ "$STATUS" == 429 ]]
}

reported_usage() {
  phase "4. Usage reported on one replica spends the quota on the other: umbrella has 100 tokens a month" "$SCENARIO_HINT"
  send A -H 'x-tenant-id: umbrella' -H 'x-demo-usage: 98'
  info "replica A → $STATUS; its upstream reports x-tokens: 98 (the filter takes 97 beyond the request itself and removes the header)"
  check "A admits it and the client never sees x-tokens" eq "$STATUS [$(hdr x-tokens)]" "200 []"
  send B -H 'x-tenant-id: umbrella'
  info "replica B → $STATUS (1 token was left)"
  check "B admits the last token" eq "$STATUS" "200"
  tg_wait_for 10 "replica B to refuse umbrella" umbrella_spent || true
  info "replica B → $STATUS  $(hdr ratelimit | sed 's/^/RateLimit: /')"
  check "then B refuses: the month's 100 tokens are spent across both replicas" eq "$STATUS" "429"
  local key
  key="$(redis-cli -u "$REDIS_URL" --scan --pattern 'tg:{umbrella}:q:tokens:*' | head -n1)"
  info "Redis: $key = $(redis-cli -u "$REDIS_URL" GET "$key")"
}

main() {
  start_redis
  build
  start_fleet
  one_limit
  replay_elsewhere
  one_quota
  reported_usage
  phase "Redis holds the fleet's state (keys tg:{tenant}:…)" "$SCENARIO_HINT"
  redis-cli -u "$REDIS_URL" --scan --pattern 'tg:*' | sort | sed 's/^/   /'
  TG_STEP=""
  if ((FAILED)); then
    printf '\n%s\n' "$(tg_paint 1 31 "$FAILED of $CHECKS checks FAILED (marked ✗ above)")"
    exit 1
  fi
  printf '\n%s\n' "$(tg_paint 1 1 "Done: all $CHECKS checks passed.")"
}

main "$@"
