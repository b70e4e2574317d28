#!/usr/bin/env bash
# Start a throwaway PostgreSQL 15 cluster on 127.0.0.1 in a temp dir (no systemd needed).
# Usage: source scripts/pg_throwaway.sh  -> exports DATABASE_URL and PG_THROWAWAY_DIR;
#        pg_throwaway_stop                -> stops it and removes the directory.
# Meant to be sourced, so it leaves the caller's shell options alone (no set -e here): each
# step that must work is checked, and a failure returns non-zero to the caller.
# Tip: `trap pg_throwaway_stop EXIT` right after sourcing, so a failing command still stops it.
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
if [ ! -x "$PGBIN/initdb" ]; then
  echo "PostgreSQL 15 server binaries missing; installing postgresql-15" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null
fi
id postgres >/dev/null 2>&1 || useradd --system --home /var/lib/postgresql postgres
PG_THROWAWAY_DIR=$(mktemp -d /tmp/pacs-pg.XXXXXX)
chown postgres:postgres "$PG_THROWAWAY_DIR"
PG_PORT=${PG_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
as_postgres "$PGBIN/initdb" -D "$PG_THROWAWAY_DIR/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 --no-sync >/dev/null \
  && as_postgres "$PGBIN/pg_ctl" -D "$PG_THROWAWAY_DIR/data" -l "$PG_THROWAWAY_DIR/log" -w -t 30 \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_THROWAWAY_DIR -c fsync=off" start >/dev/null \
  && as_postgres "$PGBIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres pacs \
  || { echo "could not start PostgreSQL (see $PG_THROWAWAY_DIR/log)" >&2; return 1 2>/dev/null || exit 1; }
export PG_THROWAWAY_DIR PG_PORT
export DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/pacs"
pg_throwaway_stop() {
  as_postgres "$PGBIN/pg_ctl" -D "$PG_THROWAWAY_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$PG_THROWAWAY_DIR"
}
echo "PostgreSQL on 127.0.0.1:$PG_PORT ($PG_THROWAWAY_DIR)" >&2
