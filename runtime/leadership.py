"""One active instance of a master's background job across master hosts (a standby on each other).

The outbox relay with its audit, consume_clicks and prune run on every master host; a
PostgreSQL session-level advisory lock per job (pg_try_advisory_lock) picks the one that works.
The masters already share that PostgreSQL and cannot work without it, so it adds no new
component and no new way to fail. Kafka's consumer groups would serve consume_clicks alone, not
the relay or prune. A session-level lock is held until its session ends, so PostgreSQL itself
gives it up when the holder dies:
  - a killed process: its socket closes, the server ends the session and frees the lock at once;
    a standby takes it at its next try (SHORTENER_LEADER_RETRY_SECONDS, default 1 s);
  - a host lost (power, cable): the server notices by TCP keepalives, which this session asks
    for (tcp_keepalives_idle 5 s, interval 2 s, count 3: about 11 s), then frees the lock.
The holder checks its lock every SHORTENER_LEADER_CHECK_SECONDS (default 1 s); if the check
fails (its session ended: PostgreSQL restarted, the connection dropped, an administrator's
pg_terminate_backend) it may no longer be the only one, so it stops its job and the command
exits non-zero; the service manager starts it again, as a standby until it wins the lock.

Exclusivity is for efficiency, not correctness: for the few seconds in which an old holder has
not yet noticed its loss, two may work. Nothing a replica or a total shows is doubled by that:
a re-sent link is a version a replica already holds (ignored), and consume_clicks applies a
batch only at the position PostgreSQL holds for it, under that row's lock (links/totals.py).
Advisory locks belong to one database, so deployments with their own databases never contend.
"""

from __future__ import annotations

import hashlib
import logging
import threading

import psycopg2
from django.conf import settings
from django.db import connections

from runtime.metrics import LEADER

logger = logging.getLogger(__name__)

# Server-side keepalives for the lock's session (PostgreSQL's tcp_keepalives_* settings, which a
# session may set for itself): how soon the server frees the lock of a holder that vanished
# without closing its connection. The client side asks for the same, and tcp_user_timeout bounds
# a check whose reply never comes (libpq's parameters).
_KEEPALIVE_OPTIONS = "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3"
_CLIENT_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
                      "keepalives_count": 3, "tcp_user_timeout": 10_000}


def lock_key(job: str) -> int:
    """The advisory lock's key for `job`: a signed 64-bit integer (pg_try_advisory_lock(bigint))
    from the job's name, the same on every host."""
    digest = hashlib.blake2b(f"shortener:{job}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class Leadership:
    """The advisory lock of one job, held on a connection of its own.

    acquire(stop) waits until this process holds it (True) or `stop` is set (False);
    watch(stop) then checks it in a thread and sets `stop` (and `lost`, the reason) if it is
    gone; release() closes the connection, which frees the lock.
    """

    def __init__(self, job: str, *, retry_seconds: float | None = None,
                 check_seconds: float | None = None) -> None:
        self.job = job
        self.key = lock_key(job)
        self.retry_seconds = (settings.SHORTENER_LEADER_RETRY_SECONDS if retry_seconds is None
                              else retry_seconds)
        self.check_seconds = (settings.SHORTENER_LEADER_CHECK_SECONDS if check_seconds is None
                              else check_seconds)
        self.lost: str | None = None
        self._conn = None
        self._watcher: threading.Thread | None = None

    def _connect(self):
        # A connection outside Django's per-thread ones: nothing the job does (closing its
        # connections after an error) may end the session that holds the lock.
        params = connections.create_connection("default").get_connection_params()
        options = " ".join(filter(None, [params.pop("options", ""), _KEEPALIVE_OPTIONS]))
        conn = psycopg2.connect(**params, **_CLIENT_KEEPALIVES, options=options)
        conn.autocommit = True
        return conn

    def _try(self) -> bool:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        with self._conn.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [self.key])
            return bool(cursor.fetchone()[0])

    def _holder(self) -> str:
        """Who holds the lock, for the standby's log line: address and pid of its session."""
        try:
            with self._conn.cursor() as cursor:
                cursor.execute(
                    "SELECT a.client_addr, a.pid, a.application_name FROM pg_locks l "
                    "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
                    "AND l.granted AND l.database = (SELECT oid FROM pg_database "
                    "WHERE datname = current_database()) AND l.classid = %s AND l.objid = %s "
                    "AND l.objsubid = 1",
                    [(self.key >> 32) & 0xFFFFFFFF, self.key & 0xFFFFFFFF])
                row = cursor.fetchone()
        except psycopg2.Error:
            return "unknown"
        return f"{row[0] or 'local socket'} pid {row[1]} ({row[2] or 'no name'})" if row else "none"

    def acquire(self, stop: threading.Event) -> bool:
        """Wait until this process holds the job's lock (True) or `stop` is set (False).
        PostgreSQL unreachable is retried at the same pace (logged once per outage)."""
        said_standby = said_down = False
        LEADER.labels(self.job).set(0)
        while not stop.is_set():
            try:
                if self._try():
                    LEADER.labels(self.job).set(1)
                    logger.info("leading %s: this process holds its lock; the other master "
                                "hosts' instances wait", self.job)
                    return True
                said_down = False
                if not said_standby:
                    logger.info("standby for %s: another instance holds its lock (%s); trying "
                                "every %.1fs", self.job, self._holder(), self.retry_seconds)
                    said_standby = True
            except psycopg2.Error as exc:
                self._close()
                if not said_down:
                    logger.warning("standby for %s: PostgreSQL unreachable (%s); retrying",
                                   self.job, str(exc).strip() or type(exc).__name__)
                    said_down = True
            stop.wait(self.retry_seconds)
        self._close()
        return False

    def try_once(self) -> bool:
        """Take the lock if it is free (True), without waiting; False if another instance
        holds it. psycopg2.Error if PostgreSQL cannot be reached. For one-shot jobs (prune)."""
        try:
            held = self._try()
        except psycopg2.Error:
            self._close()
            raise
        if not held:
            logger.info("%s skipped: another instance holds its lock (%s)", self.job,
                        self._holder())
            self._close()
        return held

    def _held(self) -> bool:
        with self._conn.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND "
                           "pid = pg_backend_pid() AND granted AND classid = %s AND objid = %s "
                           "AND objsubid = 1",
                           [(self.key >> 32) & 0xFFFFFFFF, self.key & 0xFFFFFFFF])
            return cursor.fetchone()[0] == 1

    def watch(self, stop: threading.Event) -> None:
        """Check the lock every check_seconds in a daemon thread until `stop`; when it is gone,
        set `lost` and `stop` (the job then winds down as on SIGTERM)."""
        def run() -> None:
            while not stop.wait(self.check_seconds):
                try:
                    if self._held():
                        continue
                    reason = "the lock is no longer held by this session"
                except psycopg2.Error as exc:
                    reason = f"its session failed: {str(exc).strip() or type(exc).__name__}"
                self.lost = reason
                LEADER.labels(self.job).set(0)
                logger.error("lost the lead of %s (%s): stopping; another master host may "
                             "have taken it", self.job, reason)
                stop.set()
                return

        self._watcher = threading.Thread(target=run, name=f"leader-{self.job}", daemon=True)
        self._watcher.start()

    def release(self) -> None:
        """Free the lock (by closing its session); the watcher ends with the stop."""
        if self._watcher is not None:
            self._watcher.join(timeout=self.check_seconds + 15)
        self._close()
        LEADER.labels(self.job).set(0)

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg2.Error:
                pass
            self._conn = None
