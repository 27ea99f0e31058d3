"""Reads of a replica's Redis (layout: redirects/keys.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from django_redis import get_redis_connection
from redis import Redis

from redirects import keys


def redis_get() -> Redis:
    """This replica's Redis client (django-redis' pooled connection, REDIS_URL)."""
    return get_redis_connection("default")


def link_get(*, tinyurl: str, redis: Redis | None = None) -> keys.LinkValue | None:
    """The link as this replica holds it; None if unknown (or left in an older format)."""
    raw = (redis or redis_get()).get(keys.link_key(tinyurl))
    return keys.link_value_parse(raw) if raw is not None else None


def link_outcome_get(*, tinyurl: str, redis: Redis | None = None) -> str | int | None:
    """What a redirect of `tinyurl` answers, without counting it (HEAD): the longurl (302), 410
    (expired, by this host's clock) or None (404: unknown or disabled). The same shape as
    clicks.click_outcome."""
    link = link_get(tinyurl=tinyurl, redis=redis)
    if link is None or link.disabled:
        return None
    if link.expired(int(time.time() * 1000)):
        return 410
    return link.longurl


def links_positions_get(*, redis: Redis) -> dict[int, int]:
    return {int(p): int(o) for p, o in redis.hgetall(keys.links_positions_key()).items()}


def links_stats_get(*, redis: Redis) -> dict[str, int | str]:
    """The links consumer's counters (ints) and rejected_last ("<partition>:<offset>")."""
    stats: dict[str, int | str] = {}
    for field, value in redis.hgetall(keys.links_stats_key()).items():
        name = field.decode()
        stats[name] = value.decode() if name == "rejected_last" else int(value)
    return stats


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str | None  # why not ready
    notes: list[str]  # things worth knowing while ready (or not)
    rejected: int  # records consume_links could not apply, ever (stats hash)
    rejected_last: str | None  # "<partition>:<offset>" of the latest


def readiness_get(*, redis: Redis, stale_seconds: float) -> Readiness:
    """Whether this replica should receive traffic, from one Redis round trip.

    Ready when consume_links has caught up (the ready mark) and its heartbeat is at most
    `stale_seconds` old by Redis' own clock (so no clock of another host is involved).
    Raises redis.RedisError if Redis does not answer.
    """
    with redis.pipeline(transaction=False) as pipe:
        pipe.time()
        pipe.mget(keys.links_ready_key(), keys.links_heartbeat_key(),
                  keys.links_kafka_error_key())
        pipe.hmget(keys.links_stats_key(), "rejected", "rejected_last")
        (seconds, micros), (ready, heartbeat, kafka_error), (rejected, rejected_last) = \
            pipe.execute()
    now_ms = seconds * 1000 + micros // 1000
    notes = []
    if kafka_error is not None:
        since, _, error = kafka_error.decode().partition("|")
        notes.append(f"consume_links cannot reach Kafka (for {(now_ms - int(since)) // 1000} s: "
                     f"{error}); serving the links this replica holds")
    reason = None
    if heartbeat is None:
        reason = "consume_links is not running (no heartbeat)"
    elif now_ms - int(heartbeat) > stale_seconds * 1000:
        reason = (f"consume_links is stopped or stuck: its last heartbeat is "
                  f"{(now_ms - int(heartbeat)) / 1000:.0f} s old (limit {stale_seconds:g} s)")
    elif ready != b"1":
        reason = "consume_links has not caught up with the links topic"
    return Readiness(ready=reason is None, reason=reason, notes=notes,
                     rejected=int(rejected or 0),
                     rejected_last=rejected_last.decode() if rejected_last else None)
