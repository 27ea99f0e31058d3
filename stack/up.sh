#!/usr/bin/env bash
# `make up`: install what is missing, start the embedded services, prepare the database and the
# topics, then run the local cluster in the foreground. Ctrl-C stops all of it.
source "$(dirname "$0")/lib.sh"
here="$(cd "$(dirname "$0")" && pwd)"

"$here/install.sh"
"$here/services.sh" start
trap '"$here/services.sh" stop' EXIT

export VENV
export SHORTENER_USER="${SHORTENER_USER:-$(id -un)}"
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
    master   http://127.0.0.1:8000   PUT /create, admin at /admin/
    replicas http://127.0.0.1:8001 and http://127.0.0.1:8002   GET /<tinyurl>

  Try it:
    curl -X PUT http://127.0.0.1:8000/create -d '{"longurl": "https://example.com/"}'
    curl -i http://127.0.0.1:8001/<the tinyurl it returned>

  Admin user: SHORTENER_ROLE=master DJANGO_SECRET_KEY=\$(cat $DATA/secret_key) \\
              $PY manage.py createsuperuser
  Ctrl-C stops the cluster.

MSG
"$VENV/bin/honcho" -f "$here/Procfile" -d "$ROOT" start
