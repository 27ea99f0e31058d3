#!/usr/bin/env bash
# `make down`: stop the embedded services (a `make up` that was killed, or a test run's).
source "$(dirname "$0")/lib.sh"
"$(dirname "$0")/services.sh" stop
