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


def links_ready_key() -> str:
    """String "1" while consume_links is caught up with the topic as it stood when it last
    positioned itself; absent otherwise (also after a wipe). /readyz reads it."""
    return f"{settings.SHORTENER_USER}:links:ready"


def links_stats_key() -> str:
    """Hash: counters of the links consumer (applied, removed, skipped), updated with the data."""
    return f"{settings.SHORTENER_USER}:links:stats"


def clicks_counter_prefix() -> str:
    """String per link, `<prefix><tinyurl>`: the link's click count in this incarnation."""
    return f"{settings.SHORTENER_USER}:clicks:count:"


def clicks_counter_key(tinyurl: str) -> str:
    return clicks_counter_prefix() + tinyurl


def clicks_incarnation_key() -> str:
    """String: the id of this Redis' counter incarnation. Made by the first click after the
    Redis started empty, so a wiped Redis counts under a new id and the master adds, never
    replaces, its counts."""
    return f"{settings.SHORTENER_USER}:clicks:incarnation"


def clicks_due_key() -> str:
    """Set of tinyurls whose counter crossed a hundred and must be reported promptly."""
    return f"{settings.SHORTENER_USER}:clicks:due"


def clicks_dirty_key() -> str:
    """Set of tinyurls clicked since their last report (reported on the flush timer)."""
    return f"{settings.SHORTENER_USER}:clicks:dirty"


def clicks_inflight_key() -> str:
    """Set of tinyurls whose report was sent but not yet acknowledged by Kafka."""
    return f"{settings.SHORTENER_USER}:clicks:inflight"


def clicks_served_key() -> str:
    """String: redirects served (counted GETs) in this incarnation; the replica's status."""
    return f"{settings.SHORTENER_USER}:clicks:served"
