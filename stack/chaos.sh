#!/usr/bin/env bash
# `make chaos MINUTES=10 SEED=7`: a randomized fault schedule against the three-host cluster in
# network namespaces, and the checker's verdict (tools/chaos/run.py). TOPOLOGY=scale: three
# brokers, two masters behind HAProxy, five replicas (testkit/scale.py). Needs root. Installs what
# is missing first; starts its own Kafka and PostgreSQL on free ports (nothing of `make up`'s).
source "$(dirname "$0")/lib.sh"
here="$(cd "$(dirname "$0")" && pwd)"
is_root || die "make chaos needs root (network namespaces)"
"$here/install.sh"
args=(--minutes "${MINUTES:-10}")
[ -z "${SEED:-}" ] || args+=(--seed "$SEED")
[ -z "${TOPOLOGY:-}" ] || args+=(--topology "$TOPOLOGY")
cd "$ROOT"
exec "$PY" -m tools.chaos "${args[@]}"
