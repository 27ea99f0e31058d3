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
    for (tcp_keepalives_idle 5 s, interval 2 s, count 3: about 11 s), then frees the lock;
  - a holder that is alive but stopped (SIGSTOP, a hung process: its kernel still answers the
    keepalives): it checks its lock every SHORTENER_LEADER_CHECK_SECONDS, and a check is a
    query, which pg_stat_activity dates (query_start). A standby that finds the holder's last
    check older than SHORTENER_LEADER_STALE_SECONDS (default 15 s) ends the holder's session
    (pg_terminate_backend: the same database user may) and takes the lock.
The holder's check has a deadline (CHECK_DEADLINE: the larger of 5 s and three check
intervals), enforced on this side of the connection: a session whose server went away behind a
proxy that still accepts bytes never answers. A check that fails or passes its deadline (the
session ended: PostgreSQL restarted, the connection dropped, an administrator's or a standby's
pg_terminate_backend) means it may no longer be the only one, so it stops its job and the
command exits non-zero; the service manager starts it again, as a standby until it wins the lock.

Exclusivity is for efficiency, not correctness: for the seconds in which an old holder has not
yet noticed its loss, two may work. Nothing a replica or a total shows is doubled by that: a
re-sent link is a version a replica already holds (ignored), consume_clicks applies a batch only
at the position PostgreSQL holds for it, under that row's lock (links/totals.py), and prune's
steps move rows with DELETE ... RETURNING and stop at the first step after a lost lock.
Advisory locks belong to one database, so deployments with their own databases never contend.
"""

from __future__ import annotations

import hashlib
import logging
import os
import select
import socket
import threading
import time

import psycopg2
from django.conf import settings
from django.db import connections
from psycopg2 import extensions

from runtime.metrics import LEADER

logger = logging.getLogger(__name__)

# Server-side keepalives for the lock's session (PostgreSQL's tcp_keepalives_* settings, which a
# session may set for itself): how soon the server frees the lock of a holder that vanished
# without closing its connection. The client side asks for the same (libpq's parameters), unless
# DATABASE_URL sets its own.
_KEEPALIVE_OPTIONS = "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3"
_CLIENT_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
                      "keepalives_count": 3}
# How often a standby says again that PostgreSQL is unreachable (a wrong DATABASE_URL must not
# look like a passing outage in the log), seconds.
_UNREACHABLE_LOG_SECONDS = 60.0


class LockTimeout(psycopg2.OperationalError):
    """A query on the lock's session passed its deadline."""


def lock_key(job: str) -> int:
    """The advisory lock's key for `job`: a signed 64-bit integer (pg_try_advisory_lock(bigint))
    from the job's name, the same on every host."""
    digest = hashlib.blake2b(f"shortener:{job}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _lock_where(key: int) -> tuple[str, list[int]]:
    """pg_locks' columns for an advisory lock on a bigint key in this database."""
    return ("l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s AND "
            "l.objsubid = 1 AND l.database = (SELECT oid FROM pg_database "
            "WHERE datname = current_database())",
            [(key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF])


class Leadership:
    """The advisory lock of one job, held on a connection of its own.

    acquire(stop) waits until this process holds it (True) or `stop` is set (False);
    watch(stop) then checks it in a thread and sets `stop` (and `lost`, the reason) if it is
    gone; release() closes the connection, which frees the lock. try_once() takes it without
    waiting (one-shot jobs).
    """

    def __init__(self, job: str, *, retry_seconds: float | None = None,
                 check_seconds: float | None = None, stale_seconds: float | None = None) -> None:
        self.job = job
        self.key = lock_key(job)
        self.retry_seconds = (settings.SHORTENER_LEADER_RETRY_SECONDS if retry_seconds is None
                              else retry_seconds)
        self.check_seconds = (settings.SHORTENER_LEADER_CHECK_SECONDS if check_seconds is None
                              else check_seconds)
        self.stale_seconds = (settings.SHORTENER_LEADER_STALE_SECONDS if stale_seconds is None
                              else stale_seconds)
        self.deadline = max(5.0, 3 * self.check_seconds)  # CHECK_DEADLINE, seconds
        self.lost: str | None = None
        self._conn = None
        self._watcher: threading.Thread | None = None

    # --- the session, with a deadline on everything -----------------------------------------

    def _wait(self, conn, deadline: float) -> None:
        """Drive an asynchronous connection's pending work (psycopg2's poll loop) until done;
        LockTimeout at `deadline` (time.monotonic())."""
        while True:
            state = conn.poll()
            if state == extensions.POLL_OK:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise LockTimeout(f"no answer within {self.deadline:.0f}s")
            fd = conn.fileno()
            if state == extensions.POLL_READ:
                select.select([fd], [], [], left)
            elif state == extensions.POLL_WRITE:
                select.select([], [fd], [], left)

    def _connect(self):
        # A connection outside Django's per-thread ones: nothing the job does (closing its
        # connections after an error) may end the session that holds the lock. Asynchronous, so
        # that every wait on it has a deadline of ours (_wait).
        params = connections.create_connection("default").get_connection_params()
        options = " ".join(filter(None, [params.pop("options", ""), _KEEPALIVE_OPTIONS]))
        conn = psycopg2.connect(**{**_CLIENT_KEEPALIVES, **params}, options=options, async_=1)
        try:
            self._wait(conn, time.monotonic() + self.deadline)
        except BaseException:
            self._abandon(conn)
            raise
        return conn

    def _query(self, sql: str, params: list) -> tuple:
        """One row of `sql` on the lock's session (opened if need be), within the deadline."""
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        try:
            cursor = self._conn.cursor()
            cursor.execute(sql, params)
            self._wait(self._conn, time.monotonic() + self.deadline)
            return cursor.fetchone()
        except BaseException:
            self._close()
            raise

    @staticmethod
    def _abandon(conn) -> None:
        """Close a connection whose server may never answer: its socket is shut down first, so
        that nothing waits on it (closing alone may wait for a thread blocked on it)."""
        try:
            sock = socket.socket(fileno=os.dup(conn.fileno()))
            try:
                sock.shutdown(socket.SHUT_RDWR)
            finally:
                sock.close()
        except (OSError, psycopg2.Error, ValueError):
            pass
        try:
            conn.close()
        except psycopg2.Error:
            pass

    def _close(self) -> None:
        if self._conn is not None:
            self._abandon(self._conn)
            self._conn = None

    # --- taking the lock ----------------------------------------------------------------------

    def _try(self) -> bool:
        return bool(self._query("SELECT pg_try_advisory_lock(%s)", [self.key])[0])

    def _holder(self) -> tuple[int, str, float] | None:
        """The session holding the lock: (pid, "address pid N (application)", seconds since its
        last query began, i.e. its holder's last check), or None."""
        where, params = _lock_where(self.key)
        row = self._query(
            "SELECT a.pid, a.client_addr, a.application_name, "
            "EXTRACT(EPOCH FROM now() - a.query_start) FROM pg_locks l "
            f"JOIN pg_stat_activity a ON a.pid = l.pid WHERE {where}", params)
        if row is None:
            return None
        pid, addr, name, age = row
        return pid, f"{addr or 'local socket'} pid {pid} ({name or 'no name'})", float(age or 0)

    def _fence_stale(self) -> str:
        """Who holds the lock; its session ended if the holder stopped checking it."""
        holder = self._holder()
        if holder is None:
            return "none"
        pid, who, age = holder
        if age > self.stale_seconds:
            logger.warning("standby for %s: the holder (%s) has not checked its lock for %.0fs "
                           "(stopped or hung): ending its session", self.job, who, age)
            self._query("SELECT pg_terminate_backend(%s)", [pid])
        return who

    def acquire(self, stop: threading.Event) -> bool:
        """Wait until this process holds the job's lock (True) or `stop` is set (False).
        PostgreSQL unreachable is retried at the same pace (logged once a minute)."""
        said_standby, said_down_at = False, None
        LEADER.labels(self.job).set(0)
        while not stop.is_set():
            try:
                if self._try():
                    LEADER.labels(self.job).set(1)
                    logger.info("leading %s: this process holds its lock; the other master "
                                "hosts' instances wait", self.job)
                    return True
                said_down_at = None
                who = self._fence_stale()
                if not said_standby:
                    logger.info("standby for %s: another instance holds its lock (%s); trying "
                                "every %.1fs", self.job, who, self.retry_seconds)
                    said_standby = True
            except psycopg2.Error as exc:
                self._close()
                if said_down_at is None or time.monotonic() - said_down_at > \
                        _UNREACHABLE_LOG_SECONDS:
                    logger.warning("standby for %s: PostgreSQL unreachable (%s); retrying every "
                                   "%.1fs", self.job, str(exc).strip() or type(exc).__name__,
                                   self.retry_seconds)
                    said_down_at = time.monotonic()
            stop.wait(self.retry_seconds)
        self._close()
        return False

    def try_once(self) -> bool:
        """Take the lock if it is free (True), without waiting; False if another instance
        holds it. psycopg2.Error if PostgreSQL cannot be reached. For one-shot jobs (prune)."""
        if self._try():
            return True
        logger.info("%s skipped: another instance holds its lock (%s)", self.job,
                    self._fence_stale())
        self._close()
        return False

    # --- holding it -------------------------------------------------------------------------

    def _held(self) -> bool:
        where, params = _lock_where(self.key)
        row = self._query(f"SELECT count(*) FROM pg_locks l WHERE {where} AND "
                          "l.pid = pg_backend_pid()", params)
        return row[0] == 1

    def watch(self, stop: threading.Event) -> None:
        """Check the lock every check_seconds in a daemon thread until `stop`; when it is gone
        (or a check fails or passes its deadline), set `lost` and `stop` (the job then winds
        down as on SIGTERM)."""
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
            self._watcher.join(timeout=self.check_seconds + self.deadline + 1)
        self._close()
        LEADER.labels(self.job).set(0)
