"""services.links_apply_batch against a real Redis: atomic, position-checked, poison-tolerant."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from redirects import services
from shortener_project.consuming import PositionMismatch
from shortener_project import bus
from shortener_project.messages import link_record_encode
from tests.support import FakeRecord as Rec


def good(offset: int, tinyurl: str, longurl: str) -> Rec:
    key, value = link_record_encode(tinyurl=tinyurl, longurl=longurl,
                                    created_at=datetime.now(timezone.utc))
    return Rec(offset, key, value)


@pytest.fixture
def redis(replica_factory):
    return replica_factory(start=False).redis


def test_batch_writes_links_position_and_counters_together(redis):
    batch = [good(0, "aaaaaa1", "https://a.example/1"), Rec(1, b"aaaaaa2", b"junk"),
             good(2, "aaaaaa3", "https://a.example/3")]
    result = services.links_apply_batch(redis=redis, partition=0, records=batch,
                                        expected_position=None)
    assert (result.applied, result.skipped, result.next_offset) == (2, 1, 3)
    user = bus.links_topic().removesuffix("-links")
    assert redis.get(f"{user}:link:aaaaaa1") == b"https://a.example/1"
    assert redis.get(f"{user}:link:aaaaaa2") is None
    assert redis.hget(f"{user}:links:positions", 0) == b"3"
    assert redis.hgetall(f"{user}:links:stats") == {b"applied": b"2", b"skipped": b"1"}


def test_a_batch_on_a_stale_position_writes_nothing(redis):
    services.links_apply_batch(redis=redis, partition=0,
                               records=[good(0, "bbbbbb1", "https://b.example/1")],
                               expected_position=None)
    with pytest.raises(PositionMismatch) as info:
        # This consumer thinks nothing is stored; Redis says position 1: someone else wrote.
        services.links_apply_batch(redis=redis, partition=0,
                                   records=[good(1, "bbbbbb2", "https://b.example/2")],
                                   expected_position=None)
    assert info.value.stored == 1
    user = bus.links_topic().removesuffix("-links")
    assert redis.get(f"{user}:link:bbbbbb2") is None
    assert redis.hget(f"{user}:links:positions", 0) == b"1"


def test_replaying_a_batch_changes_nothing(redis):
    batch = [good(0, "cccccc1", "https://c.example/1"), good(1, "cccccc2", "https://c.example/2")]
    services.links_apply_batch(redis=redis, partition=0, records=batch, expected_position=None)
    user = bus.links_topic().removesuffix("-links")
    before = {k: redis.get(k) for k in redis.keys(f"{user}:link:*")}
    # At-least-once: the same records again (e.g. a restart before the position was stored).
    redis.hdel(f"{user}:links:positions", 0)
    services.links_apply_batch(redis=redis, partition=0, records=batch, expected_position=None)
    assert {k: redis.get(k) for k in redis.keys(f"{user}:link:*")} == before
