#!/usr/bin/env bash
# `make down`: stop what a `make up` that was killed left running (its supervisord, which stops
# the local cluster's processes first), then the embedded services (or a test run's).
source "$(dirname "$0")/lib.sh"
# supervisord gives each program stopwaitsecs (stack/supervisor/render.py) before SIGKILL.
stop_pidfile "$DATA/supervisor/supervisord.pid" supervisord 60
"$(dirname "$0")/services.sh" stop
