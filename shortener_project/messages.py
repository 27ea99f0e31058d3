"""The shapes of the messages on the project's Kafka topics, defined once for producer and consumer.

Clicks topic (<user>-clicks): key = tinyurl (UTF-8), value = JSON ClickReport. A report carries
what it counts: which replica (node), which life of that replica's counter (incarnation: a new
one whenever its Redis starts empty), and the counter's absolute value. The master keeps the
largest value per (link, node, incarnation), so a duplicate adds nothing and a lost report is
healed by the next one. (A "+100" delta could not be replayed safely.)

Links topic (<user>-links): key = tinyurl (UTF-8), value = JSON LinkRecord. A record is a full
upsert of one link, so applying it twice, or applying an older copy before a newer one of the
same key (impossible within a partition), leaves the same state: replay is harmless.
A value of null (a Kafka tombstone) removes the link.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import TypedDict

TINYURL_LENGTH = 7
TINYURL_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
TINYURL_RE = re.compile(r"[a-zA-Z0-9]{7}")
# Paths a server answers itself that have the shape of a tinyurl; never issued as codes.
RESERVED_TINYURLS = frozenset({"metrics", "healthz"})

# Bump when a record's meaning changes; consumers skip (and count) schemas they do not know,
# so an old replica never misreads a newer record.
LINK_SCHEMA = 1


class MessageError(ValueError):
    """A message that cannot be applied: logged, counted and skipped by the consumer."""


class LinkRecord(TypedDict):
    schema: int
    tinyurl: str
    longurl: str
    created_at: str  # ISO 8601, UTC


def link_record_encode(*, tinyurl: str, longurl: str, created_at: datetime) -> tuple[bytes, bytes]:
    """The (key, value) of the links-topic message for one link."""
    record: LinkRecord = {
        "schema": LINK_SCHEMA,
        "tinyurl": tinyurl,
        "longurl": longurl,
        "created_at": created_at.isoformat(),
    }
    value = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()
    return tinyurl.encode(), value


def link_record_decode(key: bytes | None, value: bytes | None) -> LinkRecord | None:
    """Parse and check one links-topic message; None for a tombstone (the link was removed).

    Raises MessageError for anything a replica must not store.
    """
    if key is None:
        raise MessageError("message has no key")
    try:
        tinyurl = key.decode()
    except UnicodeDecodeError:
        raise MessageError("key is not UTF-8") from None
    if not TINYURL_RE.fullmatch(tinyurl):
        raise MessageError(f"key {tinyurl[:20]!r} is not a tinyurl")
    if value is None:
        return None
    try:
        record = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError(f"value is not JSON: {exc}") from None
    if not isinstance(record, dict):
        raise MessageError("value is not a JSON object")
    if record.get("schema") != LINK_SCHEMA:
        raise MessageError(f"unknown schema {record.get('schema')!r}")
    if record.get("tinyurl") != tinyurl:
        raise MessageError("value's tinyurl differs from the key")
    longurl = record.get("longurl")
    if not isinstance(longurl, str) or not longurl.startswith(("http://", "https://")):
        raise MessageError("longurl is missing or not an http(s) URL")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in longurl):
        raise MessageError("longurl has whitespace or control characters")
    return record  # type: ignore[return-value]


CLICK_SCHEMA = 1
NODE_RE = re.compile(r"[A-Za-z0-9._-]{1,100}")
INCARNATION_RE = re.compile(r"[A-Za-z0-9]{1,64}")


class ClickReport(TypedDict):
    schema: int
    tinyurl: str
    node: str
    incarnation: str
    count: int
    reported_at: str  # ISO 8601, UTC


def click_report_encode(
    *, tinyurl: str, node: str, incarnation: str, count: int, reported_at: datetime
) -> tuple[bytes, bytes]:
    report: ClickReport = {
        "schema": CLICK_SCHEMA,
        "tinyurl": tinyurl,
        "node": node,
        "incarnation": incarnation,
        "count": count,
        "reported_at": reported_at.isoformat(),
    }
    return tinyurl.encode(), json.dumps(report, separators=(",", ":")).encode()


def click_report_decode(key: bytes | None, value: bytes | None) -> ClickReport:
    """Parse and check one clicks-topic message; MessageError for anything not applicable."""
    if value is None:
        raise MessageError("empty value")
    try:
        report = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError(f"value is not JSON: {exc}") from None
    if not isinstance(report, dict):
        raise MessageError("value is not a JSON object")
    if report.get("schema") != CLICK_SCHEMA:
        raise MessageError(f"unknown schema {report.get('schema')!r}")
    tinyurl = report.get("tinyurl")
    if not isinstance(tinyurl, str) or not TINYURL_RE.fullmatch(tinyurl):
        raise MessageError("tinyurl is missing or malformed")
    if key is not None and key != tinyurl.encode():
        raise MessageError("key differs from the report's tinyurl")
    node, incarnation = report.get("node"), report.get("incarnation")
    if not isinstance(node, str) or not NODE_RE.fullmatch(node):
        raise MessageError("node is missing or malformed")
    if not isinstance(incarnation, str) or not INCARNATION_RE.fullmatch(incarnation):
        raise MessageError("incarnation is missing or malformed")
    count = report.get("count")
    # bool is an int in Python; a count of True is not a count.
    if not isinstance(count, int) or isinstance(count, bool) or not 0 < count < 2**62:
        raise MessageError("count is missing or not a positive integer")
    return report  # type: ignore[return-value]
