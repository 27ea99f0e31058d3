"""Reads of a replica's Redis."""

from __future__ import annotations

from django_redis import get_redis_connection
from redis import Redis

from redirects import keys


def redis_get() -> Redis:
    """This replica's Redis client (django-redis' pooled connection, REDIS_URL)."""
    return get_redis_connection("default")


def link_target_get(*, tinyurl: str, redis: Redis | None = None) -> str | None:
    value = (redis or redis_get()).get(keys.link_key(tinyurl))
    return value.decode() if value is not None else None


def links_positions_get(*, redis: Redis) -> dict[int, int]:
    return {int(p): int(o) for p, o in redis.hgetall(keys.links_positions_key()).items()}


def links_stats_get(*, redis: Redis) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in redis.hgetall(keys.links_stats_key()).items()}
