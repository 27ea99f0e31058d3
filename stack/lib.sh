# Shared by the stack scripts: where the embedded services keep their data, and small helpers.
# Everything the local stack writes lives under one git-ignored folder, $SHORTENER_DATA.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="${SHORTENER_DATA:-$ROOT/.local}"
VENV="$DATA/venv"
PY="$VENV/bin/python"

# Ports of the embedded default; each one can be moved if something else holds it.
PG_PORT="${SHORTENER_PG_PORT:-5432}"
KAFKA_PORT="${SHORTENER_KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${SHORTENER_KAFKA_CONTROLLER_PORT:-9093}"
# The address the broker listens on and advertises (the namespace tests use a bridge address).
KAFKA_HOST="${SHORTENER_KAFKA_HOST:-127.0.0.1}"
# Addresses PostgreSQL listens on, and a network it trusts besides the loopback (tests only).
PG_LISTEN="${SHORTENER_PG_LISTEN:-127.0.0.1}"
PG_TRUST_CIDR="${SHORTENER_PG_TRUST_CIDR:-}"
REDIS_PORTS="${SHORTENER_REDIS_PORTS:-26379 26380}"
# The local cluster's own ports (`make up`, stack/Procfile): the web servers (master, replica 1,
# replica 2) and the commands' metrics (consume_clicks, the outbox, then links and report of
# replica 1 and of replica 2).
WEB_PORTS="${SHORTENER_WEB_PORTS:-8000 8001 8002}"
METRICS_PORTS="${SHORTENER_METRICS_PORTS:-9103 9104 9111 9112 9121 9122}"
# Exported as resolved, so that every process started from here (manage.py, pytest, the local
# cluster) derives its default addresses from the same ports (shortener_project/settings.py).
export SHORTENER_PG_PORT="$PG_PORT" SHORTENER_KAFKA_PORT="$KAFKA_PORT" \
  SHORTENER_KAFKA_CONTROLLER_PORT="$KAFKA_CONTROLLER_PORT" SHORTENER_REDIS_PORTS="$REDIS_PORTS"

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" = 0 ]; }

# port_open PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/${2:-127.0.0.1}/$1") 2>/dev/null; }

# port_free PORT VARIABLE [HOST]: fail at once, naming the variable that moves the port, when
# something listens on it. Call it only for a service of ours that is not running: our own
# running service on its port is "already running", not a conflict.
port_free() {
  local port=$1 var=$2 host=${3:-127.0.0.1}
  if port_open "$port" "$host"; then
    die "port $port is taken (by another process): set $var to a free port"
  fi
}

# wait_port PORT SECONDS NAME [HOST [PIDFILE]]: wait for a listener, failing with a clear
# message; at once if the process of PIDFILE exits first (it could not start: no use waiting).
# A PIDFILE not written yet (a daemon writes its own) is waited for, not taken for an exit.
wait_port() {
  local port=$1 secs=$2 name=$3 host=${4:-127.0.0.1} pidfile=${5:-} i
  for ((i = 0; i < secs * 10; i++)); do
    port_open "$port" "$host" && return 0
    if [ -n "$pidfile" ] && [ -s "$pidfile" ] && ! pid_alive "$pidfile"; then
      die "$name exited before listening on port $port (see its log under $DATA)"
    fi
    sleep 0.1
  done
  die "$name did not start listening on port $port within ${secs}s (see its log under $DATA)"
}

# pid_alive FILE: true when FILE names a running process.
pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# stop_pidfile FILE NAME SECONDS: SIGTERM, wait for a clean exit, SIGKILL as a last resort.
stop_pidfile() {
  local file=$1 name=$2 secs=${3:-30} pid i
  if ! pid_alive "$file"; then rm -f "$file"; return 0; fi
  pid=$(cat "$file")
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < secs * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$file"; log "$name stopped"; return 0; }
    sleep 0.1
  done
  log "$name did not stop in ${secs}s; killing it"
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$file"
}
