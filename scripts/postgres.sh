#!/usr/bin/env bash
# Start (or find already running) a throwaway PostgreSQL server for the tests, listening on
# 127.0.0.1 only, and print the SQLAlchemy URL of its maintenance database on stdout, e.g.
#   postgresql+psycopg://postgres:postgres@127.0.0.1:54321/postgres
# Idempotent: a second run finds the same server and prints the same URL. Everything else goes to
# stderr. Installs Debian's `postgresql` package when no server binaries exist and we are root.
#
# The server lives in its own data folder (SPEAKERID_PG_DIR, default /tmp/speakerid-postgres-UID), on a
# free port, with fsync off: it holds test data only. Stop it with
#   scripts/postgres.sh stop
set -euo pipefail

DATA=${SPEAKERID_PG_DIR:-/tmp/speakerid-postgres-$(id -u)}
PASSWORD=postgres

say() { echo "postgres.sh: $*" >&2; }
die() { say "$*"; exit 1; }

find_bindir() {
  local dir
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && { echo "$dir"; return 0; }
  done
  dir=$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")
  [ -x "$dir/pg_ctl" ] && { echo "$dir"; return 0; }
  return 1
}

BIN=$(find_bindir || true)
if [ -z "$BIN" ]; then
  [ "$(id -u)" = 0 ] || die "no PostgreSQL server binaries and not root: install Debian's 'postgresql' package"
  say "installing PostgreSQL (apt-get install postgresql)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
  BIN=$(find_bindir) || die "postgresql installed but initdb/pg_ctl not found"
fi

# initdb and the server refuse to run as root: run them as the package's `postgres` user.
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --home-dir "$DATA" --shell /bin/sh postgres
  as_owner() { runuser -u postgres -- "$@"; }
else
  as_owner() { "$@"; }
fi

running_port() {  # the port of the server running on $DATA, if any (4th line of postmaster.pid)
  as_owner "$BIN/pg_ctl" status -D "$DATA" >/dev/null 2>&1 || return 1
  sed -n 4p "$DATA/postmaster.pid"
}

if [ "${1:-}" = "stop" ]; then
  if running_port >/dev/null; then
    as_owner "$BIN/pg_ctl" stop -D "$DATA" -m fast -w >&2
  fi
  exit 0
fi

if [ ! -s "$DATA/PG_VERSION" ]; then
  if [ -d "$DATA" ] && [ -n "$(ls -A "$DATA")" ]; then
    die "$DATA exists, is not empty and holds no cluster: remove it or set SPEAKERID_PG_DIR"
  fi
  say "creating a cluster in $DATA"
  mkdir -p "$DATA"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$DATA"; fi
  chmod 700 "$DATA"
  pwfile=$(mktemp)
  echo "$PASSWORD" >"$pwfile"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$pwfile"; fi
  log=$(mktemp)
  if ! as_owner "$BIN/initdb" -D "$DATA" -U postgres --pwfile="$pwfile" --auth-local=peer \
    --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$pwfile" "$log"
    die "initdb failed"
  fi
  rm -f "$pwfile" "$log"
  # Test data only: durability is not needed, speed is. Sockets stay inside the data folder.
  cat >>"$DATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DATA'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
fi

port=$(running_port || true)
if [ -z "$port" ]; then
  py=$(dirname "$0")/../.venv/bin/python  # the project's; else whichever Python 3 the machine has
  [ -x "$py" ] || py=$(command -v python3.11 || command -v python3)
  port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  say "starting PostgreSQL on 127.0.0.1:$port ($DATA)"
  as_owner "$BIN/pg_ctl" start -D "$DATA" -w -t 60 -l "$DATA/server.log" -o "-p $port" >&2 \
    || { tail -n 20 "$DATA/server.log" >&2 || true; die "PostgreSQL did not start"; }
fi

PSQL=$BIN/psql
[ -x "$PSQL" ] || PSQL=psql
# Ready means: a client can log in over TCP with the password.
for _ in $(seq 1 60); do
  if PGPASSWORD=$PASSWORD PGCONNECT_TIMEOUT=2 "$PSQL" -h 127.0.0.1 -p "$port" -U postgres -d postgres \
    -Atqc 'SELECT 1' >/dev/null 2>&1; then
    echo "postgresql+psycopg://postgres:$PASSWORD@127.0.0.1:$port/postgres"
    exit 0
  fi
  sleep 0.5
done
die "PostgreSQL on 127.0.0.1:$port does not accept logins (see $DATA/server.log)"
