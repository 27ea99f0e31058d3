#!/usr/bin/env bash
# All embedded services at once: start | stop [NAME ...] | status | check | stopped.
# start: PostgreSQL, Kafka and one Redis per local replica; then the database and the topics.
# check: only that the ports of those not running are free, and that those running listen on
#   the ports asked for (what start checks first).
# stopped: the names of those not running now (postgres, kafka, redis:PORT): what a `start` will
#   start, and so what `make up` and `make test` stop again when they end (stop NAME ...); a
#   service that was running before them is never theirs to stop.
source "$(dirname "$0")/lib.sh"
here="$(dirname "$0")"

# Every port a service of ours that is not running will need, checked before any is started: a
# port taken fails the start at once, naming the variable to set, rather than after PostgreSQL
# is up, or in a wait for a broker that cannot listen.
ports_check() {
  local -A owner=()
  local pair port var p
  for pair in "$PG_PORT:SHORTENER_PG_PORT" "$KAFKA_PORT:SHORTENER_KAFKA_PORT" \
      "$KAFKA_CONTROLLER_PORT:SHORTENER_KAFKA_CONTROLLER_PORT" \
      $(for p in $REDIS_PORTS; do echo "$p:SHORTENER_REDIS_PORTS"; done); do
    port=${pair%%:*} var=${pair#*:}
    [ -z "${owner[$port]:-}" ] \
      || die "port $port is given twice ($var, ${owner[$port]}): each service needs its own"
    owner[$port]=$var
  done
  # A service of this data folder that runs was started with the ports of that time: if it does
  # not listen on the one asked for now, "already running" would be a lie and every client of
  # this run would knock at an empty port.
  if "$here/postgres.sh" status; then
    port_open "$PG_PORT" || die "PostgreSQL of $DATA runs, but not on port $PG_PORT: it was \
started with other ports. Set SHORTENER_PG_PORT to the port it listens on, or stop it first \
(make down, with the ports it was started with)"
  else
    port_free "$PG_PORT" SHORTENER_PG_PORT
  fi
  if "$here/kafka.sh" status; then
    port_open "$KAFKA_PORT" "$KAFKA_HOST" || die "Kafka of $DATA runs, but not on port \
$KAFKA_PORT: it was started with other ports. Set SHORTENER_KAFKA_PORT (and \
SHORTENER_KAFKA_CONTROLLER_PORT) to the ports it listens on, or stop it first (make down, with \
the ports it was started with)"
  else
    port_free "$KAFKA_PORT" SHORTENER_KAFKA_PORT "$KAFKA_HOST"
    port_free "$KAFKA_CONTROLLER_PORT" SHORTENER_KAFKA_CONTROLLER_PORT
  fi
  for p in $REDIS_PORTS; do
    "$here/redis.sh" status "$p" || port_free "$p" SHORTENER_REDIS_PORTS
  done
}

case "${1:-}" in
  check) ports_check ;;
  start)
    ports_check
    "$here/postgres.sh" start
    "$here/kafka.sh" start
    for p in $REDIS_PORTS; do "$here/redis.sh" start "$p"; done
    ;;
  stopped)
    "$here/postgres.sh" status || echo postgres
    "$here/kafka.sh" status || echo kafka
    for p in $REDIS_PORTS; do "$here/redis.sh" status "$p" || echo "redis:$p"; done
    ;;
  stop)
    # No names: all of them. Redis first, PostgreSQL last (the consumers' stores go first).
    shift
    names="${*:-$(for p in $REDIS_PORTS; do echo "redis:$p"; done) kafka postgres}"
    for name in $names; do
      case "$name" in
        redis:*) "$here/redis.sh" stop "${name#redis:}" ;;
        kafka) "$here/kafka.sh" stop ;;
        postgres) "$here/postgres.sh" stop ;;
        *) die "stop: unknown service $name" ;;
      esac
    done
    ;;
  status)
    rc=0
    "$here/postgres.sh" status && echo "postgres: running" || { echo "postgres: stopped"; rc=1; }
    "$here/kafka.sh" status && echo "kafka: running" || { echo "kafka: stopped"; rc=1; }
    for p in $REDIS_PORTS; do
      "$here/redis.sh" status "$p" && echo "redis $p: running" || { echo "redis $p: stopped"; rc=1; }
    done
    exit $rc
    ;;
  *) die "usage: $0 start|stop [NAME ...]|status|check|stopped" ;;
esac
