#!/usr/bin/env bash
# `make test-fast`: every test that needs no service (those not marked `services`: see
# tests/conftest.py), in about 75 s on 2 cores, with no service started and only the virtualenv
# installed. Arguments go to pytest.
#
# Every address (settings' defaults through the stack's port variables, and the explicit ones)
# points at a port where nothing listens: a test that uses PostgreSQL, Kafka or Redis without
# declaring it fails here, at once and loudly, on every machine, instead of passing against
# services that happen to run.
source "$(dirname "$0")/lib.sh"
here="$(cd "$(dirname "$0")" && pwd)"

"$here/venv.sh"

# Port 1 (tcpmux): nothing listens there on a development machine (binding it takes root), and a
# connection to it is refused at once.
CLOSED=1
port_open "$CLOSED" && die "something listens on 127.0.0.1:$CLOSED; the fast lane needs a closed port"
export SHORTENER_PG_PORT=$CLOSED SHORTENER_KAFKA_PORT=$CLOSED SHORTENER_REDIS_PORTS=$CLOSED
export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$CLOSED" REDIS_URL="redis://127.0.0.1:$CLOSED/0" \
  DATABASE_URL="postgres://nobody@127.0.0.1:$CLOSED/none"

export SHORTENER_USER="f$(date +%s)$$"
export SHORTENER_ROLE=master
export DJANGO_SECRET_KEY="test-only-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
exec "$PY" -m pytest -m "not services" "$@"
