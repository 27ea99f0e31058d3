"""consume_clicks on the master: the idempotent apply, identity by incarnation, bad reports,
SIGKILL mid-batch, replays, compaction over a long outage, and positions out of range."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from datetime import datetime, timezone

import pytest
from django.conf import settings
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import NewTopic

from links.models import ClickCounter, ConsumerPosition, Link
from links.selectors import longurl_digest
from links.services import tinyurl_generate
from links.totals import clicks_apply_batch
from testkit import ClicksConsumerProcess, sample, scrape, topic_end, wait_until
from testkit import FakeRecord as Rec
from tests.conftest import clicks_topic_end
from topics.clicks import click_report_encode, clicks_consumer_make, clicks_topic
from topics.clients import admin_client
from topics.links import producer_get
from topics.positions import PositionMismatch

NOW = datetime.now(timezone.utc)


def report(offset: int, tinyurl: str, node: str, incarnation: str, count: int) -> Rec:
    key, value = click_report_encode(tinyurl=tinyurl, node=node, incarnation=incarnation,
                                     count=count, reported_at=NOW)
    return Rec(offset, key, value)


@pytest.fixture
def link(transactional_db) -> Link:
    return new_link("https://example.com/clicks/unit")


def new_link(longurl: str) -> Link:
    """A link in PostgreSQL (its publishing to the links topic plays no part here)."""
    return Link.objects.create(tinyurl=tinyurl_generate(), longurl=longurl,
                               longurl_sha256=longurl_digest(longurl))


def apply(records, expected):
    return clicks_apply_batch(topic="test-clicks", partition=0, records=records,
                              expected_position=expected)


def counters() -> list[tuple[str, str, int]]:
    return sorted(ClickCounter.objects.values_list("incarnation", "node", "count"))


def test_max_per_counter_makes_duplicates_and_old_reports_harmless(link):
    t = link.tinyurl
    result = apply([report(0, t, "a", "i1", 100), report(1, t, "a", "i1", 200),
                    report(2, t, "b", "i2", 100)], None)
    assert (result.applied, result.raised, result.next_offset) == (3, 2, 3)
    link.refresh_from_db()
    assert link.clicks == 300
    # A duplicate, an out-of-date report, and a report of a new incarnation of replica a.
    apply([report(3, t, "a", "i1", 200), report(4, t, "a", "i1", 100),
           report(5, t, "a", "i3", 100)], 3)
    link.refresh_from_db()
    assert link.clicks == 400
    assert counters() == [("i1", "a", 200), ("i2", "b", 100), ("i3", "a", 100)]


def test_a_node_whose_id_changed_counts_its_counter_once(link):
    """The replica's node id changes (hostname -I's order is not stable) while its Redis, and so
    the incarnation and the counts, stay: the reports under the new id are the same counter."""
    t = link.tinyurl
    apply([report(0, t, "10.0.0.2", "i1", 150)], None)
    apply([report(1, t, "192.168.1.7", "i1", 150), report(2, t, "192.168.1.7", "i1", 180)], 1)
    link.refresh_from_db()
    assert link.clicks == 180
    # The label follows the node that last raised the count.
    assert counters() == [("i1", "192.168.1.7", 180)]


def test_two_hosts_sharing_one_redis_count_each_click_once(link):
    """Two replicas on one Redis both report its counters, in any order and in one batch or
    several: each click is counted once, whichever host reported it."""
    t = link.tinyurl
    apply([report(0, t, "host-a", "shared", 100), report(1, t, "host-b", "shared", 100),
           report(2, t, "host-b", "shared", 230), report(3, t, "host-a", "shared", 200)], None)
    apply([report(4, t, "host-a", "shared", 230), report(5, t, "host-b", "shared", 300)], 4)
    link.refresh_from_db()
    assert link.clicks == 300
    assert counters() == [("shared", "host-b", 300)]


def test_a_stale_position_applies_nothing(link):
    apply([report(0, link.tinyurl, "a", "i1", 100)], None)
    with pytest.raises(PositionMismatch):
        apply([report(1, link.tinyurl, "a", "i1", 300)], None)
    link.refresh_from_db()
    assert link.clicks == 100
    assert ConsumerPosition.objects.get(topic="test-clicks").next_offset == 1


def test_bad_reports_are_counted_and_skipped(link):
    t = link.tinyurl
    schema1 = {"schema": 1, "tinyurl": t, "node": "a", "incarnation": "i", "count": 5,
               "reported_at": NOW.isoformat()}
    good_key, good_value = click_report_encode(tinyurl=t, node="a", incarnation="i1", count=9,
                                               reported_at=NOW)
    bad = [
        Rec(0, b"x", b"not json"),
        Rec(1, b"x", json.dumps([1]).encode()),
        Rec(2, None, json.dumps({"schema": 2}).encode()),
        Rec(3, f"i:{t}".encode(), json.dumps(schema1).encode()),  # schema 1
        Rec(4, f"i:{t}".encode(), json.dumps({**schema1, "schema": 2, "count": -5}).encode()),
        Rec(5, f"i:{t}".encode(), json.dumps({**schema1, "schema": 2, "node": "a b"}).encode()),
        Rec(6, f"i:{t}".encode(), json.dumps({**schema1, "schema": 2, "count": True}).encode()),
        Rec(7, None, None),
        # The key names another counter than the value: the key is what compaction keeps.
        Rec(8, b"other:" + t.encode(), good_value),
        Rec(9, f"i1:{t}x".encode(), good_value),
        Rec(10, good_key, b"\xff\xfe not UTF-8"),
        report(11, "Unknown", "a", "i1", 100),
        report(12, t, "a", "i1", 7),
    ]
    result = apply(bad, None)
    assert (result.skipped_malformed, result.skipped_unknown, result.applied) == (11, 1, 1)
    position = ConsumerPosition.objects.get(topic="test-clicks")
    assert (position.next_offset, position.skipped_malformed, position.skipped_unknown,
            position.applied) == (13, 11, 1, 1)
    link.refresh_from_db()
    assert link.clicks == 7


def test_consume_clicks_skips_poison_and_unknown_reports_and_keeps_running(
    link, clicks_consumer
):
    # The topic is the session's: earlier tests' reports (for links since deleted) are read
    # first and skipped as unknown. Count from where the consumer stands after them.
    end = clicks_topic_end()

    def skipped() -> tuple[int, int]:
        p = ConsumerPosition.objects.filter(topic=clicks_topic()).first()
        return (p.skipped_malformed, p.skipped_unknown) if p else (0, 0)

    wait_until(lambda: end == 0 or ConsumerPosition.objects.filter(
        topic=clicks_topic(), next_offset=end).exists(), timeout=20, what="earlier reports")
    before = skipped()
    producer = producer_get()
    schema1 = json.dumps({"schema": 1, "tinyurl": link.tinyurl, "node": "n", "incarnation": "i",
                          "count": 100}).encode()
    for key, value in [(b"abcdefg", b"garbage"), (f"i:{link.tinyurl}".encode(), schema1),
                       *[click_report_encode(tinyurl="Unknown", node="n", incarnation="i",
                                             count=100, reported_at=NOW)]]:
        producer.send(clicks_topic(), key=key, value=value).get(timeout=10)
    key, value = click_report_encode(tinyurl=link.tinyurl, node="n", incarnation="i", count=7,
                                     reported_at=NOW)
    producer.send(clicks_topic(), key=key, value=value).get(timeout=10)
    wait_until(lambda: Link.objects.get(pk=link.pk).clicks == 7, timeout=20, what="the report")
    after = skipped()
    assert (after[0] - before[0], after[1] - before[1]) == (2, 1)
    assert clicks_consumer.alive()
    output = clicks_consumer.output()
    assert f"rejected record topic={clicks_topic()} partition=0" in output
    assert "reason=schema" in output
    wait_until(lambda: sample(scrape(f"http://127.0.0.1:{clicks_consumer.metrics_port}/metrics"),
                              "shortener_consumer_records_total", topic=clicks_topic(),
                              outcome="skipped") == 2, timeout=10, what="the skipped metric")


def position_of(topic: str) -> int:
    row = ConsumerPosition.objects.filter(topic=topic).first()
    return row.next_offset if row else 0


def test_consume_clicks_killed_mid_batch_neither_loses_nor_double_counts(
    transactional_db, clicks_consumer
):
    assert clicks_consumer.stop() == 0
    links = [new_link(f"https://example.com/clicks/kill/{i}")
             for i in range(20)]
    producer = producer_get()
    # 20 links x 2 replicas x counts 1..250: 10,000 reports, each an absolute count.
    for count in range(1, 251):
        for link in links:
            for incarnation in ("i1", "i2"):
                key, value = click_report_encode(tinyurl=link.tinyurl, node=f"n{incarnation}",
                                                 incarnation=incarnation, count=count,
                                                 reported_at=NOW)
                producer.send(clicks_topic(), key=key, value=value)
    producer.flush()
    end = clicks_topic_end()

    start = position_of(clicks_topic())
    clicks_consumer.start(SHORTENER_CLICKS_BATCH="100")
    wait_until(lambda: position_of(clicks_topic()) > start, timeout=30, interval=0.005,
               what="the first batch")
    assert clicks_consumer.stop(signal.SIGKILL) == -signal.SIGKILL
    cut = position_of(clicks_topic())
    assert cut < end, "the kill must land before the end"
    # Whatever was committed is consistent: each total is the sum of its counters.
    for link in Link.objects.filter(pk__in=[x.pk for x in links]):
        assert link.clicks == sum(link.click_counters.values_list("count", flat=True))
    clicks_consumer.start()
    wait_until(lambda: position_of(clicks_topic()) == end, timeout=60,
               what="the rest after SIGKILL")
    assert sorted(Link.objects.filter(pk__in=[x.pk for x in links])
                  .values_list("clicks", flat=True)) == [500] * 20


def test_replaying_the_whole_topic_from_offset_0_changes_no_total(
    transactional_db, clicks_consumer
):
    links = [new_link(f"https://example.com/clicks/replay/{i}")
             for i in range(10)]
    producer = producer_get()
    for count in (100, 200, 250):
        for i, link in enumerate(links):
            for incarnation, node in (("r1", "n1"), ("r2", "n2"), ("r1", "n1-renamed")):
                key, value = click_report_encode(tinyurl=link.tinyurl, node=node,
                                                 incarnation=incarnation, count=count + i,
                                                 reported_at=NOW)
                producer.send(clicks_topic(), key=key, value=value)
    producer.flush()
    end = clicks_topic_end()
    wait_until(lambda: position_of(clicks_topic()) == end, timeout=30, what="the reports")
    before = dict(Link.objects.values_list("tinyurl", "clicks"))
    assert [before[link.tinyurl] for link in links] == [2 * (250 + i) for i in range(10)]
    counters_before = counters()

    assert clicks_consumer.stop() == 0
    ConsumerPosition.objects.filter(topic=clicks_topic()).update(next_offset=0)
    clicks_consumer.start()
    wait_until(lambda: position_of(clicks_topic()) == end, timeout=30, what="the replay")
    assert dict(Link.objects.values_list("tinyurl", "clicks")) == before
    assert counters() == counters_before


# --- topics of their own: a time-limited one (records deleted unread), a compacted one ------


@pytest.fixture
def own_clicks_topic(transactional_db, test_data_dir):
    """make(configs) -> (consume_clicks process for a clicks topic of its own, topic name).

    The topic belongs to a prefix of its own (SHORTENER_USER), so its settings are the test's,
    not the project's; the process uses the test database."""
    made: list[tuple[ClicksConsumerProcess, str]] = []
    admin = admin_client()

    def make(configs: dict[str, str]) -> tuple[ClicksConsumerProcess, str, str]:
        prefix = f"{settings.SHORTENER_USER}-{uuid.uuid4().hex[:6]}"
        topic = f"{prefix}-clicks"
        admin.create_topics([NewTopic(topic, 1, 1, topic_configs=configs)])
        wait_until(lambda: topic_end(topic) == 0, timeout=20, what=f"topic {topic}")
        process = ClicksConsumerProcess(test_data_dir)
        made.append((process, topic))
        return process, topic, prefix

    yield make
    for process, topic in made:
        if process.alive():
            process.stop(signal.SIGKILL)
        wait_until(lambda: process.sessions() == 0, timeout=10, what="consume_clicks' sessions")
        try:
            admin.delete_topics([topic])
        except Exception:  # noqa: BLE001 - clean-up must not hide the test's result
            pass
    admin.close()


def produce(topic: str, reports: list[tuple[str, str, int]]) -> None:
    """Send (tinyurl, incarnation, count) reports and wait for the acknowledgements."""
    producer = producer_get()
    futures = []
    for tinyurl, incarnation, count in reports:
        key, value = click_report_encode(tinyurl=tinyurl, node=f"n-{incarnation}",
                                         incarnation=incarnation, count=count, reported_at=NOW)
        futures.append(producer.send(topic, key=key, value=value))
    producer.flush()
    for future in futures:
        future.get(timeout=10)


def start_positioned(process: ClicksConsumerProcess, prefix: str) -> None:
    process.start(SHORTENER_USER=prefix)
    wait_until(lambda: "positioned on" in process.output(), timeout=30, what="consume_clicks")


def test_a_position_before_the_retained_records_is_an_error_with_the_count_and_a_metric(
    own_clicks_topic,
):
    """Records deleted before consume_clicks read them (a time-limited topic and a long master
    outage): an ERROR with the exact number skipped and shortener_consumer_records_lost_total,
    then the rest is applied. The deletion is made with DeleteRecords, which is what retention
    does, at an offset the test chooses."""
    process, topic, prefix = own_clicks_topic({"cleanup.policy": "delete"})
    link = new_link("https://example.com/clicks/lost")
    t = link.tinyurl
    start_positioned(process, prefix)
    produce(topic, [(t, "a", 10), (t, "b", 20), (t, "a", 30)])
    wait_until(lambda: position_of(topic) == 3, timeout=20, what="the first reports")
    assert process.stop() == 0

    # While consume_clicks is down: 10 reports, of which the first 5 are deleted unread.
    produce(topic, [(t, "a", 40), (t, "b", 50), (t, "c", 60), (t, "a", 70), (t, "b", 80),
                    (t, "c", 65), (t, "a", 75), (t, "d", 5), (t, "b", 81), (t, "e", 1)])
    admin = admin_client()
    try:
        admin.delete_records({TopicPartition(topic, 0): 8})
    finally:
        admin.close()

    start_positioned(process, prefix)
    wait_until(lambda: position_of(topic) == 13, timeout=30, what="the retained reports")
    output = process.output()
    assert "ERROR" in output and "5 record(s) were deleted unread and are LOST" in output
    samples = scrape(f"http://127.0.0.1:{process.metrics_port}/metrics")
    assert sample(samples, "shortener_consumer_records_lost_total", topic=topic) == 5
    assert sample(samples, "shortener_consumer_out_of_range_total", topic=topic) == 1
    # What was retained is applied: a 75, c 65, d 5, b 81, e 1 (the deleted a 70, c 60 and
    # b 80 are covered by later reports of their counters).
    link.refresh_from_db()
    assert link.clicks == 75 + 81 + 65 + 5 + 1
    assert process.alive()


def test_a_position_beyond_the_end_of_a_recreated_topic_is_an_error_and_reads_it_all(
    own_clicks_topic,
):
    process, topic, prefix = own_clicks_topic({"cleanup.policy": "delete"})
    link = new_link("https://example.com/clicks/recreated")
    # PostgreSQL remembers position 500 of a topic that now holds 2 reports.
    ConsumerPosition.objects.create(topic=topic, partition=0, next_offset=500)
    produce(topic, [(link.tinyurl, "a", 3), (link.tinyurl, "b", 4)])
    start_positioned(process, prefix)
    wait_until(lambda: position_of(topic) == 2, timeout=30, what="the recreated topic's reports")
    assert "ERROR" in process.output()
    assert "the stored position 500 of partition 0 is beyond its end 2" in process.output()
    samples = scrape(f"http://127.0.0.1:{process.metrics_port}/metrics")
    assert sample(samples, "shortener_consumer_out_of_range_total", topic=topic) == 1
    assert sample(samples, "shortener_consumer_topic_recreated_total", topic=topic) == 1
    link.refresh_from_db()
    assert link.clicks == 7


def records_in(topic: str) -> int:
    """How many records reading the partition from its start returns (after compaction)."""
    consumer = KafkaConsumer(bootstrap_servers=settings.KAFKA_BOOTSTRAP_SERVERS,
                             enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    try:
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end, seen = consumer.end_offsets([tp])[tp], 0
        while consumer.position(tp) < end:
            seen += sum(len(r) for r in consumer.poll(timeout_ms=500).values())
        return seen
    finally:
        consumer.close()


def test_compaction_during_a_long_outage_keeps_every_counters_total(own_clicks_topic):
    """consume_clicks is down while replicas report each counter many times and the broker
    compacts the topic down to the newest report per counter: after the restart the totals are
    exactly the last count of every counter."""
    process, topic, prefix = own_clicks_topic({
        "cleanup.policy": "compact",
        # Compact as soon as possible: roll segments every 100 ms, clean at any dirty ratio.
        "segment.ms": "100",
        "min.cleanable.dirty.ratio": "0.01",
        "min.compaction.lag.ms": "0",
        "delete.retention.ms": "100",
    })
    links = [new_link(f"https://example.com/clicks/compact/{i}")
             for i in range(5)]
    incarnations = ("i1", "i2", "i3")
    start_positioned(process, prefix)
    produce(topic, [(link.tinyurl, inc, 1) for link in links for inc in incarnations])
    wait_until(lambda: position_of(topic) == 15, timeout=20, what="the first reports")
    assert process.stop() == 0

    produced = 0
    for count in range(2, 42):
        produce(topic, [(link.tinyurl, inc, count * 10 + i)
                        for i, link in enumerate(links) for inc in incarnations])
        produced += 15
    # The active segment is never cleaned: later records roll it (segment.ms), so the cleaner
    # gets everything before them. Wait until compaction has removed most of the outage's
    # reports, producing a final round of each counter's last count meanwhile.
    last = {(link.tinyurl, inc): 41 * 10 + i for i, link in enumerate(links) for inc in incarnations}

    def compacted() -> bool:
        time.sleep(0.2)
        produce(topic, [(t, inc, c) for (t, inc), c in last.items()])
        return records_in(topic) < 15 + produced // 2

    wait_until(compacted, timeout=120, interval=1, what="the broker to compact the topic")
    end = topic_end(topic)

    start_positioned(process, prefix)
    wait_until(lambda: position_of(topic) == end, timeout=30, what="the compacted backlog")
    row = ConsumerPosition.objects.get(topic=topic)
    assert row.applied < 15 + produced, "compaction must have removed reports"
    assert row.skipped_malformed == 0 and "LOST" not in process.output()
    totals = dict(Link.objects.filter(pk__in=[x.pk for x in links])
                  .values_list("tinyurl", "clicks"))
    assert totals == {link.tinyurl: 3 * (410 + i) for i, link in enumerate(links)}


def test_the_migration_to_incarnation_identity_merges_counters_and_recomputes_totals(
    transactional_db,
):
    """Rows stored under the old identity (link, node, incarnation) that are one counter
    reported by two nodes merge into the largest, and the totals that counted them twice are
    recomputed; nothing else changes."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before = [("links", "0003_takedown")]
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes()
    executor.migrate(before)
    try:
        apps = executor.loader.project_state(before).apps
        OldLink = apps.get_model("links", "Link")
        OldCounter = apps.get_model("links", "ClickCounter")
        doubled = OldLink.objects.create(tinyurl="dOUBLED", longurl="https://example.com/d",
                                         longurl_sha256=b"d" * 32, clicks=450)
        single = OldLink.objects.create(tinyurl="sINGLE1", longurl="https://example.com/s",
                                        longurl_sha256=b"s" * 32, clicks=5)
        for link, node, incarnation, count in [
            (doubled, "10.0.0.2", "i1", 150), (doubled, "192.168.1.7", "i1", 180),
            (doubled, "10.0.0.3", "i2", 120), (single, "10.0.0.2", "i1", 5),
        ]:
            OldCounter.objects.create(link=link, node=node, incarnation=incarnation, count=count)
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(latest)
    assert dict(Link.objects.values_list("tinyurl", "clicks")) == {"dOUBLED": 300, "sINGLE1": 5}
    assert sorted(ClickCounter.objects.values_list("link__tinyurl", "incarnation", "node",
                                                   "count")) == [
        ("dOUBLED", "i1", "192.168.1.7", 180), ("dOUBLED", "i2", "10.0.0.3", 120),
        ("sINGLE1", "i1", "10.0.0.2", 5)]


def test_records_deleted_under_a_running_consumer_are_reported_as_lost(
    own_clicks_topic, settings, caplog
):
    """The position falls out of range while consume_clicks runs (it lags behind a time-limited
    topic's retention): the fetch fails, and the loop reports the loss exactly as at a start.
    The loop runs in this process, so that the deletion lands between positioning and fetching.
    """
    from links.clicks_consumer import clicks_loop_make
    from runtime.metrics import CONSUMER_RECORDS_LOST

    _, topic, prefix = own_clicks_topic({"cleanup.policy": "delete"})
    settings.SHORTENER_USER = prefix
    link = new_link("https://example.com/clicks/lost-running")
    t = link.tinyurl
    produce(topic, [(t, "a", 10)])
    ConsumerPosition.objects.create(topic=topic, partition=0, next_offset=1)
    lost_before = CONSUMER_RECORDS_LOST.labels(topic)._value.get()

    loop = clicks_loop_make(stop=threading.Event())
    kafka = clicks_consumer_make()
    try:
        assert loop._assign(kafka)
        loop.reposition(kafka)  # positioned at 1, which is in range
        produce(topic, [(t, "a", 20), (t, "b", 5), (t, "a", 30), (t, "b", 6), (t, "a", 40),
                        (t, "a", 50), (t, "b", 7), (t, "c", 1), (t, "a", 60), (t, "c", 2)])
        admin = admin_client()
        try:
            admin.delete_records({TopicPartition(topic, 0): 6})
        finally:
            admin.close()
        deadline = time.monotonic() + 30
        while position_of(topic) != 11 and time.monotonic() < deadline:
            loop._poll_once(kafka)
            loop.strategy.poll()
    finally:
        kafka.close(autocommit=False)
        loop.close()
    assert position_of(topic) == 11
    assert CONSUMER_RECORDS_LOST.labels(topic)._value.get() - lost_before == 5
    assert any(r.levelname == "ERROR" and "5 record(s) were deleted unread" in r.getMessage()
               for r in caplog.records)
    link.refresh_from_db()
    assert link.clicks == 60 + 7 + 2
