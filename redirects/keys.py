"""Redis key names of a replica. Every key starts with the user prefix: the Redis may be shared."""

from __future__ import annotations

from django.conf import settings


def link_key(tinyurl: str) -> str:
    """String: the longurl of one link."""
    return f"{settings.SHORTENER_USER}:link:{tinyurl}"


def links_positions_key() -> str:
    """Hash: links-topic partition -> offset of the next record to apply.

    Written in the same transaction as the links it follows, so it is never ahead of or behind
    the data. Its absence means "nothing applied yet": read the topic from the start.
    """
    return f"{settings.SHORTENER_USER}:links:positions"


def links_stats_key() -> str:
    """Hash: counters of the links consumer (applied, removed, skipped), updated with the data."""
    return f"{settings.SHORTENER_USER}:links:stats"
