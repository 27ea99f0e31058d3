#!/usr/bin/env bash
# The Python part of stack/install.sh: a virtualenv in $DATA/venv with the pinned requirements,
# redone only when a requirements file changes. All that `make test-fast` needs (no service).
source "$(dirname "$0")/lib.sh"

if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  if is_root; then
    log "installing Debian packages: python3-venv"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  else
    die "missing: python3-venv; install it (as root: apt-get install python3-venv) and run again"
  fi
fi

mkdir -p "$DATA"

# A venv under the data folder, keyed by a hash of the requirement files.
req_hash=$(cat "$ROOT/requirements.txt" "$ROOT/requirements-test.txt" | sha256sum | cut -c1-16)
if [ ! -x "$PY" ] || [ "$(cat "$VENV/.requirements" 2>/dev/null)" != "$req_hash" ]; then
  log "installing Python requirements into $VENV"
  [ -x "$PY" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check \
    -r "$ROOT/requirements.txt" -r "$ROOT/requirements-test.txt"
  echo "$req_hash" > "$VENV/.requirements"
fi
