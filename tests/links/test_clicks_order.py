"""The clicks topic's order against the master's fold, on real topics (topics/,
clicks topic): a counter's report with a lower count can land after one with a higher count (a
re-sent milestone, a reporter restart, two reporters on one Redis). consume_clicks never lowers a
total for it, and compaction keeps the report with the highest offset, not the highest count."""

from __future__ import annotations

import json
import time

from django.conf import settings
from kafka import KafkaConsumer, TopicPartition

from links.models import ClickCounter, ConsumerPosition, Link
from testkit import topic_end, wait_until
from tests.links.test_clicks import (  # noqa: F401 - own_clicks_topic is a fixture
    new_link,
    own_clicks_topic,
    position_of,
    produce,
    start_positioned,
)


def counts_by_key(topic: str) -> dict[str, list[int]]:
    """Every record in the partition, from its start: key -> the counts, in offset order."""
    consumer = KafkaConsumer(bootstrap_servers=settings.KAFKA_BOOTSTRAP_SERVERS,
                             enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    out: dict[str, list[int]] = {}
    try:
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        while consumer.position(tp) < end:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    out.setdefault(record.key.decode(), []).append(
                        json.loads(record.value)["count"])
        return out
    finally:
        consumer.close()


def test_an_older_report_landing_after_a_newer_one_leaves_the_total_unchanged(own_clicks_topic):
    process, topic, prefix = own_clicks_topic({"cleanup.policy": "compact"})
    link = new_link("https://example.com/clicks/order")
    t = link.tinyurl
    start_positioned(process, prefix)
    produce(topic, [(t, "i1", 150)])
    wait_until(lambda: position_of(topic) == 1, timeout=20, what="the newer report")
    produce(topic, [(t, "i1", 100)])  # the older count, at the higher offset
    wait_until(lambda: position_of(topic) == 2, timeout=20, what="the older report")
    link.refresh_from_db()
    assert link.clicks == 150
    assert ClickCounter.objects.get(link=link, incarnation="i1").count == 150

    # Read again from offset 0 (both reports again, in offset order): still nothing lowered.
    assert process.stop() == 0
    ConsumerPosition.objects.filter(topic=topic).update(next_offset=0)
    start_positioned(process, prefix)
    wait_until(lambda: position_of(topic) == 2, timeout=20, what="the replay")
    link.refresh_from_db()
    assert link.clicks == 150


def test_compaction_keeps_the_report_with_the_highest_offset_not_the_highest_count(
    own_clicks_topic, transactional_db,
):
    """What topics/clicks.py says the compacted topic holds: for a counter whose lower count landed last,
    the lower count. A master that starts over from the compacted topic alone (no counters in
    PostgreSQL) folds that count, until the counter's next report."""
    process, topic, prefix = own_clicks_topic({
        "cleanup.policy": "compact",
        # Compact as soon as possible: roll segments every 100 ms, clean at any dirty ratio.
        "segment.ms": "100",
        "min.cleanable.dirty.ratio": "0.01",
        "min.compaction.lag.ms": "0",
    })
    link = new_link("https://example.com/clicks/compacted-order")
    other = new_link("https://example.com/clicks/compacted-order-filler")
    key = f"i1:{link.tinyurl}"
    produce(topic, [(link.tinyurl, "i1", 150), (link.tinyurl, "i1", 100)])

    # The active segment is never cleaned: later records roll it (segment.ms), so the cleaner
    # gets the two reports once another counter's reports follow them.
    def compacted() -> bool:
        time.sleep(0.2)
        produce(topic, [(other.tinyurl, "f", 1)])
        return len(counts_by_key(topic)[key]) == 1

    wait_until(compacted, timeout=100, interval=1, what="the broker to compact the topic")
    assert counts_by_key(topic)[key] == [100]

    end = topic_end(topic)
    start_positioned(process, prefix)
    wait_until(lambda: position_of(topic) == end, timeout=30, what="the compacted topic")
    link.refresh_from_db()
    assert link.clicks == 100
    # The counter's next report carries its current count and raises the total again.
    produce(topic, [(link.tinyurl, "i1", 152)])
    wait_until(lambda: Link.objects.get(pk=link.pk).clicks == 152, timeout=20,
               what="the next report")
