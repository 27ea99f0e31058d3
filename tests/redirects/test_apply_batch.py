"""services.links_apply_batch against a real Redis: atomic, position-checked, applied only
forward, poison-tolerant; expiry; the format upgrade."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from django.conf import settings
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from redirects import keys, services
from testkit import FakeRecord as Rec
from topics.links import VERSION_MAX, link_record_encode
from topics.positions import PositionMismatch

NOW = datetime.now(timezone.utc)


def rec(offset: int, tinyurl: str, version: int, longurl: str | None = None, *,
        disabled: bool = False, expires_at: datetime | None = None) -> Rec:
    key, value = link_record_encode(tinyurl=tinyurl, version=version, longurl=longurl,
                                    disabled=disabled, expires_at=expires_at, created_at=NOW)
    return Rec(offset, key, value)


def held(redis, tinyurl: str) -> bytes | None:
    return redis.get(f"{settings.SHORTENER_USER}:link:{tinyurl}")


def apply(redis, records, expected=None):
    return services.links_apply_batch(redis=redis, partition=0, records=records,
                                      expected_position=expected)


@pytest.fixture
def redis(replica_factory):
    return replica_factory(start=False).redis


def test_batch_writes_links_position_and_counters_together(redis):
    def rejected(reason: str) -> float:
        return REGISTRY.get_sample_value("shortener_records_rejected_total",
                                         {"topic": "test", "reason": reason}) or 0.0

    before = rejected("json")
    batch = [rec(0, "aaaaaa1", 1, "https://a.example/1"), Rec(1, b"aaaaaa2", b"junk"),
             rec(2, "aaaaaa3", 4, "https://a.example/3%7Cwith%7Cbars"), Rec(3, b"aaaaaa4", None)]
    result = apply(redis, batch)
    assert (result.applied, result.rejected, result.ignored, result.next_offset) == (2, 1, 1, 4)
    assert held(redis, "aaaaaa1") == b"1||https://a.example/1"
    assert keys.link_value_parse(held(redis, "aaaaaa3")) == keys.LinkValue(
        version=4, expires_at=None, longurl="https://a.example/3%7Cwith%7Cbars")
    assert held(redis, "aaaaaa2") is None
    user = settings.SHORTENER_USER
    assert redis.hget(f"{user}:links:positions", 0) == b"4"
    assert redis.hgetall(f"{user}:links:stats") == {
        b"applied": b"2", b"rejected": b"1", b"ignored": b"1", b"rejected_last": b"0:1"}
    assert rejected("json") == before + 1


def test_a_batch_on_a_stale_position_writes_nothing(redis):
    apply(redis, [rec(0, "bbbbbb1", 1, "https://b.example/1")])
    with pytest.raises(PositionMismatch) as info:
        # This consumer thinks nothing is stored; Redis says position 1: someone else wrote.
        apply(redis, [rec(1, "bbbbbb2", 1, "https://b.example/2")], expected=None)
    assert info.value.stored == 1
    with pytest.raises(PositionMismatch):
        apply(redis, [rec(1, "bbbbbb2", 1, "https://b.example/2")], expected=7)
    assert held(redis, "bbbbbb2") is None
    assert redis.hget(f"{settings.SHORTENER_USER}:links:positions", 0) == b"1"


def test_replaying_a_batch_changes_nothing(redis):
    batch = [rec(0, "cccccc1", 1, "https://c.example/1"), rec(1, "cccccc2", 2, disabled=True)]
    apply(redis, batch)
    before = {k: redis.get(k) for k in redis.keys(f"{settings.SHORTENER_USER}:link:*")}
    # At-least-once: the same records again (e.g. a restart before the position was stored).
    redis.hdel(f"{settings.SHORTENER_USER}:links:positions", 0)
    result = apply(redis, batch)
    assert (result.applied, result.disabled, result.stale) == (0, 0, 2)
    assert {k: redis.get(k) for k in redis.keys(f"{settings.SHORTENER_USER}:link:*")} == before


def test_only_a_newer_version_replaces_what_is_held(redis):
    apply(redis, [rec(0, "dddddd1", 2, disabled=True)])
    assert held(redis, "dddddd1") == b"2||"  # a disabled link costs its version only
    # A stale copy of the active record, produced after the takedown: nothing changes.
    result = apply(redis, [rec(1, "dddddd1", 1, "https://d.example/old")], expected=1)
    assert (result.applied, result.stale) == (0, 1)
    assert held(redis, "dddddd1") == b"2||"
    # Put back (v3), then a stale disabled record (v2): still active.
    apply(redis, [rec(2, "dddddd1", 3, "https://d.example/back"),
                  rec(3, "dddddd1", 2, disabled=True)], expected=2)
    assert held(redis, "dddddd1") == b"3||https://d.example/back"
    # The largest version a record may carry (VERSION_MAX, below 2**53) compares exactly
    # against the one below it.
    apply(redis, [rec(4, "dddddd2", VERSION_MAX, "https://d.example/big")], expected=4)
    apply(redis, [rec(5, "dddddd2", VERSION_MAX - 1, disabled=True)], expected=5)
    assert held(redis, "dddddd2") == f"{VERSION_MAX}||https://d.example/big".encode()


def test_a_value_of_the_older_format_is_replaced_by_any_version(redis):
    redis.set(f"{settings.SHORTENER_USER}:link:eeeeee1", "https://legacy.example/")
    apply(redis, [rec(0, "eeeeee1", 1, disabled=True)])
    assert held(redis, "eeeeee1") == b"1||"


def test_expiring_links_carry_a_ttl_of_expiry_plus_the_keep_time(redis):
    keep_ms = settings.SHORTENER_GONE_KEEP_SECONDS * 1000
    soon = NOW.replace(microsecond=0) + timedelta(seconds=60)
    lately = datetime.now(timezone.utc) - timedelta(days=1)
    long_ago = datetime.now(timezone.utc) - timedelta(seconds=settings.SHORTENER_GONE_KEEP_SECONDS,
                                                       days=1)
    apply(redis, [rec(0, "ffffff1", 1, "https://f.example/1", expires_at=soon),
                  rec(1, "ffffff2", 1, "https://f.example/2", expires_at=lately),
                  rec(2, "ffffff3", 1, "https://f.example/3"),
                  rec(3, "ffffff4", 1, "https://f.example/4")])
    soon_ms = int(soon.timestamp() * 1000)
    assert redis.pexpiretime(f"{settings.SHORTENER_USER}:link:ffffff1") == soon_ms + keep_ms
    assert held(redis, "ffffff1") == f"1|{soon_ms}|https://f.example/1".encode()
    lately_ms = int(lately.timestamp() * 1000)
    assert redis.pexpiretime(f"{settings.SHORTENER_USER}:link:ffffff2") == lately_ms + keep_ms
    assert redis.ttl(f"{settings.SHORTENER_USER}:link:ffffff3") == -1  # no expiry, no TTL
    # A record past its keep time is not written, and removes the older state it replaces.
    result = apply(redis, [rec(4, "ffffff4", 2, "https://f.example/4", expires_at=long_ago),
                           rec(5, "ffffff5", 1, "https://f.example/5", expires_at=long_ago)],
                   expected=4)
    assert (result.applied, result.ignored) == (0, 2)
    assert held(redis, "ffffff4") is None and held(redis, "ffffff5") is None
    # The expiry lifted (a newer version without one): the TTL goes too.
    apply(redis, [rec(6, "ffffff1", 2, "https://f.example/1")], expected=6)
    assert redis.ttl(f"{settings.SHORTENER_USER}:link:ffffff1") == -1


def test_a_replica_of_the_older_format_drops_its_links_and_position(redis):
    user = settings.SHORTENER_USER
    legacy = {f"{user}:link:gggg{i:03d}": f"https://g.example/{i}" for i in range(2500)}
    redis.mset(legacy)
    redis.hset(f"{user}:links:positions", 0, 2500)
    redis.set(f"{user}:links:ready", "1")
    redis.set("someone-else:link:ggggggg", "kept")  # another prefix on a shared Redis
    assert services.links_format_ensure(redis=redis) == 2500
    assert redis.keys(f"{user}:link:*") == []
    assert redis.hgetall(f"{user}:links:positions") == {}
    assert redis.get(f"{user}:links:ready") is None
    assert redis.get(f"{user}:links:format") == b"2"
    assert redis.get("someone-else:link:ggggggg") == b"kept"
    apply(redis, [rec(0, "ggggggg", 1, "https://g.example/new")])
    assert services.links_format_ensure(redis=redis) == 0  # once only
    assert held(redis, "ggggggg") == b"1||https://g.example/new"


# --- apply only forward, as a property ---------------------------------------------------

TINYURLS = ["hhhhhh1", "hhhhhh2", "hhhhhh3"]


def state(tinyurl: str, version: int) -> dict:
    # Deterministic per (link, version): odd versions disabled, some with an expiry.
    return {"longurl": None if version % 3 == 0 else f"https://h.example/{tinyurl}/{version}",
            "disabled": version % 3 == 0,
            "expires_at": NOW + timedelta(days=version) if version % 2 == 0 else None}


@st.composite
def deliveries(draw):
    """Some versions of each link, each delivered one or more times, in any order, in batches."""
    copies = []
    for tinyurl in TINYURLS:
        versions = draw(st.lists(st.integers(1, 40), min_size=1, max_size=6, unique=True))
        for version in versions:
            copies += [(tinyurl, version)] * draw(st.integers(1, 3))
    order = draw(st.permutations(copies))
    cuts = sorted(draw(st.lists(st.integers(1, max(1, len(order) - 1)), max_size=4, unique=True)))
    return order, cuts


@hsettings(max_examples=60, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(deliveries())
def test_any_order_and_duplication_of_versions_ends_in_the_highest(redis, delivery):
    order, cuts = delivery
    redis.flushdb()
    records = [rec(offset, t, v, **state(t, v)) for offset, (t, v) in enumerate(order)]
    position = None
    for start, end in zip([0, *cuts], [*cuts, len(records)]):
        if start < end:
            position = apply(redis, records[start:end], expected=position).next_offset
    assert position == len(records)
    for tinyurl in TINYURLS:
        highest = max(v for t, v in order if t == tinyurl)
        s = state(tinyurl, highest)
        expected = keys.LinkValue(
            version=highest, longurl=s["longurl"],
            expires_at=int(s["expires_at"].timestamp() * 1000) if s["expires_at"] else None)
        assert keys.link_value_parse(held(redis, tinyurl)) == expected
        ttl = redis.pexpiretime(f"{settings.SHORTENER_USER}:link:{tinyurl}")
        if expected.expires_at is None:
            assert ttl == -1
        else:
            assert ttl == expected.expires_at + settings.SHORTENER_GONE_KEEP_SECONDS * 1000
    stats = {k.decode(): int(v) for k, v in
             redis.hgetall(f"{settings.SHORTENER_USER}:links:stats").items()}
    assert sum(stats.values()) == len(records)  # every record counted exactly once


def test_link_value_round_trip_and_foreign_values():
    for value in [keys.LinkValue(1, None, "https://x.example/a|b"),
                  keys.LinkValue(7, 1_700_000_000_000, None),
                  keys.LinkValue(2**62 - 1, 1, "http://y.example/")]:
        assert keys.link_value_parse(keys.link_value_encode(value)) == value
    for raw in [b"https://legacy.example/", b"x|1|https://a.example/", b"1|soon|https://a/"]:
        assert keys.link_value_parse(raw) is None


# --- one step for a large batch, or one record at a time: the same links --------------------

POOL = ["gggggg1", "gggggg2", "gggggg3", "gggggg4"]
LATER = datetime.now(timezone.utc) + timedelta(days=1)
KINDS = ("active", "disabled", "expiring", "tombstone", "junk", "bad key", "bad longurl",
         "disabled with longurl")


def mixed(offset: int, tinyurl: str, version: int, kind: str) -> Rec:
    """A record of `kind`: the ones a replica applies, and the ones it refuses or ignores."""
    if kind == "active":
        return rec(offset, tinyurl, version, f"https://g.example/{tinyurl}/{version}")
    if kind == "disabled":
        return rec(offset, tinyurl, version, disabled=True)
    if kind == "expiring":
        return rec(offset, tinyurl, version, f"https://g.example/{version}", expires_at=LATER)
    if kind == "tombstone":
        return Rec(offset, tinyurl.encode(), None)
    if kind == "junk":
        return Rec(offset, tinyurl.encode(), b'{"schema":2,')
    if kind == "bad key":
        return Rec(offset, b"no", rec(offset, tinyurl, version, "https://g.example/").value)
    good = rec(offset, tinyurl, version, "https://g.example/x").value
    if kind == "bad longurl":  # a space: not servable
        return Rec(offset, tinyurl.encode(), good.replace(b"/x", b"/a b"))
    return Rec(offset, tinyurl.encode(),  # "disabled with longurl"
               good.replace(b'"state":"active"', b'"state":"disabled"'))


def links_state(redis) -> dict[bytes, tuple[bytes, int]]:
    """Every link key: its value and its expiry time (ms, -1: none)."""
    return {key: (redis.get(key), redis.pexpiretime(key))
            for key in redis.scan_iter(match=f"{settings.SHORTENER_USER}:link:*")}


@hsettings(max_examples=25, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(held_before=st.lists(st.tuples(st.sampled_from(POOL), st.integers(1, 4),
                                      st.sampled_from(["active", "disabled"])), max_size=4),
       drawn=st.lists(st.tuples(st.sampled_from(POOL), st.integers(1, 4), st.sampled_from(KINDS)),
                      min_size=1, max_size=30),
       before=st.integers(services.APPLY_CHUNK - 30, services.APPLY_CHUNK + 5))
def test_a_large_mixed_batch_in_one_step_holds_what_one_record_at_a_time_does(
        redis, held_before, drawn, before):
    """A batch larger than the script's MGET/MSET chunk (APPLY_CHUNK links), the drawn
    records around the chunk's boundary among valid links of their own: valid, stale,
    malformed, disabled, expiring records and tombstones, some links held already. Applied in
    one step, Redis ends with the same links (values, expiry) and position as when each record
    is its own batch. (Records already past their keep time are left out: one at a time, a
    link deleted by one is written again by an older record after it; in one batch the newest
    record wins.)"""
    filler = [f"h{i:06d}" for i in range(before)] + [f"j{i:06d}" for i in range(20)]
    specs = ([(t, 1, "active") for t in filler[:before]] + drawn
             + [(t, 1, "active") for t in filler[before:]])
    results = []
    for one_at_a_time in (False, True):
        redis.flushdb()
        for offset, (tinyurl, version, kind) in enumerate(held_before):
            apply(redis, [mixed(offset, tinyurl, version, kind)],
                  expected=offset or None)
        start = len(held_before)
        records = [mixed(start + i, *spec) for i, spec in enumerate(specs)]
        position = start or None
        for batch in ([[r] for r in records] if one_at_a_time else [records]):
            result = apply(redis, batch, expected=position)
            position = result.next_offset
        results.append((links_state(redis), position, redis.hget(
            f"{settings.SHORTENER_USER}:links:stats", "rejected")))
    assert results[0] == results[1]
    assert results[0][1] == len(held_before) + len(specs)


def test_the_restarted_mark_goes_only_with_the_positions_applied(redis):
    """links_ready_set (a consumer caught up): the restarted mark goes only if Redis holds
    exactly the consumer's positions, and with it the ready mark comes, for the heartbeats'
    threshold (renewed by each beat)."""
    apply(redis, [rec(0, "rstmrk1", 1, "https://a.example/r")])
    restarted, ready = keys.links_restarted_key(), keys.links_ready_key()
    redis.set(restarted, "1")
    for behind_or_ahead in (0, 2):
        with pytest.raises(PositionMismatch):
            services.links_ready_set(redis=redis, ready=True, positions={0: behind_or_ahead})
    assert redis.exists(restarted) and not redis.exists(ready)
    services.links_ready_set(redis=redis, ready=True, positions={0: 1})
    assert not redis.exists(restarted) and redis.exists(ready)
    assert 0 < redis.pttl(ready) <= settings.SHORTENER_READY_STALE_SECONDS * 1000
