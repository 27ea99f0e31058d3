#!/usr/bin/env bash
# The embedded PostgreSQL: start | stop | status. Data in $DATA/postgres.
# PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user.
# Authentication is `trust` on 127.0.0.1 only: the assignment's database has user postgres and no
# password, and this server listens on the loopback address alone.
source "$(dirname "$0")/lib.sh"

PGDATA_DIR="$DATA/postgres"
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$bindir" ] || bindir=$(dirname "$(command -v pg_ctl)")

as_pg() {
  if is_root; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
  if as_pg "$bindir/pg_ctl" status -D "$PGDATA_DIR" >/dev/null 2>&1; then
    log "PostgreSQL already running (port $PG_PORT)"; return 0
  fi
  port_free "$PG_PORT" SHORTENER_PG_PORT
  mkdir -p "$PGDATA_DIR"
  if is_root; then
    chown postgres: "$PGDATA_DIR"
    # The postgres user must be able to reach its data directory.
    chmod o+x "$DATA"
  fi
  chmod 700 "$PGDATA_DIR"
  if [ ! -s "$PGDATA_DIR/PG_VERSION" ]; then
    log "initialising PostgreSQL in $PGDATA_DIR"
    as_pg "$bindir/initdb" -D "$PGDATA_DIR" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
    if [ -n "$PG_TRUST_CIDR" ]; then
      echo "host all all $PG_TRUST_CIDR trust" >> "$PGDATA_DIR/pg_hba.conf"
    fi
  fi
  log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
  as_pg "$bindir/pg_ctl" start -D "$PGDATA_DIR" -w -t 60 -l "$PGDATA_DIR/server.log" \
    -o "-c listen_addresses=$PG_LISTEN -p $PG_PORT -c unix_socket_directories='$PGDATA_DIR' -c fsync=on" >/dev/null
}

stop() {
  if as_pg "$bindir/pg_ctl" status -D "$PGDATA_DIR" >/dev/null 2>&1; then
    as_pg "$bindir/pg_ctl" stop -D "$PGDATA_DIR" -m fast -w >/dev/null
    log "PostgreSQL stopped"
  fi
}

status() { as_pg "$bindir/pg_ctl" status -D "$PGDATA_DIR" >/dev/null 2>&1; }

# A crash, for fault runs (tools/chaos): every server process quits at once, without a
# checkpoint; the next start recovers from the WAL, as after a power loss.
crash() {
  if status; then as_pg "$bindir/pg_ctl" stop -D "$PGDATA_DIR" -m immediate -w >/dev/null; fi
}

# createdb NAME: create the database if it is missing (the product's is named after the user).
createdb() {
  local name=$1
  if ! "$bindir/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname = '$name'" postgres | grep -q 1; then
    "$bindir/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres "$name"
    log "created database $name"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  crash) crash ;;
  createdb) createdb "$2" ;;
  *) die "usage: $0 start|stop|status|crash|createdb NAME" ;;
esac
