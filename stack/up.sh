#!/usr/bin/env bash
# `make up`: install what is missing, start the embedded services, prepare the database and the
# topics, then run the local cluster (stack/Procfile) in the foreground under supervisord: a
# process that exits is restarted (with back-off) and its exit status printed, the others keep
# running. Ctrl-C stops all of it, then the services.
source "$(dirname "$0")/lib.sh"
here="$(cd "$(dirname "$0")" && pwd)"
# supervisord's configuration (rendered from the Procfile), socket, pid file and log.
RUN="$DATA/supervisor"
pid_alive "$RUN/supervisord.pid" \
  && die "a local cluster is already running (supervisord pid $(cat "$RUN/supervisord.pid")); stop it with Ctrl-C in its terminal, or make down"

# The two local replicas' Redis, and the cluster's web and metrics ports (stack/Procfile).
read -r REDIS_PORT_1 REDIS_PORT_2 _ <<< "$REDIS_PORTS"
[ -n "${REDIS_PORT_2:-}" ] || die "SHORTENER_REDIS_PORTS=\"$REDIS_PORTS\": the local cluster's two replicas need two ports"
read -r WEB_PORT_MASTER WEB_PORT_1 WEB_PORT_2 _ <<< "$WEB_PORTS"
[ -n "${WEB_PORT_2:-}" ] || die "SHORTENER_WEB_PORTS=\"$WEB_PORTS\": the master and two replicas need three ports"
read -r METRICS_PORT_CLICKS METRICS_PORT_OUTBOX METRICS_PORT_LINKS_1 METRICS_PORT_REPORT_1 \
  METRICS_PORT_LINKS_2 METRICS_PORT_REPORT_2 _ <<< "$METRICS_PORTS"
[ -n "${METRICS_PORT_REPORT_2:-}" ] || die "SHORTENER_METRICS_PORTS=\"$METRICS_PORTS\": the six commands need six ports"
# The ports first: a taken one fails at once, not after an install (nor as a program that
# supervisord restarts until it gives up).
"$here/services.sh" check
for p in $WEB_PORTS; do port_free "$p" SHORTENER_WEB_PORTS; done
for p in $METRICS_PORTS; do port_free "$p" SHORTENER_METRICS_PORTS; done
"$here/install.sh"
# Only the services this run starts are stopped when it ends: one that already ran (another
# checkout's, a `make test` beside it) is not this run's to stop.
started="$("$here/services.sh" stopped | tr '\n' ' ')"
trap '[ -z "$started" ] || "$here/services.sh" stop $started' EXIT
"$here/services.sh" start

export VENV REDIS_PORT_1 REDIS_PORT_2 WEB_PORT_MASTER WEB_PORT_1 WEB_PORT_2 METRICS_PORT_CLICKS \
  METRICS_PORT_OUTBOX METRICS_PORT_LINKS_1 METRICS_PORT_REPORT_1 METRICS_PORT_LINKS_2 METRICS_PORT_REPORT_2
export SHORTENER_USER="${SHORTENER_USER:-$(id -un)}"
# The commands' metrics on the loopback only, like the web servers: a local cluster is for this
# host (a deployment's units serve them on every interface, for a Prometheus elsewhere).
export SHORTENER_METRICS_ADDR="${SHORTENER_METRICS_ADDR:-127.0.0.1}"
# The master's secret key: made once, kept in the ignored data folder, never in the repository.
if [ ! -s "$DATA/secret_key" ]; then
  "$PY" -c 'import secrets; print(secrets.token_urlsafe(50))' > "$DATA/secret_key"
  chmod 600 "$DATA/secret_key"
fi
DJANGO_SECRET_KEY="$(cat "$DATA/secret_key")"
export DJANGO_SECRET_KEY

cd "$ROOT"
"$here/postgres.sh" createdb "$SHORTENER_USER"
SHORTENER_ROLE=master "$PY" manage.py migrate --no-input -v0
SHORTENER_ROLE=master "$PY" manage.py collectstatic --no-input -v0
SHORTENER_ROLE=master "$PY" manage.py kafka_topics

cat <<MSG

  The local cluster is starting (user prefix: $SHORTENER_USER).
    master   http://127.0.0.1:$WEB_PORT_MASTER   PUT /create, admin at /admin/
    replicas http://127.0.0.1:$WEB_PORT_1 and http://127.0.0.1:$WEB_PORT_2   GET /<tinyurl>

  Try it:
    curl -X PUT http://127.0.0.1:$WEB_PORT_MASTER/create -d '{"longurl": "https://example.com/"}'
    curl -i http://127.0.0.1:$WEB_PORT_1/<the tinyurl it returned>

  Admin user (every address and name as this cluster's; manage.py reads them from the
  environment, so a command run by hand needs the same):
    SHORTENER_ROLE=master SHORTENER_USER=$SHORTENER_USER SHORTENER_PG_PORT=$PG_PORT \\
      DJANGO_SECRET_KEY=\$(cat $DATA/secret_key) $PY manage.py createsuperuser
  A process that exits is restarted; see them all, or restart one:
    $VENV/bin/supervisorctl -c $RUN/supervisord.conf status
  Ctrl-C stops the cluster.

MSG
mkdir -p "$RUN"
"$PY" "$here/supervisor/render.py" "$here/Procfile" "$ROOT" "$RUN" > "$RUN/supervisord.conf"
# In the foreground: Ctrl-C reaches supervisord alone (it starts each program in a process group
# of its own: supervisor 4.3.0, supervisor/process.py, os.setpgrp), which stops every program
# and exits (tests/stack/test_supervisor.py); the EXIT trap then stops the services.
"$VENV/bin/supervisord" -c "$RUN/supervisord.conf"
