"""The links topic, <user>-links: every link's current state, from the master to every replica.

Key: the tinyurl (UTF-8). Value: JSON LinkRecord, the link's whole
state (active with its longurl, or disabled) and its state version. A replica applies a record
only if its version is newer than the one it holds, so a late copy of an older state, in any
order, changes nothing; a takedown is a record that compaction keeps, never a tombstone.

Delivery: AT-LEAST-ONCE into a versioned apply (a replica ends in the state the master holds,
whatever it missed, replayed or received late):
  * a record is a link's whole state (active with its longurl, or disabled) with its state
    version; a replica applies a record only if its version is newer than the one it holds,
    so duplicates, replays and late copies of older states change nothing;
  * a takedown is a "disabled" record, which compaction keeps like any other newest record: a
    replica that was away for any length of time still reads it (never a tombstone, which
    compaction drops after delete.retention.ms);
  * the master publishes after its commit and waits for the ack; until then the link stays
    marked unpublished and the outbox relay sends it again;
  * compaction keeps the record with the highest *offset* of each key, not the highest version
    (Kafka documentation, Design, "Log Compaction": "Kafka will always retain at least the last
    known value for each message key"): the relay also reads the topic and sends a link's
    current state again whenever an older one lands after it (links/audit.py), so a replica
    reading the topic from the start later gets it too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal, Protocol

import msgspec
from django.conf import settings
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from msgspec import Meta

from topics import longurls, passwords
from topics.clients import consumer_make, producer_close, producer_make
from topics.records import (ALIAS_CHARS, ALIAS_MAX_LENGTH, ALIAS_MIN_LENGTH, ENCODER, INT_MAX,
                            RESERVED_TINYURLS, MessageError, RecordStruct, Time, Tinyurl,
                            decode_error, key_text)
from topics.specs import TopicSpec, durability_configs

logger = logging.getLogger(__name__)


def links_topic() -> str:
    return f"{settings.SHORTENER_USER}-links"


def links_group() -> str:
    # One group per replica: every replica must read the whole topic, so replicas must never
    # share a group (sharing would split the partitions between them). The assignment's
    # convention: the user prefix, and the server's address at the end.
    return f"{settings.SHORTENER_USER}-links-{settings.SHORTENER_NODE_ID}"


# The largest state version a record may carry (INT_MAX: see topics/records.py). It also leaves
# room in Link.state_version's 64-bit column for the master to raise its own version above any
# it finds in the topic (links/audit.py).
VERSION_MAX = INT_MAX


# The last millisecond of year 9999, the largest time Python's datetime (the master's
# Link.expires_at) holds, in ms since the Unix epoch: the master never writes a later expires_at.
# Plus SHORTENER_GONE_KEEP_SECONDS it stays far below 2**53, so the replica's PEXPIREAT, taken
# by Lua as a double, is exact.
EXPIRES_AT_MAX = 253_402_300_799_999


# Bump when a record's meaning changes; consumers reject (and count) schemas they do not know,
# so an old replica never misreads a newer record.
# Schema 2 (this one): every record carries the link's state version and its whole state
# (active with its longurl, or disabled), so a replica applies a record only if it is newer than
# what it holds, and a takedown is a record that compaction keeps (never a tombstone).
LINK_SCHEMA = 2


LINK_STATES = ("active", "disabled")


class LinkRecord(RecordStruct, kw_only=True):
    """One link's whole state on the links topic. Key: the tinyurl (UTF-8), equal to `tinyurl`.
    An active link carries a longurl that a replica can serve as it is
    (topics/longurls.py: longurl_problem); a disabled one carries none (null or
    absent). A tombstone (null value) carries no version and is ignored."""

    schema: Annotated[Literal[2], Meta(description="The record's schema version.")]
    tinyurl: Tinyurl
    version: Annotated[int, Meta(
        ge=1, le=VERSION_MAX,
        description="Link.state_version: bumped by every change of what replicas must hold. A "
                    "replica applies a record only if its version is greater than the one it "
                    "holds.")]
    state: Annotated[Literal["active", "disabled"], Meta(
        description="active: redirect to longurl; disabled: taken down (404).")]
    longurl: Annotated[str, Meta(
        min_length=1, max_length=longurls.SERVABLE_MAX_LENGTH,
        description="The target exactly as it goes into Location; null when disabled.")
    ] | None = None
    expires_at: Annotated[int, Meta(
        ge=1, le=EXPIRES_AT_MAX,
        description="Milliseconds since the Unix epoch (UTC) after which replicas answer 410 "
                    "Gone; null: never.")] | None
    created_at: Annotated[Time, Meta(description="When the link was created (RFC 3339).")]
    # Optional: older records decode as unprotected links (no schema bump; docs/records.md).
    password_hash: Annotated[str, Meta(pattern=passwords.HASH_PATTERN, description=(
        "A password-protected link: the salted scrypt hash of its password (topics/passwords.py)"
        ", never the password; replicas answer a form first. Absent or null: none."))] | None = None


# msgspec compiles the type's checks when the decoder is made: once.
_link_decoder = msgspec.json.Decoder(LinkRecord)


def link_record_encode(
    *,
    tinyurl: str,
    version: int,
    longurl: str | None,
    created_at: datetime,
    disabled: bool = False,
    expires_at: datetime | None = None,
    password_hash: str | None = None,
) -> tuple[bytes, bytes]:
    """The (key, value) of the links-topic record for one link's current state.

    key: the tinyurl (UTF-8), the compaction key. value: JSON LinkRecord. A disabled link's
    record carries no longurl (null): replicas keep only its version, so that an older record
    that arrives later cannot bring the link back. Raises ValueError for an active link without
    a longurl, and for a version outside 1..VERSION_MAX (a record no replica would apply).
    expires_at at or before the Unix epoch (the admin accepts any past time: "ends at once")
    is sent as 1 ms, which every replica reads as long past: the type's range starts at 1, and a
    record out of it would be refused by every replica while the master thought it published.
    password_hash (topics/passwords.py) is carried for an active link only.
    """
    if not disabled and not longurl:
        raise ValueError("an active link needs its longurl")
    if not 1 <= version <= VERSION_MAX:
        raise ValueError(f"version {version} is outside 1..{VERSION_MAX}")
    expires_ms = None
    if expires_at is not None:
        expires_ms = min(max(1, int(expires_at.timestamp() * 1000)), EXPIRES_AT_MAX)
    record = LinkRecord(
        schema=LINK_SCHEMA, tinyurl=tinyurl, version=version,
        state="disabled" if disabled else "active",
        longurl=None if disabled else longurl,
        expires_at=expires_ms,
        created_at=created_at,
        password_hash=None if disabled else password_hash,
    )
    return tinyurl.encode(), ENCODER.encode(record)


def link_record_decode(key: bytes | None, value: bytes | None) -> LinkRecord | None:
    """Decode and check one links-topic record: the LinkRecord, or None for a tombstone (value
    null: the master no longer writes them, and a tombstone carries no version, so a replica
    ignores it). Raises MessageError (with its reason) for anything a replica must not store.
    """
    record = _record_decode(key, value)
    if record is not None and record.state == "active":
        problem = longurls.longurl_problem(record.longurl)
        if problem is not None:
            raise _longurl_error(problem)
    return record


class KeyValue(Protocol):
    key: bytes | None
    value: bytes | None


def link_records_decode(records: Sequence[KeyValue]) -> list[LinkRecord | MessageError | None]:
    """link_record_decode of each record, in order: its LinkRecord, None (a tombstone), or the
    MessageError it raises, as a value. The same outcome for every record as one call each
    (tests/test_record_properties.py), for a replica's batch: the longurls of the batch are
    checked together (longurls.all_servable), and one by one only if that fails.
    Any other error propagates, as from link_record_decode."""
    results: list[LinkRecord | MessageError | None] = []
    active: list[int] = []  # where the active links are in `results`
    decode = _record_decode
    for rec in records:
        try:
            record = decode(rec.key, rec.value)
        except MessageError as exc:
            results.append(exc)
            continue
        if record is not None and record.state == "active":
            active.append(len(results))
        results.append(record)
    if not longurls.all_servable([results[i].longurl for i in active]):  # type: ignore[union-attr]
        for i in active:
            problem = longurls.longurl_problem(results[i].longurl)  # type: ignore[union-attr]
            if problem is not None:
                results[i] = _longurl_error(problem)
    return results


def _record_decode(key: bytes | None, value: bytes | None) -> LinkRecord | None:
    """link_record_decode but for the check of an active link's longurl (longurl_problem)."""
    tinyurl = key_text(key)
    # topics.records.tinyurl_ok inlined, to say which of its two rules failed: str methods, about
    # half the time of the regex per record. A reserved name is the servers' own path (/metrics):
    # a record claiming one (forged, or older than the name) never makes a replica redirect it.
    if not (ALIAS_MIN_LENGTH <= len(tinyurl) <= ALIAS_MAX_LENGTH and tinyurl.isascii()
            and (tinyurl.isalnum() or not tinyurl.strip(ALIAS_CHARS))):
        raise MessageError(f"key {tinyurl[:70]!r} is not a tinyurl", reason="key")
    if tinyurl in RESERVED_TINYURLS:
        raise MessageError(f"key {tinyurl!r} is a reserved path", reason="reserved")
    if value is None:
        return None
    try:
        record = _link_decoder.decode(value)
    except (msgspec.MsgspecError, ValueError, RecursionError) as exc:
        raise decode_error(exc, "links record") from None
    if record.tinyurl != tinyurl:  # the key's tinyurl is checked: so is the value's
        raise MessageError("value's tinyurl differs from the key", reason="key")
    if record.state == "active":
        if record.longurl is None:
            raise MessageError("an active link's longurl is missing", reason="longurl")
    elif record.longurl is not None:
        raise MessageError("a disabled link's record carries a longurl", reason="state")
    return record


def _longurl_error(problem: str) -> MessageError:
    # The same definition the master used when it accepted the link (one definition for both
    # sides: whatever /create accepts, every replica serves).
    return MessageError(f"longurl is not servable: {problem}", reason="longurl")


def links_topic_spec() -> TopicSpec:
    durability, relied = durability_configs()
    rf = settings.KAFKA_REPLICATION_FACTOR
    return TopicSpec(
        name=links_topic(),
        # ONE partition. Every replica is its own consumer group and reads every partition with
        # a single consumer, so more partitions would add no read parallelism, only more
        # positions to track per replica. One partition carries far more than the master
        # produces: a bare kafka-python consumer read one at 107,000-145,000 link records/s
        # on a 2-core machine (records of ~200 bytes; docs/performance.md, bench/catchup.py),
        # against /create's at most 414 a second measured there. It gives all links one
        # order, so "caught up" is one offset comparison.
        partitions=1,
        replication_factor=rf,
        configs={
            # Compaction keeps, for every key (tinyurl), at least its record with the highest
            # offset, forever (Kafka documentation, Design, "Log Compaction"), and drops
            # older ones: the topic is every link's last published state, as the assignment
            # assumes, and stays so past any time-based retention (the default "delete"
            # removes segments after retention.ms). A new replica reads it from the start.
            # A takedown is a record too ("disabled"), so it is kept like any other state.
            "cleanup.policy": "compact",
            **durability,
        },
        relied=relied,
    )


def publish_timeout_ms() -> int:
    """The one bound on a link's delivery, in ms: SHORTENER_PUBLISH_TIMEOUT (seconds).

    It is the producer's delivery_timeout_ms, so the producer itself reports a record it could
    not deliver in time as failed; /create waits for that answer (see `publish_wait_seconds`)."""
    return int(settings.SHORTENER_PUBLISH_TIMEOUT * 1000)


def publish_wait_seconds() -> float:
    """How long a caller waits on a link's future: the delivery bound plus a second for the
    producer's sender thread to expire the batch and report it. A wait that ends by this
    client-side limit, with the future still pending, is not a delivery failure."""
    return settings.SHORTENER_PUBLISH_TIMEOUT + 1.0


def links_producer_settings() -> dict[str, Any]:
    """The master's links producer's own settings. acks and idempotence are kafka-python
    3.0.12's defaults (acks=-1, "all", and enable_idempotence=True: "Since KIP-679 (Kafka 3.0),
    idempotence is enabled by default and `acks` defaults to 'all'", KafkaProducer's docstring):
    /create answers only once every in-sync replica has the record, and a retried batch is not
    written twice. The producer turns idempotence off, with a warning, only when acks, retries
    or in-flight requests conflict; none is set here (tests/test_bus.py checks the values)."""
    bound = publish_timeout_ms()
    # No linger_ms (default 0): /create's group commit (links/batching.py) and bulk creates hand
    # the producer a whole batch of records at once, so waiting for company would only delay a
    # request that came alone (the 2 ms it was set to before group commit existed).
    return {
        # 512 KiB (default 16 KiB): kafka-python 3.0.12 wakes its sender thread on every send()
        # while more than one batch is queued, and a bulk's 10,000 records filled ~140 of 16 KiB:
        # the master's CPU a bulk link 49-59 -> 36-45 us (in-process; docs/performance.md).
        "batch_size": 512 * 1024,
        # -- ONE bound, SHORTENER_PUBLISH_TIMEOUT (default 5 s), so that /create answers 503
        # -- within seconds while Kafka is down, instead of after the 30-120 s defaults, and
        # -- never gives up before the producer does.
        # The whole delivery of a record, retries included (default 120 s): the producer fails
        # it after this long, and /create waits for exactly that answer. The record then stays
        # unpublished in PostgreSQL and the outbox re-sends it.
        "delivery_timeout_ms": bound,
        # One produce request (default 30 s): kafka-python 3.0.12 requires delivery_timeout_ms
        # >= linger_ms + request_timeout_ms (RecordAccumulator raises otherwise; linger_ms is 0).
        "request_timeout_ms": bound,
        # Reaching a broker when the producer is made (PRODUCER_BASE's 5 s, made this bound),
        # and send() blocking for the topic's metadata (default 60 s): only on a fresh
        # producer (the process's first /create, or the first after a failed delivery). When
        # Kafka does not answer, the request fails after this, with no delivery wait after it.
        "bootstrap_timeout_ms": bound,
        "max_block_ms": bound,
    }


_producer: KafkaProducer | None = None


_producer_lock = threading.Lock()


# When the last attempt to make _producer failed (time.monotonic()) and why: shared with the
# requests that waited for that attempt (producer_get).
_producer_failed: tuple[float, str] | None = None


def producer_get() -> KafkaProducer:
    """The process's producer, made on first use (after gunicorn forks) and shared by threads.

    KafkaProducer is thread-safe; one per process batches the concurrent requests' records.
    Raises KafkaError (NoBrokersAvailable) when Kafka cannot be reached within the publish
    timeout; the next call tries again.
    """
    global _producer, _producer_failed
    asked = time.monotonic()
    with _producer_lock:
        if _producer is not None:
            return _producer
        failed = _producer_failed
        if failed is not None and failed[0] >= asked:
            # Another thread's attempt ended while this one waited for the lock: its answer is
            # this one's too. Otherwise a burst of /create during an outage waited one publish
            # timeout per request in turn (6 requests: answered at 5, 10, ... 30 s).
            raise KafkaError(f"Kafka could not be reached: {failed[1]}")
        try:
            _producer = producer_make(
                client_id=f"{settings.SHORTENER_USER}-master-{settings.SHORTENER_NODE_ID}",
                own=links_producer_settings())
        except KafkaError as exc:
            _producer_failed = (time.monotonic(), repr(exc))
            raise
        _producer_failed = None
        return _producer


def producer_reset(producer: KafkaProducer | None = None) -> None:
    """Close and forget the process's producer, so that the next use makes a new one.

    With `producer`, only if it is still the current one: a thread that saw an older producer
    fail must not close the fresh one that another thread made since. Called after a real
    delivery failure (never after a caller's own wait ran out: that would fail the other
    requests' records in flight) and in tests. Requests whose records the closed producer still
    held see them fail, and answer 503 like the one that failed.
    """
    global _producer
    with _producer_lock:
        if _producer is None or (producer is not None and producer is not _producer):
            return
        producer_close(_producer)
        _producer = None


def links_consumer_settings() -> dict[str, Any]:
    """The replica's links consumer's own settings (consume_links)."""
    return {
        # Only used if a stored position is out of range (the topic was recreated): start over
        # (default "latest" would skip every record). Re-reading is harmless: records older
        # than what Redis holds are not applied.
        "auto_offset_reset": "earliest",
        # Large batches make catch-up fast: one Redis transaction per up to this many links
        # (5,000 by default; SHORTENER_LINKS_BATCH; kafka-python's default 500).
        # (max_partition_fetch_bytes stays at its default, 1 MiB per partition per fetch: on
        # 100,000 link records of ~250 bytes it gave polls of ~3,800 records against ~4,300
        # with 8 MiB, in the same read time within noise; docs/delivery-guarantees.md.
        # fetch_max_wait_ms stays at its default too: it is how long the broker holds a fetch
        # when less than fetch_min_bytes, 1 byte, is available, so a new record is answered at
        # once. Source: Kafka's consumer configs, fetch.max.wait.ms and fetch.min.bytes.
        # Measured again with the pipelined apply, redirects/links_writes.py: loading 1,000,000
        # links took consume_links 6.2-6.4 s of CPU with either size; and one more setting
        # would make the links topic's ten with replication factor >= 2, tests/test_bus.py.)
        "max_poll_records": settings.SHORTENER_LINKS_BATCH,
    }


def links_consumer_make() -> KafkaConsumer:
    """A consumer for the links topic. The caller assigns partitions and seeks (no subscribe).

    Its group is where this replica's progress is *shown* (kafka-consumer-groups.sh
    --describe, lag alerts), not where it is *kept*: the position lives in Redis, written
    atomically with the links (see redirects/consumer.py), so that a wiped Redis is rebuilt from
    the start even though the group's offsets are at the end."""
    return consumer_make(
        client_id=f"{settings.SHORTENER_USER}-links-{settings.SHORTENER_NODE_ID}",
        group_id=links_group(), own=links_consumer_settings())


def links_audit_consumer_settings() -> dict[str, Any]:
    """The master's links audit consumer's own settings."""
    return {
        # Only if the stored position is out of range (the topic was recreated): audit it all.
        "auto_offset_reset": "earliest",
        # One PostgreSQL transaction per batch: the whole topic is read at the first start.
        "max_poll_records": settings.SHORTENER_LINKS_BATCH,
    }


def links_audit_consumer_make() -> KafkaConsumer:
    """The master's reader of its own links topic (links/audit.py): it checks that the newest
    record of every link there is the link's current state. The caller assigns and seeks.
    Progress is shown under the assignment's group naming and kept in PostgreSQL."""
    return consumer_make(
        client_id=f"{settings.SHORTENER_USER}-links-audit-{settings.SHORTENER_NODE_ID}",
        group_id=f"{settings.SHORTENER_USER}-links-audit", own=links_audit_consumer_settings())
