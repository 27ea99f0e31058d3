"""The sweep: every SHORTENER_CLICKS_SWEEP_SECONDS a replica marks every counter of its current
incarnation dirty again, so that its reporter's next flush reports all of them, changed or not.

Why: the clicks topic keeps records for a time (retention.ms, 7 days), not a record per counter
for ever (report batches have no per-counter key to compact on: topics/clicks.py). A master that
was away longer than that resumes from the oldest record left (links/totals.py reports the
records it lost); the sweep makes sure those records still hold every live counter's count as of
the last sweep, at most a sweep period old, so the master's totals are exact again once it has
read them (docs/delivery-guarantees.md, and the test there). A sweep sends each counter once:
a million counters are about a thousand records, once a day by default.

When: the time of the last sweep is kept in Redis (keys.clicks_swept_key), so a reporter that
restarts more often than the period still sweeps, and two reporters on one Redis sweep about
once between them (both sweeping is harmless: the master's max() absorbs the duplicates).
"""

from __future__ import annotations

import logging
import time

from redis import Redis

from redirects import keys

logger = logging.getLogger(__name__)

# Keys asked of Redis per SCAN call (a hint, as Redis documents COUNT): short calls between
# the redirects' commands.
SCAN_COUNT = 1000


def sweep_due(*, redis: Redis, every: float, now: float | None = None) -> bool:
    """Whether the last sweep (any reporter's on this Redis) is `every` seconds old or older, or
    there was none. now: Unix time (default: the current time). Raises RedisError."""
    now = time.time() if now is None else now
    last = redis.get(keys.clicks_swept_key())
    try:
        return last is None or now - float(last) >= every
    except ValueError:  # not a number: written by hand; sweep, which writes a good one
        return True


def counters_sweep(*, redis: Redis, now: float | None = None) -> int:
    """Mark every counter of the current incarnation dirty and record the sweep's time; returns
    how many were marked. Counters of earlier incarnations are not swept: they are dirty or in
    flight until reported, and deleted then (redirects/reporter.py, ACK_SCRIPT). Raises
    RedisError (then nothing records the sweep, and the next round tries again)."""
    incarnation = redis.get(keys.clicks_incarnation_key())
    marked = 0
    if incarnation is not None:
        prefix = keys.clicks_counter_prefix()
        members: list[str] = []
        pattern = prefix + keys.clicks_member(incarnation=incarnation.decode(), tinyurl="*")
        for key in redis.scan_iter(match=pattern, count=SCAN_COUNT):
            members.append(key.decode()[len(prefix):])
            if len(members) >= SCAN_COUNT:
                marked += redis.sadd(keys.clicks_dirty_key(), *members)
                members = []
        if members:
            marked += redis.sadd(keys.clicks_dirty_key(), *members)
    redis.set(keys.clicks_swept_key(), repr(time.time() if now is None else now))
    logger.info("click counters swept: %d marked dirty for the next flush", marked)
    return marked
