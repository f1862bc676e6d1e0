#!/usr/bin/env bash
# Prints a PostgreSQL URL for the tests on stdout (everything else goes to stderr).
#
# - A server already answering on 127.0.0.1:${PGPORT:-5432} is used as is
#   (trust auth, user postgres, database postgres).
# - Otherwise (a fresh CI machine): install Debian's postgresql package if
#   initdb is missing, initdb into ${PGDATA_DIR:-<repo>/.tools/pgdata} with
#   trust auth, start it on ${PGPORT:-5432} (or a free port when that one is
#   taken), wait until it accepts connections, and print its URL.
#   Running as root, the server runs as the `postgres` user (it refuses root).
#
# Usage: export DATABASE_URL="$(bash tests/postgres.sh)"
set -euo pipefail

log() { echo "postgres.sh: $*" >&2; }

port="${PGPORT:-5432}"
host=127.0.0.1

if pg_isready -q -h "$host" -p "$port" 2>/dev/null; then
    echo "postgres://postgres@$host:$port/postgres"
    exit 0
fi

find_bin() {
    local name="$1" candidate
    if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return 0; fi
    for candidate in /usr/lib/postgresql/*/bin/"$name"; do
        if [ -x "$candidate" ]; then echo "$candidate"; return 0; fi
    done
    return 1
}

if ! find_bin initdb >/dev/null; then
    log "installing PostgreSQL (Debian package)"
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
    {
        # DPkg::Lock::Timeout: wait for another apt/dpkg run instead of failing on its lock.
        $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq postgresql
    } >&2
fi
initdb="$(find_bin initdb)"
pg_ctl="$(find_bin pg_ctl)"
pg_isready_bin="$(find_bin pg_isready)"

# A port in use by something that is not PostgreSQL: pick a free one.
if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    log "port ${PGPORT:-5432} is taken, using $port"
fi

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data="${PGDATA_DIR:-$repo/.tools/pgdata}"
mkdir -p "$(dirname "$data")"

as_db_user() {
    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres >&2
        chown -R postgres "$data" 2>/dev/null || true
        if command -v runuser >/dev/null 2>&1; then
            runuser -u postgres -- "$@"
        else
            su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
        fi
    else
        "$@"
    fi
}

if [ ! -s "$data/PG_VERSION" ]; then
    log "initdb into $data"
    mkdir -p "$data"
    [ "$(id -u)" -eq 0 ] && { id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres >&2; chown postgres "$data"; }
    as_db_user "$initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 --no-locale >&2
fi

sockdir="$data/run"
mkdir -p "$sockdir"
[ "$(id -u)" -eq 0 ] && chown postgres "$sockdir"
log "starting PostgreSQL on $host:$port"
as_db_user "$pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
    -o "-h $host -p $port -k $sockdir -c fsync=off -c max_connections=200" start >&2 || {
    log "start failed; server log:"; tail -n 30 "$data/server.log" >&2 || true; exit 1; }

for _ in $(seq 1 100); do
    if "$pg_isready_bin" -q -h "$host" -p "$port"; then
        echo "postgres://postgres@$host:$port/postgres"
        exit 0
    fi
    sleep 0.2
done
log "PostgreSQL did not become ready on $host:$port"
exit 1
