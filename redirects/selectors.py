"""Reads of a replica's Redis."""

from __future__ import annotations

from django_redis import get_redis_connection
from redis import Redis

from redirects import keys
from redirects.pipelining import PipelinedRedis


def redis_get() -> Redis:
    """This replica's Redis client (django-redis' pooled connection, REDIS_URL)."""
    return get_redis_connection("default")


def link_target_parse(raw: bytes | None) -> str | int | None:
    """What a link key's value means for a HEAD request, in click_outcome()'s terms: the longurl,
    GONE (410) or None (no such link). The value is the longurl as it goes into Location."""
    return raw.decode() if raw is not None else None


def link_target_get(*, tinyurl: str, redis: Redis | None = None) -> str | int | None:
    """The link's target without counting a click (HEAD): link_target_parse() of its value.
    Raises RedisError when Redis is away."""
    return link_target_parse((redis or redis_get()).get(keys.link_key(tinyurl)))


async def link_target_get_async(*, redis: PipelinedRedis, tinyurl: str) -> str | int | None:
    """link_target_get through the pipelined client (the served replica's HEAD)."""
    return link_target_parse(await redis.execute("GET", keys.link_key(tinyurl)))


def links_positions_get(*, redis: Redis) -> dict[int, int]:
    return {int(p): int(o) for p, o in redis.hgetall(keys.links_positions_key()).items()}


def links_stats_get(*, redis: Redis) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in redis.hgetall(keys.links_stats_key()).items()}
