"""Reading a topic back in tests: what the master really wrote, from the broker."""

from __future__ import annotations

import json

from tests.support import topic_read


def topic_records(topic: str, partition: int = 0) -> list:
    """Every record of the partition, from its start to its current end (ConsumerRecords)."""
    return topic_read(topic, partition)


def _decoded(value: bytes | None) -> dict | bytes | None:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return value


def link_records(topic: str, tinyurl: str) -> list[dict | bytes | None]:
    """One link's record values in offset order: JSON decoded, None for a tombstone, the raw
    bytes for anything that is not JSON."""
    return [_decoded(r.value) for r in topic_records(topic) if r.key == tinyurl.encode()]
