"""Reading a topic back in tests: what the master really wrote, from the broker."""

from __future__ import annotations

from shortener_project.messages import LinkRecord, MessageError, link_record_decode
from tests.support import topic_read


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
