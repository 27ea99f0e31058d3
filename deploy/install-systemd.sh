#!/usr/bin/env bash
# Install the systemd units of one role on this host:
#   sudo deploy/install-systemd.sh master|replica [USER]
# Renders deploy/systemd/*.service with this checkout's path and the account (default
# "shortener", created if missing), installs them with the role's target, and enables the
# target. The environment file /etc/shortener/<role>.env must exist (see README, .env.example).
# DESTDIR=<dir> renders into <dir> instead of /etc/systemd/system and touches nothing else.
set -euo pipefail
role=${1:?usage: $0 master|replica [USER]}
user=${2:-shortener}
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${DESTDIR:-/etc/systemd/system}"
case "$role" in
  master) units="shortener-master-web shortener-outbox shortener-consume-clicks" ;;
  replica) units="shortener-replica-web shortener-consume-links shortener-report-clicks" ;;
  *) echo "role must be master or replica" >&2; exit 2 ;;
esac
mkdir -p "$dest"
for unit in $units; do
  sed -e "s|@ROOT@|$root|g" -e "s|@USER@|$user|g" "$root/deploy/systemd/$unit.service" \
    > "$dest/$unit.service"
done
cp "$root/deploy/systemd/shortener-$role.target" "$dest/"
# The master's hourly pruning: a oneshot service started by its timer (not by the target).
timers=""
if [ "$role" = master ]; then
  timers="shortener-prune"
  sed -e "s|@ROOT@|$root|g" -e "s|@USER@|$user|g" "$root/deploy/systemd/shortener-prune.service" \
    > "$dest/shortener-prune.service"
  cp "$root/deploy/systemd/shortener-prune.timer" "$dest/"
fi
if [ -z "${DESTDIR:-}" ]; then
  id "$user" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$user"
  [ -f "/etc/shortener/$role.env" ] || echo "warning: /etc/shortener/$role.env is missing" >&2
  systemctl daemon-reload
  systemctl enable "shortener-$role.target"
  for unit in $units; do systemctl enable "$unit.service"; done
  for timer in $timers; do systemctl enable "$timer.timer"; done
  echo "installed; start with: systemctl start shortener-$role.target"
fi
