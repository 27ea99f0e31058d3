"""The topics, read and written directly: what the master and replicas really wrote."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone

from django.conf import settings

from topics.links import LinkRecord, link_record_decode
from topics.records import MessageError


@dataclass
class FakeRecord:
    """A Kafka record's shape, for calling the batch-apply functions directly."""

    offset: int
    key: bytes | None
    value: bytes | None
    partition: int = 0
    topic: str = "test"


def topic_end(topic: str, partition: int = 0) -> int:
    """The partition's end offset (the offset the next record will get)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.KAFKA_BOOTSTRAP_SERVERS)
    try:
        tp = TopicPartition(topic, partition)
        return consumer.end_offsets([tp])[tp]
    finally:
        consumer.close()


# --- the topics, read and written directly ----------------------------------------------------


def tinyurl_new() -> str:
    import secrets
    import string

    from topics.records import RESERVED_TINYURLS

    while (code := "".join(secrets.choice(string.ascii_letters + string.digits)
                           for _ in range(7))) in RESERVED_TINYURLS:
        pass  # "Metrics": a reserved name, which every reader refuses
    return code


def link_produce(tinyurl: str, version: int, longurl: str | None = None, *,
                 disabled: bool = False, expires_at: datetime | None = None) -> int:
    """Produce one schema-2 link record straight to the links topic; returns its offset."""
    from topics.links import link_record_encode, links_topic, producer_get

    key, value = link_record_encode(tinyurl=tinyurl, version=version, longurl=longurl,
                                    disabled=disabled, expires_at=expires_at,
                                    created_at=datetime.now(timezone.utc))
    return producer_get().send(links_topic(), key=key, value=value).get(timeout=10).offset


def topic_read(topic: str, partition: int = 0) -> list:
    """Every record the partition holds now, from its first offset to its end."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.KAFKA_BOOTSTRAP_SERVERS,
                             enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        records = []
        deadline = time.monotonic() + 30
        while consumer.position(tp) < end:
            assert time.monotonic() < deadline, f"reading {topic} timed out"
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def click_reports(tinyurl: str) -> list:
    """Every click report of `tinyurl` in the clicks topic, in order (ClickReports): a report
    batch's pair or triple for it (schema 3 or 4) as the single report (schema 2) it stands for
    (its bots left out: click_bots gives them)."""

    from topics.clicks import (
        ClickBatch,
        ClickBatchBots,
        ClickReport,
        clicks_record_decode,
        clicks_topic,
    )
    from topics.records import MessageError

    reports = []
    for record in topic_read(clicks_topic()):
        # The session's topic also holds other tests' deliberately malformed reports.
        try:
            report = clicks_record_decode(record.key, record.value)
        except MessageError:
            continue
        if isinstance(report, (ClickBatch, ClickBatchBots)):
            reports += [ClickReport(schema=2, tinyurl=c[0], node=report.node,
                                    incarnation=report.incarnation, count=c[1],
                                    reported_at=report.reported_at)
                        for c in report.counts if c[0] == tinyurl]
        elif report is not None and report.tinyurl == tinyurl:
            reports.append(report)
    return reports


def master_counts(tinyurl: str) -> dict[str, int]:
    """What the master's max() per counter makes of the reports of `tinyurl`:
    `<incarnation>:<tinyurl>` -> the largest count reported."""
    best: dict[str, int] = {}
    for r in click_reports(tinyurl):
        key = f"{r.incarnation}:{r.tinyurl}"
        best[key] = max(best.get(key, 0), r.count)
    return best


def topic_records(topic: str, partition: int = 0) -> list:
    """Every record of the partition, from its start to its current end (ConsumerRecords)."""
    return topic_read(topic, partition)


def _decoded(key: bytes | None, value: bytes | None) -> LinkRecord | bytes | None:
    try:
        return link_record_decode(key, value)
    except MessageError:
        return value


def link_records(topic: str, tinyurl: str) -> list[LinkRecord | bytes | None]:
    """One link's records in offset order: the LinkRecord (link_record_decode), None for a
    tombstone, the raw value for anything the decoder rejects (tests produce such records)."""
    return [_decoded(r.key, r.value) for r in topic_records(topic) if r.key == tinyurl.encode()]


@contextmanager
def own_prefix(tag: str) -> Iterator[tuple[str, object]]:
    """A user prefix of the caller's own (this run's SHORTENER_USER, `tag`, 6 hex digits), in
    force as SHORTENER_USER meanwhile, so that its topics are the caller's to create, delete and
    miss. Yields (the prefix, a KafkaAdminClient); afterwards deletes whichever of the prefix's
    topics exist, and closes the client."""
    from django.test import override_settings

    from topics.clients import admin_client
    from topics.provisioning import topic_specs

    prefix = f"{settings.SHORTENER_USER}{tag}{uuid.uuid4().hex[:6]}"
    with override_settings(SHORTENER_USER=prefix):
        admin = admin_client()
        try:
            yield prefix, admin
        finally:
            try:
                existing = set(admin.list_topics())
                names = [spec.name for spec in topic_specs() if spec.name in existing]
                if names:
                    admin.delete_topics(names)
            finally:
                admin.close()
