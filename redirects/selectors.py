"""Reads of a replica's Redis (layout: redirects/keys.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from django_redis import get_redis_connection
from redis import Redis, RedisError

from redirects import counting, keys
from redirects.pipelining import PipelinedRedis


def redis_get() -> Redis:
    """This replica's Redis client (django-redis' pooled connection, REDIS_URL)."""
    return get_redis_connection("default")


def link_target_parse(raw: bytes | str | None, *, now_ms: int | None = None) -> str | int | None:
    """What a link key's value means for a HEAD request, in counting.click_outcome()'s terms (the
    same answer a GET gives, without counting): the longurl (302), counting.GONE (410: expired),
    counting.Protected (a password-protected link: its form) or None (404: unknown, disabled, or
    a value in another format).

    raw: the value of keys.link_key(tinyurl) (keys.LinkValue's encoding, parsed by
    keys.link_value_parse), or None when the key is absent. now_ms: ms since the Unix epoch to
    judge the expiry by; by default this host's clock (CLICK_SCRIPT uses Redis' clock: the two
    may differ by the hosts' clock skew at the very moment of expiry).
    """
    if raw is None:
        return None
    link = keys.link_value_parse(raw)
    if link is None or link.disabled:
        return None
    if link.expired(int(time.time() * 1000) if now_ms is None else now_ms):
        return counting.GONE
    if link.password_hash is not None:
        return counting.Protected(link.password_hash)
    return link.longurl


def link_target_get(*, tinyurl: str, redis: Redis | None = None) -> str | int | None:
    """The link's outcome without counting a click (HEAD, the Django view's):
    link_target_parse() of its value, or counting.LOADING as CLICK_SCRIPT answers it: after a
    restart of Redis that kept data, until consume_links has checked it (the restarted mark,
    read with the link in one MGET), and for a missing key while the replica is not ready (a
    second round trip, on a miss only). Raises RedisError when Redis is away."""
    redis = redis or redis_get()
    return link_target_outcome(redis.mget(link_target_keys(tinyurl)),
                               lambda: redis.exists(keys.links_ready_key()))


async def link_target_get_async(*, redis: PipelinedRedis, tinyurl: str) -> str | int | None:
    """link_target_get through the pipelined client (the served replica's HEAD,
    redirects/asgi.py)."""
    got = await redis.execute("MGET", *link_target_keys(tinyurl))
    if got[0] is None and not got[1]:
        ready = await redis.execute("EXISTS", keys.links_ready_key())
        return link_target_outcome(got, lambda: ready)
    return link_target_outcome(got, lambda: True)


def link_target_keys(tinyurl: str) -> list[str]:
    """What a HEAD reads in one MGET: the link's value and the restarted mark."""
    return [keys.link_key(tinyurl), keys.links_restarted_key()]


def link_target_outcome(got: list, ready: Callable[[], object]) -> str | int | None:
    """link_target_parse() of an MGET of link_target_keys, or counting.LOADING (see
    link_target_get); `ready` is asked only for a missing link."""
    raw, restarted = got
    if restarted:
        return counting.LOADING
    if raw is None and not ready():
        return counting.LOADING
    return link_target_parse(raw)


def links_positions_get(*, redis: Redis) -> dict[int, int]:
    """Partition -> stored position (the hash's other field, topic_id, left out)."""
    return {int(p): int(o) for p, o in redis.hgetall(keys.links_positions_key()).items()
            if p.isdigit()}


def links_topic_id_get(*, redis: Redis) -> str | None:
    """The id of the links topic the stored positions belong to; None if none is stored."""
    raw = redis.hget(keys.links_positions_key(), "topic_id")
    return raw.decode() if raw else None


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
    # counting.writes_refused's label while Redis refuses writes (oom, misconf, readonly), else None
    writes_refused: str | None = None


def readiness_get(*, redis: Redis, stale_seconds: float) -> Readiness:
    """Whether this replica should receive traffic, from one Redis round trip.

    Ready when Redis accepts writes, consume_links has caught up (the ready mark) and its
    heartbeat is at most `stale_seconds` old by Redis' own clock (so no clock of another host is
    involved).

    A Redis that refuses writes (counting.writes_refused: memory or disk full, a read-only
    replica) makes the replica not ready, whatever else holds: it still answers every redirect
    that reaches it, but counts none of their clicks, and consume_links can apply no link
    published since (a takedown included), as when consume_links is stuck. Out of service, the
    load balancer sends those redirects to a replica that counts them; any that still reach it
    are answered as before (302/404/410), never 503 but for the password form's POST
    (docs/delivery-guarantees.md, "A Redis that
    refuses writes", weighs this).
    The write check is a SETRANGE that changes nothing (keys.writes_probe_key).
    Not ready either while the server's run_id (INFO server) is not the one the last
    incarnation check stored (redirects/incarnation.py): a Redis restarted, restored from a
    backup or new, whose ready mark and heartbeat may be the backup's, until the check has run
    (the web's next connection, consume_links, report_clicks) and consume_links has caught up.
    Read only: the check itself is left to them. Found by a tester: /readyz said 200 from a
    restored backup's marks while every link was about to be answered 503.
    Raises redis.RedisError if Redis does not answer.
    """
    with redis.pipeline(transaction=False) as pipe:
        pipe.time()
        pipe.mget(keys.links_ready_key(), keys.links_heartbeat_key(),
                  keys.links_kafka_error_key(), keys.clicks_runid_key())
        pipe.hmget(keys.links_stats_key(), "rejected", "rejected_last")
        pipe.info("server")
        pipe.setrange(keys.writes_probe_key(), 0, "")
        # Error replies come back in place (a refused write is an answer, not an outage).
        replies = pipe.execute(raise_on_error=False)
    for reply in replies[:4]:
        if isinstance(reply, Exception):
            raise reply
    ((seconds, micros), (ready, heartbeat, kafka_error, run_id_checked),
     (rejected, rejected_last), server, probe) = replies
    refused = counting.writes_refused(probe) if isinstance(probe, Exception) else None
    now_ms = seconds * 1000 + micros // 1000
    notes = []
    if kafka_error is not None:
        since, _, error = kafka_error.decode().partition("|")
        notes.append(f"consume_links cannot reach Kafka (for {(now_ms - int(since)) // 1000} s: "
                     f"{error}); serving the links this replica holds")
    reason = None
    if refused is not None:
        # Redis' own words, first sentence (a MISCONF reply runs to several).
        said = str(probe).split(". ")[0].rstrip(".")
        reason = (f"Redis refuses writes ({refused}: {said}): redirects are answered from the "
                  "links held, but their clicks are not counted "
                  "(shortener_clicks_uncounted_total) and consume_links cannot apply links "
                  "published since")
    elif heartbeat is None:
        reason = "consume_links is not running (no heartbeat)"
    elif run_id_checked is None or run_id_checked.decode() != server["run_id"]:
        reason = ("Redis restarted, was restored or is new, and what it holds has not been "
                  "checked yet: every link answered 503 until consume_links has")
    elif now_ms - int(heartbeat) > stale_seconds * 1000:
        reason = (f"consume_links is stopped or stuck: its last heartbeat is "
                  f"{(now_ms - int(heartbeat)) / 1000:.0f} s old (limit {stale_seconds:g} s)")
    elif ready != b"1":
        reason = "consume_links has not caught up with the links topic"
    return Readiness(ready=reason is None, reason=reason, notes=notes,
                     rejected=int(rejected or 0),
                     rejected_last=rejected_last.decode() if rejected_last else None,
                     writes_refused=refused)


def link_read_uncounted(*, redis: Redis, tinyurl: str, error: RedisError) -> str | int | None:
    """After counting.click_call raised `error`: if it is Redis refusing writes (counting.writes_refused), the
    link's outcome read without counting (link_target_get, as for HEAD) and the lost
    click recorded (counting.click_uncounted); any other error is raised again. Raises RedisError."""
    reason = counting.writes_refused(error)
    if reason is None:
        raise error
    outcome = link_target_get(tinyurl=tinyurl, redis=redis)
    counting.click_uncounted(reason=reason, outcome=outcome, error=error)
    return outcome


async def link_read_uncounted_async(*, redis: PipelinedRedis, tinyurl: str,
                                    error: RedisError) -> str | int | None:
    """link_read_uncounted through the pipelined client (the served replica's GET after
    counting.link_click_async raised `error`)."""
    reason = counting.writes_refused(error)
    if reason is None:
        raise error
    outcome = await link_target_get_async(redis=redis, tinyurl=tinyurl)
    counting.click_uncounted(reason=reason, outcome=outcome, error=error)
    return outcome
