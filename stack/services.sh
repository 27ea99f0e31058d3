#!/usr/bin/env bash
# All embedded services at once: start | stop | status | check.
# start: PostgreSQL, Kafka and one Redis per local replica; then the database and the topics.
# check: only that the ports of those not running are free (what start checks first).
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
  "$here/postgres.sh" status || port_free "$PG_PORT" SHORTENER_PG_PORT
  if ! "$here/kafka.sh" status; then
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
  stop)
    for p in $REDIS_PORTS; do "$here/redis.sh" stop "$p"; done
    "$here/kafka.sh" stop
    "$here/postgres.sh" stop
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
  *) die "usage: $0 start|stop|status|check" ;;
esac
