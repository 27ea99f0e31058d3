"""Clicks over time: hourly buckets filled by the click apply, exactly and idempotently."""

from __future__ import annotations

import random
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from links import services
from links.buckets import report_hour
from links.models import ClickBucket, ClickCounter, ConsumerPosition, Link
from links.selectors import longurl_digest
from links.totals import clicks_apply_batch, clicks_batch_decode
from testkit import FakeRecord as Rec
from testkit import wait_until
from tests.conftest import clicks_topic_end
from topics.clicks import click_report_encode, clicks_topic
from topics.links import producer_get

HOUR = timedelta(hours=1)
NOW = datetime.now(timezone.utc)
START = NOW.replace(minute=0, second=0, microsecond=0) - 5 * HOUR


def made_clicks(links: list[Link], seed: int) -> tuple[list[tuple[bytes, bytes]], Counter]:
    """Reports of two replicas over six hours, and the clicks made per (tinyurl, node, hour).

    Each replica clicks each link some times every hour and reports its counter's absolute count
    during the hour (milestones, duplicates, a late out-of-date copy) and at its end (the
    flush), as report_clicks does; a report never comes from a later hour than its clicks.
    """
    rng = random.Random(seed)
    messages: list[tuple[datetime, bytes, bytes]] = []
    made: Counter = Counter()
    for node, incarnation in (("replica-a", "1700000000000001"), ("replica-b", "1700000000000002")):
        for link in links:
            count = 0
            for h in range(6):
                hour = START + h * HOUR
                clicks = rng.choice([0, 1, 7, 100, 250])
                if not clicks:
                    continue
                made[(link.tinyurl, node, hour)] += clicks
                old = count
                count += clicks
                at = [hour + timedelta(minutes=m) for m in sorted(rng.sample(range(1, 59), 3))]
                # Part-way through the hour, the final count of the hour at its end, a duplicate
                # of it, and an old count that arrives late.
                for when, value in ((at[0], old + clicks // 2), (at[1], count), (at[2], count),
                                    (at[2], old)):
                    if value > 0:
                        key, body = click_report_encode(tinyurl=link.tinyurl, node=node,
                                                        incarnation=incarnation, count=value,
                                                        reported_at=when)
                        messages.append((when, key, body))
    messages.sort(key=lambda m: m[0])  # the topic's order: as the reports were sent
    return [(k, v) for _, k, v in messages], made


def buckets() -> Counter:
    return Counter({(t, n, h): c for t, n, h, c in ClickBucket.objects.values_list(
        "link__tinyurl", "node", "hour", "clicks")})


def apply_in_batches(records: list[Rec], rng: random.Random, topic: str) -> None:
    i = 0
    while i < len(records):
        size = rng.randint(1, 40)
        position = ConsumerPosition.objects.filter(topic=topic).first()
        clicks_apply_batch(topic=topic, partition=0, records=records[i:i + size],
                           expected_position=position.next_offset if position else None)
        i += size


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_buckets_equal_the_clicks_made_and_a_replay_changes_nothing(transactional_db, seed):
    links = [services.link_create(longurl=f"https://example.com/buckets/{seed}/{i}").link
             for i in range(3)]
    messages, made = made_clicks(links, seed)
    records = [Rec(offset, key, value) for offset, (key, value) in enumerate(messages)]
    rng = random.Random(seed)

    apply_in_batches(records, rng, "clicks-a")
    assert buckets() == made
    for link in links:
        link.refresh_from_db()
        assert link.clicks == sum(c for (t, _, _), c in made.items() if t == link.tinyurl)

    # Every record again, in other batches, as a consumer replaying from offset 0 would.
    apply_in_batches(records, rng, "clicks-b")
    assert buckets() == made
    # And all of it in one batch (one batch spanning all six hours).
    clicks_apply_batch(topic="clicks-c", partition=0, records=records, expected_position=None)
    assert buckets() == made
    assert sum(made.values()) == sum(Link.objects.values_list("clicks", flat=True))


def test_one_batch_spanning_hours_charts_each_report_in_its_own_hour(transactional_db):
    link = services.link_create(longurl="https://example.com/buckets/span").link
    messages, made = made_clicks([link], seed=9)
    clicks_apply_batch(topic="clicks-span", partition=0, expected_position=None,
                       records=[Rec(o, k, v) for o, (k, v) in enumerate(messages)])
    assert buckets() == made
    assert len({h for (_, _, h) in made}) > 1


def test_replaying_the_clicks_topic_from_offset_0_changes_no_bucket(transactional_db,
                                                                     clicks_consumer):
    links = [services.link_create(longurl=f"https://example.com/buckets/topic/{i}").link
             for i in range(3)]
    messages, made = made_clicks(links, seed=4)
    producer = producer_get()
    for key, value in messages:
        producer.send(clicks_topic(), key=key, value=value)
    producer.flush()
    end = clicks_topic_end()

    def position() -> int:
        row = ConsumerPosition.objects.filter(topic=clicks_topic()).first()
        return row.next_offset if row else 0

    wait_until(lambda: position() == end, timeout=30, what="consume_clicks to reach the end")
    assert buckets() == made
    # Forget the position: the consumer reads the whole topic again from offset 0.
    assert clicks_consumer.stop() == 0
    ConsumerPosition.objects.filter(topic=clicks_topic()).delete()
    clicks_consumer.start()
    wait_until(lambda: position() == end, timeout=30, what="the replay from offset 0")
    assert buckets() == made


def test_report_hour():
    now = datetime(2026, 5, 1, 12, 30, tzinfo=timezone.utc)
    at = datetime.fromisoformat
    assert report_hour(at("2026-05-01T10:59:59.999+00:00"), now=now) == datetime(
        2026, 5, 1, 10, tzinfo=timezone.utc)
    assert report_hour(at("2026-05-01T12:10:00+02:00"), now=now) == datetime(
        2026, 5, 1, 10, tzinfo=timezone.utc)
    assert report_hour(at("2026-05-01T09:10:00"), now=now) == datetime(  # no offset: UTC
        2026, 5, 1, 9, tzinfo=timezone.utc)
    # The future (a replica's clock running ahead), or a time before the first UTC time a
    # datetime holds (issue 16, example 2: OverflowError before): the master's hour.
    for bad in ("2026-05-01T15:00:00+00:00", "0001-01-01T00:00:00+01:00"):
        assert report_hour(at(bad), now=now) == datetime(2026, 5, 1, 12, tzinfo=timezone.utc)
    assert report_hour(at("0001-01-01T01:00:00+01:00"), now=now) == datetime(
        1, 1, 1, tzinfo=timezone.utc)


def test_decode_charts_a_future_or_unplaceable_time_in_the_masters_hour_and_rejects_no_time():
    now = datetime(2026, 5, 1, 12, 30, tzinfo=timezone.utc)
    t = "aBcDeF1"
    key, value = click_report_encode(tinyurl=t, node="n", incarnation="i1", count=1,
                                     reported_at=datetime(2026, 5, 1, 9, 59, tzinfo=timezone.utc))
    records = [Rec(0, key, value)]
    for offset, (incarnation, at) in enumerate(
            [("i2", '"2026-05-01T18:00:00+00:00"'), ("i3", '"0001-01-01T00:00:00+01:00"'),
             ("i4", '"soon"'), ("i5", None)], start=1):
        body = (f'{{"schema":2,"tinyurl":"{t}","node":"n","incarnation":"{incarnation}",'
                f'"count":1' + (f',"reported_at":{at}}}' if at else "}"))
        records.append(Rec(offset, f"{incarnation}:{t}".encode(), body.encode()))
    batch = clicks_batch_decode(records=records, now=now)
    assert batch.hours == [datetime(2026, 5, 1, 9, tzinfo=timezone.utc),
                           datetime(2026, 5, 1, 12, tzinfo=timezone.utc)]
    assert [batch.hours[e[2] - 1].hour for e in batch.counters.values()] == [9, 12, 12]
    # A time that is no RFC 3339 time, or none: the record does not match its type.
    assert [(r.offset, r.reason) for r in batch.rejected] == [(3, "range"), (4, "missing")]


def test_nodes_and_incarnations_spelled_null_are_names_not_nulls(transactional_db):
    link = services.link_create(longurl="https://example.com/buckets/null").link
    records = [Rec(o, *click_report_encode(tinyurl=link.tinyurl, node=node, incarnation=inc,
                                           count=5, reported_at=NOW))
               for o, (node, inc) in enumerate([("null", "NULL"), ("NULL", "null")])]
    clicks_apply_batch(topic="clicks-null", partition=0, records=records, expected_position=None)
    assert sorted(ClickCounter.objects.values_list("node", "incarnation", "count")) == [
        ("NULL", "null", 5), ("null", "NULL", 5)]
    hour = NOW.replace(minute=0, second=0, microsecond=0)
    assert buckets() == {(link.tinyurl, "null", hour): 5, (link.tinyurl, "NULL", hour): 5}


# --- any reports, in any batches: as if applied one at a time -------------------------------

PROPERTY_LINKS = ["pRoPer1", "pRoPer2"]


@st.composite
def report_streams(draw):
    """Reports of a few counters (two links, two incarnations), each from either of two nodes
    (a renamed node, two hosts on one Redis) and in any of four hours, with any counts (rises,
    duplicates, late old copies), in offset order; and where the stream is cut into batches."""
    n = draw(st.integers(1, 40))
    report = st.tuples(st.sampled_from(PROPERTY_LINKS), st.sampled_from(["i1", "i2"]),
                       st.sampled_from(["n1", "n2"]), st.integers(0, 3), st.integers(1, 30))
    reports = draw(st.lists(report, min_size=n, max_size=n))
    cuts = draw(st.lists(st.integers(1, max(1, n - 1)), max_size=5, unique=True))
    again = draw(st.lists(st.integers(1, max(1, n - 1)), max_size=5, unique=True))
    return reports, sorted(cuts), sorted(again)


def apply_cut(records: list[Rec], cuts: list[int], topic: str) -> None:
    position = None
    for start, end in zip([0, *cuts], [*cuts, len(records)]):
        if start < end:
            position = clicks_apply_batch(topic=topic, partition=0, records=records[start:end],
                                          expected_position=position).next_offset


@hsettings(max_examples=80, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(report_streams())
def test_any_batches_chart_what_one_report_at_a_time_would(transactional_db, stream):
    """The definition, report by report: a report that raises its counter from a to b puts
    b - a clicks in its own hour under its own node. Any cut into batches gives exactly that,
    and every record applied again (a replay from offset 0, cut otherwise) adds nothing."""
    reports, cuts, again = stream
    ClickBucket.objects.all().delete()
    ClickCounter.objects.all().delete()
    ConsumerPosition.objects.all().delete()
    for t in PROPERTY_LINKS:
        Link.objects.update_or_create(tinyurl=t, defaults={
            "longurl": f"https://example.com/{t}", "clicks": 0,
            "longurl_sha256": longurl_digest(f"https://example.com/{t}")})
    records, expected, held = [], Counter(), {}
    for offset, (t, incarnation, node, h, count) in enumerate(reports):
        hour = START + h * HOUR
        key, value = click_report_encode(tinyurl=t, node=node, incarnation=incarnation,
                                         count=count, reported_at=hour + timedelta(minutes=7))
        records.append(Rec(offset, key, value))
        before = held.get((t, incarnation), 0)
        if count > before:
            expected[(t, node, hour)] += count - before
            held[(t, incarnation)] = count

    apply_cut(records, cuts, "clicks-p")
    assert buckets() == expected
    totals = dict(Link.objects.values_list("tinyurl", "clicks"))
    assert totals == {t: sum(c for (u, _), c in held.items() if u == t) for t in PROPERTY_LINKS}
    apply_cut(records, again, "clicks-q")
    assert buckets() == expected
