"""consume_clicks on the master: the idempotent apply, bad reports, and SIGKILL mid-batch."""

from __future__ import annotations

import json
import signal
from datetime import datetime, timezone

import pytest

from links import services
from links.clicks import clicks_apply_batch
from links.models import ClickCounter, ConsumerPosition, Link
from shortener_project import bus
from shortener_project.consuming import PositionMismatch
from shortener_project.messages import click_report_encode
from tests.conftest import clicks_topic_end
from tests.support import FakeRecord as Rec
from tests.support import wait_until

NOW = datetime.now(timezone.utc)


def report(offset: int, tinyurl: str, node: str, incarnation: str, count: int) -> Rec:
    key, value = click_report_encode(tinyurl=tinyurl, node=node, incarnation=incarnation,
                                     count=count, reported_at=NOW)
    return Rec(offset, key, value)


@pytest.fixture
def link(transactional_db) -> Link:
    return services.link_create(longurl="https://example.com/clicks/unit").link


def apply(records, expected):
    return clicks_apply_batch(topic="test-clicks", partition=0, records=records,
                              expected_position=expected)


def test_max_per_counter_makes_duplicates_and_old_reports_harmless(link):
    t = link.tinyurl
    result = apply([report(0, t, "a", "i1", 100), report(1, t, "a", "i1", 200),
                    report(2, t, "b", "i1", 100)], None)
    assert (result.applied, result.raised, result.next_offset) == (3, 2, 3)
    link.refresh_from_db()
    assert link.clicks == 300
    # A duplicate, an out-of-date report, and a report of a new incarnation of replica a.
    apply([report(3, t, "a", "i1", 200), report(4, t, "a", "i1", 100),
           report(5, t, "a", "i2", 100)], 3)
    link.refresh_from_db()
    assert link.clicks == 400
    assert sorted(ClickCounter.objects.values_list("node", "incarnation", "count")) == [
        ("a", "i1", 200), ("a", "i2", 100), ("b", "i1", 100)]


def test_a_stale_position_applies_nothing(link):
    apply([report(0, link.tinyurl, "a", "i1", 100)], None)
    with pytest.raises(PositionMismatch):
        apply([report(1, link.tinyurl, "a", "i1", 300)], None)
    link.refresh_from_db()
    assert link.clicks == 100
    assert ConsumerPosition.objects.get(topic="test-clicks").next_offset == 1


def test_bad_reports_are_counted_and_skipped(link):
    bad = [
        Rec(0, b"x", b"not json"),
        Rec(1, b"x", json.dumps([1]).encode()),
        Rec(2, None, json.dumps({"schema": 2}).encode()),
        Rec(3, link.tinyurl.encode(), json.dumps({"schema": 1, "tinyurl": link.tinyurl,
            "node": "a", "incarnation": "i", "count": -5}).encode()),
        Rec(4, link.tinyurl.encode(), json.dumps({"schema": 1, "tinyurl": link.tinyurl,
            "node": "a b", "incarnation": "i", "count": 5}).encode()),
        Rec(5, link.tinyurl.encode(), json.dumps({"schema": 1, "tinyurl": link.tinyurl,
            "node": "a", "incarnation": "i", "count": True}).encode()),
        Rec(6, None, None),
        report(7, "Unknown", "a", "i1", 100),
        report(8, link.tinyurl, "a", "i1", 7),
    ]
    result = apply(bad, None)
    assert (result.skipped_malformed, result.skipped_unknown, result.applied) == (7, 1, 1)
    position = ConsumerPosition.objects.get(topic="test-clicks")
    assert (position.next_offset, position.skipped_malformed, position.skipped_unknown,
            position.applied) == (9, 7, 1, 1)
    link.refresh_from_db()
    assert link.clicks == 7


def test_consume_clicks_skips_poison_and_unknown_reports_and_keeps_running(
    link, clicks_consumer
):
    # The topic is the session's: earlier tests' reports (for links since deleted) are read
    # first and skipped as unknown. Count from where the consumer stands after them.
    end = clicks_topic_end()

    def skipped() -> tuple[int, int]:
        p = ConsumerPosition.objects.filter(topic=bus.clicks_topic()).first()
        return (p.skipped_malformed, p.skipped_unknown) if p else (0, 0)

    wait_until(lambda: end == 0 or ConsumerPosition.objects.filter(
        topic=bus.clicks_topic(), next_offset=end).exists(), timeout=20, what="earlier reports")
    before = skipped()
    producer = bus.producer_get()
    for key, value in [(b"abcdefg", b"garbage"), (b"abcdefg", b'{"schema": 1}'),
                       *[click_report_encode(tinyurl="Unknown", node="n", incarnation="i",
                                             count=100, reported_at=NOW)]]:
        producer.send(bus.clicks_topic(), key=key, value=value).get(timeout=10)
    key, value = click_report_encode(tinyurl=link.tinyurl, node="n", incarnation="i", count=7,
                                     reported_at=NOW)
    producer.send(bus.clicks_topic(), key=key, value=value).get(timeout=10)
    wait_until(lambda: Link.objects.get(pk=link.pk).clicks == 7, timeout=20, what="the report")
    after = skipped()
    assert (after[0] - before[0], after[1] - before[1]) == (2, 1)
    assert clicks_consumer.alive()
    assert "skipping malformed click report" in clicks_consumer.output()


def test_consume_clicks_killed_mid_batch_neither_loses_nor_double_counts(
    transactional_db, clicks_consumer
):
    assert clicks_consumer.stop() == 0
    links = [services.link_create(longurl=f"https://example.com/clicks/kill/{i}").link
             for i in range(20)]
    producer = bus.producer_get()
    # 20 links x 2 replicas x counts 1..250: 10,000 reports, each an absolute count.
    for count in range(1, 251):
        for link in links:
            for node in ("n1", "n2"):
                key, value = click_report_encode(tinyurl=link.tinyurl, node=node,
                                                 incarnation="i", count=count, reported_at=NOW)
                producer.send(bus.clicks_topic(), key=key, value=value)
    producer.flush()
    end = clicks_topic_end()

    def position() -> int:
        row = ConsumerPosition.objects.filter(topic=bus.clicks_topic()).first()
        return row.next_offset if row else 0

    start = position()
    clicks_consumer.start(SHORTENER_CLICKS_BATCH="100")
    wait_until(lambda: position() > start, timeout=30, interval=0.005, what="the first batch")
    assert clicks_consumer.stop(signal.SIGKILL) == -signal.SIGKILL
    cut = position()
    assert cut < end, "the kill must land before the end"
    # Whatever was committed is consistent: each total is the sum of its counters.
    for link in Link.objects.filter(pk__in=[x.pk for x in links]):
        assert link.clicks == sum(link.click_counters.values_list("count", flat=True))
    clicks_consumer.start()
    wait_until(lambda: position() == end, timeout=60, what="the rest after SIGKILL")
    assert sorted(Link.objects.filter(pk__in=[x.pk for x in links])
                  .values_list("clicks", flat=True)) == [500] * 20
