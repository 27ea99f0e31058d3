"""Report batches (schemas 3 and 4, the bots beside the counts) on the master: the fold stays exact with batches (hypothesis over
sequences of batches and single reports, with duplicates, lower counts landing later, unknown
links, and any cut into transactions), a topic holding both schemas, and what the time-limited
clicks topic keeps over a long outage with the replicas' sweep."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import datetime, timedelta, timezone

import pytest
from django.db.models import Sum
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from kafka import TopicPartition

from links.models import ClickBucket, ClickCounter, ConsumerPosition, Link
from links.totals import clicks_apply_batch
from testkit import FakeRecord as Rec
from testkit import wait_until
from tests.links.test_clicks import (  # noqa: F401 - own_clicks_topic is a fixture
    new_link,
    own_clicks_topic,
    position_of,
    produce,
    start_positioned,
)
from topics.clicks import click_batch_encode, click_report_encode
from topics.clients import admin_client
from topics.links import producer_get

NOW = datetime.now(timezone.utc)
UNKNOWN = "zzzzzzz"  # no link has it

# A record: (schema 2, 3 or 4, incarnation, node, hours ago, [(link index or -1, count)]).
# Schema 4 gives each count its bots, count // 3: a function that grows with the count, as a
# replica's bots do with its clicks (schemas 2 and 3 carry none: 0, a lower bound).
RECORDS = st.lists(st.tuples(
    st.sampled_from([2, 3, 4, 4]), st.sampled_from(["i1", "i2"]), st.sampled_from(["a", "b"]),
    st.sampled_from([0, 0, 1]),
    st.lists(st.tuples(st.integers(-1, 2), st.integers(1, 60)), min_size=1, max_size=6),
), min_size=1, max_size=12)


def encoded(records, tinyurls: list[str], first_offset: int) -> list[Rec]:
    out = []
    for schema, incarnation, node, ago, pairs in records:
        at = NOW - timedelta(hours=ago)
        named = [(tinyurls[i] if i >= 0 else UNKNOWN, c) for i, c in pairs]
        if schema in (3, 4):
            counts = named if schema == 3 else [(t, c, c // 3) for t, c in named]
            key, value = click_batch_encode(node=node, incarnation=incarnation, counts=counts,
                                            reported_at=at)
            out.append(Rec(first_offset + len(out), key, value))
        else:  # a schema-2 report per pair, as an old replica would send them
            for tinyurl, count in named:
                key, value = click_report_encode(tinyurl=tinyurl, node=node,
                                                 incarnation=incarnation, count=count,
                                                 reported_at=at)
                out.append(Rec(first_offset + len(out), key, value))
    return out


@pytest.fixture
def three_links(transactional_db) -> list[Link]:
    return [new_link(f"https://example.com/clicks/batches/{i}") for i in range(3)]


@given(records=RECORDS, cuts=st.lists(st.integers(1, 40), max_size=5), seed=st.integers(0, 9))
@hsettings(max_examples=40, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_totals_are_the_sum_of_the_largest_count_per_counter_whatever_the_batches(
    three_links, records, cuts, seed,
):
    for model in (ClickCounter, ClickBucket, ConsumerPosition):
        model.objects.all().delete()
    Link.objects.update(clicks=0, bot_clicks=0)
    tinyurls = [link.tinyurl for link in three_links]
    # Batches carry their pairs in any order: shuffled, duplicates and lower counts included.
    rng = random.Random(seed)
    for *_, pairs in records:
        rng.shuffle(pairs)
    stream = encoded(records, tinyurls, 0)
    # The same records again (a replay, a reporter's retry): nothing changes.
    stream += encoded(records, tinyurls, len(stream))
    expected_max: dict[tuple[str, str], int] = defaultdict(int)
    expected_bots: dict[tuple[str, str], int] = defaultdict(int)
    for schema, incarnation, _, _, pairs in records:
        for i, count in pairs:
            if i >= 0:
                key = (tinyurls[i], incarnation)
                expected_max[key] = max(expected_max[key], count)
                if schema == 4:
                    expected_bots[key] = max(expected_bots[key], count // 3)

    position = None
    start = 0
    for cut in sorted({c for c in cuts if c < len(stream)}) + [len(stream)]:
        if cut <= start:
            continue
        result = clicks_apply_batch(topic="test-clicks", partition=0,
                                    records=stream[start:cut], expected_position=position)
        position, start = result.next_offset, cut
    assert position == len(stream)

    counters = {(t, i): c for t, i, c in ClickCounter.objects.values_list(
        "link__tinyurl", "incarnation", "count")}
    assert counters == dict(expected_max)
    totals = dict(Link.objects.values_list("tinyurl", "clicks"))
    for t in tinyurls:
        assert totals[t] == sum(c for (tt, _), c in expected_max.items() if tt == t)
    bots = {(t, i): b for t, i, b in ClickCounter.objects.values_list(
        "link__tinyurl", "incarnation", "bots")}
    assert bots == {k: expected_bots[k] for k in expected_max}
    bot_totals = dict(Link.objects.values_list("tinyurl", "bot_clicks"))
    for t in tinyurls:
        assert bot_totals[t] == sum(b for (tt, _), b in expected_bots.items() if tt == t)
    charted = dict(ClickBucket.objects.values("link__tinyurl").annotate(s=Sum("clicks"))
                   .values_list("link__tinyurl", "s"))
    assert {t: c for t, c in totals.items() if c} == charted


def test_a_batch_counts_a_tinyurl_named_twice_as_its_largest_count(three_links):
    t = three_links[0].tinyurl
    key, value = click_batch_encode(node="a", incarnation="i1", reported_at=NOW,
                                    counts=[(t, 30), (t, 70), (t, 50)])
    result = clicks_apply_batch(topic="test-clicks", partition=0, records=[Rec(0, key, value)],
                                expected_position=None)
    assert (result.applied, result.raised) == (1, 1)  # one record, one counter raised
    three_links[0].refresh_from_db()
    assert three_links[0].clicks == 70


def produce_batches(topic: str, batches: list[tuple[str, list[tuple[str, int]]]],
                    raw: list[tuple[bytes, bytes]] = ()) -> None:
    """Send (incarnation, pairs) report batches, then `raw` (key, value) records; wait for the
    acknowledgements."""
    producer = producer_get()
    futures = []
    for incarnation, pairs in batches:
        key, value = click_batch_encode(node=f"n-{incarnation}", incarnation=incarnation,
                                        counts=pairs, reported_at=NOW)
        futures.append(producer.send(topic, key=key, value=value))
    for key, value in raw:
        futures.append(producer.send(topic, key=key, value=value))
    producer.flush()
    for future in futures:
        future.get(timeout=10)


def test_consume_clicks_applies_a_topic_of_both_schemas_and_skips_a_bad_batch_whole(
    own_clicks_topic,
):
    process, topic, prefix = own_clicks_topic({"cleanup.policy": "delete"})
    links = [new_link(f"https://example.com/clicks/mixed/{i}") for i in range(3)]
    t0, t1, t2 = (link.tinyurl for link in links)
    start_positioned(process, prefix)
    # An old replica's single reports, then the upgraded replica's batches of the same counters.
    produce(topic, [(t0, "old", 100), (t1, "old", 40)])
    key, value = click_batch_encode(node="n", incarnation="new", reported_at=NOW,
                                    counts=[(t0, 5), (t2, 6)])
    bad = value.replace(t2.encode(), b"bad!url")  # one bad tinyurl: the whole batch is skipped
    produce_batches(topic, [("old", [(t0, 120), (t1, 30), (t2, 9)])], raw=[(key, bad)])
    produce_batches(topic, [("new", [(t0, 1), (t1, 2)])])
    wait_until(lambda: position_of(topic) == 5, timeout=30, what="both schemas applied")
    totals = dict(Link.objects.filter(pk__in=[x.pk for x in links])
                  .values_list("tinyurl", "clicks"))
    # t1: max(40, 30) of "old"; the bad batch's t0 5 and t2 6 are not counted.
    assert totals == {t0: 120 + 1, t1: 40 + 2, t2: 9}
    row = ConsumerPosition.objects.get(topic=topic)
    assert row.skipped_malformed == 1
    assert "rejected record" in process.output() and "reason=range" in process.output()
    assert process.alive()


def test_a_master_away_past_the_retention_finds_every_live_counter_in_the_last_sweep(
    own_clicks_topic,
):
    """consume_clicks is down while the topic's retention deletes what it had not read
    (DeleteRecords, what retention does, at an offset the test chooses); the replica's sweep
    re-reported every counter it holds after the deleted records: the totals are exact, and
    the loss of the records (not of clicks) is reported. A counter whose only reports were
    deleted and that no sweep carries (an ended incarnation's) is lost: docs/delivery-
    guarantees.md says so."""
    process, topic, prefix = own_clicks_topic({"cleanup.policy": "delete"})
    links = [new_link(f"https://example.com/clicks/sweep/{i}") for i in range(3)]
    t0, t1, t2 = (link.tinyurl for link in links)
    start_positioned(process, prefix)
    produce_batches(topic, [("live", [(t0, 10), (t1, 10)])])
    wait_until(lambda: position_of(topic) == 1, timeout=20, what="the first batch")
    assert process.stop() == 0

    # While it is down: flushes of the live incarnation and the last counts of an ended one.
    produce_batches(topic, [("live", [(t0, 20)]), ("live", [(t1, 25), (t2, 3)]),
                            ("ended", [(t0, 7)]), ("live", [(t0, 30)])])
    admin = admin_client()
    try:
        admin.delete_records({TopicPartition(topic, 0): 5})  # all four deleted unread
    finally:
        admin.close()
    # The sweep: every counter of the live incarnation, changed or not.
    produce_batches(topic, [("live", [(t0, 30), (t1, 25), (t2, 3)])])

    start_positioned(process, prefix)
    wait_until(lambda: position_of(topic) == 6, timeout=30, what="the sweep's batch")
    assert "4 record(s) were deleted unread and are LOST" in process.output()
    totals = dict(Link.objects.filter(pk__in=[x.pk for x in links])
                  .values_list("tinyurl", "clicks"))
    assert totals == {t0: 30, t1: 25, t2: 3}  # the ended incarnation's 7 clicks are lost


def test_a_remembered_link_id_of_a_link_deleted_by_hand_is_forgotten_and_looked_up_again(
    three_links,
):
    """links/linkids.py: consume_clicks remembers each tinyurl's link id. A link deleted by hand
    (the application never deletes one) makes the next apply naming it fail at the commit;
    nothing of it is applied, the memory is forgotten, and applied again (as the clicks loop's
    isolation does) the report counts as one for an unknown link."""
    from django.db import IntegrityError

    from links import linkids

    gone, kept = three_links[0], three_links[1]

    def apply(offset, counts, expected):
        key, value = click_batch_encode(node="a", incarnation="i1", reported_at=NOW,
                                        counts=counts)
        return clicks_apply_batch(topic="test-clicks", partition=0,
                                  records=[Rec(offset, key, value)], expected_position=expected)

    apply(0, [(gone.tinyurl, 5), (kept.tinyurl, 5)], None)
    assert linkids.link_id(gone.tinyurl) == gone.pk and linkids.size() == 2
    Link.objects.filter(pk=gone.pk).delete()
    with pytest.raises(IntegrityError):
        apply(1, [(gone.tinyurl, 9), (kept.tinyurl, 9)], 1)
    assert linkids.size() == 0
    kept.refresh_from_db()
    assert kept.clicks == 5  # nothing of the failed apply
    result = apply(1, [(gone.tinyurl, 9), (kept.tinyurl, 9)], 1)
    assert (result.applied, result.skipped_unknown, result.raised) == (1, 0, 1)
    kept.refresh_from_db()
    assert kept.clicks == 9
