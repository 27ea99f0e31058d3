#!/usr/bin/env bash
# An embedded Redis per replica: start PORT | stop PORT | status PORT. Data in $DATA/redis/PORT.
# Append-only persistence is on, so a restarted replica keeps what it had loaded and reads only
# what it missed from the topic (the assignment's second reason for a local Redis).
source "$(dirname "$0")/lib.sh"

port=${2:-}
[ -n "$port" ] || die "usage: $0 start|stop|status PORT"
RDIR="$DATA/redis/$port"
PIDFILE="$RDIR/redis.pid"

case "${1:-}" in
  start)
    if pid_alive "$PIDFILE"; then log "Redis already running on port $port"; exit 0; fi
    port_free "$port" SHORTENER_REDIS_PORTS
    mkdir -p "$RDIR"
    rm -f "$PIDFILE"  # a dead one's: the new daemon writes its own (wait_port watches it)
    log "starting Redis on 127.0.0.1:$port"
    redis-server --port "$port" --bind 127.0.0.1 --dir "$RDIR" --daemonize yes \
      --pidfile "$PIDFILE" --logfile "$RDIR/redis.log" --appendonly yes --save "" >/dev/null
    wait_port "$port" 20 "Redis $port" 127.0.0.1 "$PIDFILE"
    ;;
  stop) stop_pidfile "$PIDFILE" "Redis $port" 20 ;;
  status) pid_alive "$PIDFILE" ;;
  *) die "usage: $0 start|stop|status PORT" ;;
esac
