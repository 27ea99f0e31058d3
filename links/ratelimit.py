"""Rate limiting of /create with the `limits` library, its counters in a store that every
gunicorn worker shares.

`limits` (well kept, used by Flask-Limiter and SlowAPI) provides the notation
("100/second;30000/hour"), the strategies and storages for Redis, Memcached and MongoDB, none of
which the master runs. `DatabaseStorage` below is a `limits` storage on the master's own
PostgreSQL: the fixed-window counter is one `INSERT ... ON CONFLICT DO UPDATE ... RETURNING`, a
single atomic round trip per limit, on an UNLOGGED table (no write-ahead log, so no disk flush
per /create). Django's database cache was the other candidate; its `incr` is a read and a write
(not atomic between workers) and every write counts the whole table to cull it.

Fixed windows start at a client's first request and let at most the limit through per window;
a client may get up to twice the limit across a window's edge (the `limits` documentation,
"Fixed Window"), which is what one atomic counter can do.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time

from django.conf import settings
from django.db import DatabaseError, connection
from limits import RateLimitItem, parse_many
from limits.storage import Storage, storage_from_string
from limits.strategies import FixedWindowRateLimiter

logger = logging.getLogger(__name__)

TABLE = "links_ratelimitcounter"
# Expired counters are deleted by one of every this many increments in a process: the table
# holds one row per client and limit, so it stays small without a cleaning job.
SWEEP_EVERY = 1000


class DatabaseStorage(Storage):
    """A `limits` storage on the Django database connection of the calling thread (the
    request's own connection: no pool or connection of its own). Counters live in
    links_ratelimitcounter (links.models.RateLimitCounter)."""

    STORAGE_SCHEME = ["shortener+database"]

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self._calls = itertools.count(1)

    @property
    def base_exceptions(self) -> type[Exception]:
        return DatabaseError

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        """Add `amount` to the counter; a counter past its expiry starts again from `amount`
        with a new expiry `expiry` seconds from now. Returns the new count."""
        with connection.cursor() as cursor:
            if next(self._calls) % SWEEP_EVERY == 0:
                cursor.execute(f"DELETE FROM {TABLE} WHERE expires_at < now()")
            cursor.execute(
                f"INSERT INTO {TABLE} AS c (key, count, expires_at) "
                "VALUES (%s, %s, now() + make_interval(secs => %s)) "
                "ON CONFLICT (key) DO UPDATE SET "
                "count = CASE WHEN c.expires_at <= now() THEN excluded.count "
                "ELSE c.count + excluded.count END, "
                "expires_at = CASE WHEN c.expires_at <= now() THEN excluded.expires_at "
                "ELSE c.expires_at END "
                "RETURNING count",
                [key, amount, expiry],
            )
            return cursor.fetchone()[0]

    def get(self, key: str) -> int:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count FROM {TABLE} WHERE key = %s AND expires_at > now()",
                           [key])
            row = cursor.fetchone()
        return row[0] if row else 0

    def get_expiry(self, key: str) -> float:
        """When the counter's window ends, in seconds since the epoch (now if none)."""
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT extract(epoch FROM expires_at) FROM {TABLE} "
                           "WHERE key = %s AND expires_at > now()", [key])
            row = cursor.fetchone()
        return float(row[0]) if row else time.time()

    def check(self) -> bool:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            return True
        except DatabaseError:
            return False

    def reset(self) -> int | None:
        with connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {TABLE}")
            return cursor.rowcount

    def clear(self, key: str) -> None:
        with connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {TABLE} WHERE key = %s", [key])


class _Limiter:
    def __init__(self, limits_text: str, storage_text: str) -> None:
        self.items: list[RateLimitItem] = parse_many(limits_text) if limits_text.strip() else []
        storage = (DatabaseStorage() if storage_text == "database"
                   else storage_from_string(storage_text))
        self.strategy = FixedWindowRateLimiter(storage)
        self.storage = storage


_lock = threading.Lock()
_limiter: tuple[tuple[str, str], _Limiter] | None = None


def _limiter_get() -> _Limiter:
    """The limiter for the current settings (made again if a test overrides them)."""
    global _limiter
    config = (settings.SHORTENER_CREATE_RATE_LIMIT, settings.SHORTENER_RATE_LIMIT_STORAGE)
    current = _limiter
    if current is None or current[0] != config:
        with _lock:
            current = (config, _Limiter(*config))
            _limiter = current
    return current[1]


def create_rate_limit_hit(*, client: str, scope: str = "create") -> float | None:
    """Count one /create of `client` against every configured limit.

    `scope` names the budget counted: "create" for every request that makes a link (PUT /create,
    the JSON API's creates: one budget, so no path is a way around another's), "api" for the
    JSON API's other operations (links/api/), whose reads must not use up a client's creates.

    Returns None if it is within them, else the seconds until the client may try again (the
    end of the exhausted window, at least 1). A store that fails lets the request through
    (logged): limits protect the service, they must not take /create down with them.
    """
    # The user prefix, so that a store shared by several users (a Redis) keeps them apart.
    identifiers = (settings.SHORTENER_USER, scope, client)
    try:
        limiter = _limiter_get()
        for item in limiter.items:
            if not limiter.strategy.hit(item, *identifiers):
                reset_at = limiter.strategy.get_window_stats(item, *identifiers).reset_time
                return max(1.0, math.ceil(reset_at - time.time()))
    except Exception as exc:  # noqa: BLE001 - any store failure: let the request through
        logger.warning("rate limit store failed, not limiting: %r", exc)
        # A connection that PostgreSQL dropped stays half-open in Django until the request
        # ends: close it, so that the request's own queries reconnect (or fail as "database
        # unavailable", 503) instead of meeting "connection already closed".
        if connection.connection is not None and not connection.in_atomic_block \
                and not connection.is_usable():
            connection.close()
    return None


def create_rate_limit_take(*, client: str, cost: int,
                           scope: str = "create") -> tuple[int, float | None]:
    """Count up to `cost` creates of `client` (PUT /create/bulk: one per item) against every
    configured limit; returns (granted, retry_after): how many of them the client's budget
    allows now (the first `granted` items of the call go ahead), and, if that is fewer than
    `cost`, the seconds until it may try the others (the end of the exhausted window, at least
    1), else None.

    With `limits`: the room left in each limit (get_window_stats(...).remaining) bounds the
    grant, then one hit(..., cost=granted) per limit takes it at once, as `cost` single
    /create would. A concurrent call of the same client that took the room between the read
    and the hit makes the hit fail (the counter is past the limit, as after a refused /create):
    then nothing is granted, so never more links are created than the limit allows. A store
    that fails grants everything (logged), as create_rate_limit_hit does. `scope`: as there.
    """
    identifiers = (settings.SHORTENER_USER, scope, client)
    try:
        limiter = _limiter_get()
        if not limiter.items or cost <= 0:
            return cost, None
        strategy = limiter.strategy
        granted = cost
        for item in limiter.items:
            granted = min(granted, strategy.get_window_stats(item, *identifiers).remaining)
        if granted > 0:
            for item in limiter.items:
                if not strategy.hit(item, *identifiers, cost=granted):
                    granted = 0
                    break
        if granted == cost:
            return granted, None
        stats = [strategy.get_window_stats(item, *identifiers) for item in limiter.items]
        exhausted = [s for s in stats if s.remaining <= 0] or stats
        reset_at = max(s.reset_time for s in exhausted)
        return granted, max(1.0, math.ceil(reset_at - time.time()))
    except Exception as exc:  # noqa: BLE001 - any store failure: let the items through
        logger.warning("rate limit store failed, not limiting: %r", exc)
        if connection.connection is not None and not connection.in_atomic_block \
                and not connection.is_usable():
            connection.close()
    return cost, None
