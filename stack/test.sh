#!/usr/bin/env bash
# `make test`: install what is missing, start the services the tests need (and stop afterwards
# the ones this run started), run the whole suite. Arguments go to pytest.
source "$(dirname "$0")/lib.sh"
here="$(cd "$(dirname "$0")" && pwd)"

# The ports first: a taken one fails at once, not after an install.
"$here/services.sh" check
"$here/install.sh"
# Only the services this run starts are stopped at its end (see services.sh stopped).
started="$("$here/services.sh" stopped | tr '\n' ' ')"
trap '[ -z "$started" ] || "$here/services.sh" stop $started' EXIT
"$here/services.sh" start

# A prefix of this run's own, so that tests never meet the topics, groups, keys or database of a
# `make up` cluster or of an earlier run on the same services.
export SHORTENER_USER="t$(date +%s)$$"
export SHORTENER_ROLE=master
export DJANGO_SECRET_KEY="test-only-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export SHORTENER_TEST_DATA="$DATA/test"
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
set +e
"$PY" -m pytest "$@"
rc=$?
set -e
exit $rc
