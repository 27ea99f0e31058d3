#!/usr/bin/env bash
# All embedded services at once: start | stop | status.
# start: PostgreSQL, Kafka and one Redis per local replica; then the database and the topics.
source "$(dirname "$0")/lib.sh"
here="$(dirname "$0")"

case "${1:-}" in
  start)
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
  *) die "usage: $0 start|stop|status" ;;
esac
