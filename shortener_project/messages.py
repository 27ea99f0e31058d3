"""The shapes of the messages on the project's Kafka topics, defined once for producer and consumer.

Clicks topic (<user>-clicks): key = `<incarnation>:<tinyurl>` (UTF-8), value = JSON ClickReport.
A report carries what it counts: which counter (incarnation: one life of one replica's Redis),
the counter's absolute value, and the node that sent it as a label. The master keeps the largest
value per (link, incarnation), so a duplicate adds nothing and a lost report is healed by the
next one. (A "+100" delta could not be replayed safely.)

Links topic (<user>-links): key = tinyurl (UTF-8), value = JSON LinkRecord: the link's whole
state (active with its longurl, or disabled) and its state version. A replica applies a record
only if its version is newer than the one it holds, so a late copy of an older state, in any
order, changes nothing; a takedown is a record that compaction keeps, never a tombstone.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import TypedDict

import orjson

from shortener_project import longurls

TINYURL_LENGTH = 7
TINYURL_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
TINYURL_RE = re.compile(r"[a-zA-Z0-9]{7}")
# Paths a server answers itself that have the shape of a tinyurl; never issued as codes.
RESERVED_TINYURLS = frozenset({"metrics", "healthz"})

# Bump when a record's meaning changes; consumers skip (and count) schemas they do not know,
# so an old replica never misreads a newer record.
# Schema 2 (this one): every record carries the link's state version and its whole state
# (active with its longurl, or disabled), so a replica applies a record only if it is newer than
# what it holds, and a takedown is a record that compaction keeps (never a tombstone).
LINK_SCHEMA = 2
LINK_STATES = ("active", "disabled")


class MessageError(ValueError):
    """A message that cannot be applied: logged, counted and skipped by the consumer."""


class LinkRecord(TypedDict):
    schema: int
    tinyurl: str
    # Link.state_version: bumped by every change of what replicas must hold. A replica applies a
    # record only if its version is greater than the one it holds; replays change nothing.
    version: int
    state: str  # "active" (redirect) or "disabled" (taken down: 404)
    longurl: str | None  # the target, exactly as it goes into Location; None when disabled
    # Milliseconds since the Unix epoch (UTC) after which replicas answer 410 Gone; None: never.
    expires_at: int | None
    created_at: str  # ISO 8601, UTC


def link_record_encode(
    *,
    tinyurl: str,
    version: int,
    longurl: str | None,
    created_at: datetime,
    disabled: bool = False,
    expires_at: datetime | None = None,
) -> tuple[bytes, bytes]:
    """The (key, value) of the links-topic message for one link's current state.

    key: the tinyurl (UTF-8), the compaction key. value: JSON LinkRecord. A disabled link's
    record carries no longurl: replicas keep only its version, so that an older record that
    arrives later cannot bring the link back.
    """
    if not disabled and not longurl:
        raise ValueError("an active link needs its longurl")
    record: LinkRecord = {
        "schema": LINK_SCHEMA,
        "tinyurl": tinyurl,
        "version": version,
        "state": "disabled" if disabled else "active",
        "longurl": None if disabled else longurl,
        "expires_at": int(expires_at.timestamp() * 1000) if expires_at is not None else None,
        "created_at": created_at.isoformat(),
    }
    value = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()
    return tinyurl.encode(), value


# The largest link state version a record may carry: below 2**53, so that it is exact in any
# JSON reader and in Lua's doubles, and far inside Link.state_version's 64-bit column, so the
# master can always raise its own version above any it finds in the topic (links/audit.py).
VERSION_MAX = 2**53 - 1


def _positive_int(value: object, limit: int = 2**62) -> bool:
    # bool is an int in Python; True is not a version.
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < limit


def link_record_decode(key: bytes | None, value: bytes | None) -> LinkRecord | None:
    """Parse and check one links-topic message.

    Returns None for a tombstone (value null): the master no longer writes them (a takedown is a
    versioned "disabled" record), and a tombstone carries no version, so a replica ignores it.
    Raises MessageError for anything a replica must not store; the message says why.
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
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, huge ints, deep nesting
        raise MessageError(f"value is not JSON: {exc}") from None
    if not isinstance(record, dict):
        raise MessageError("value is not a JSON object")
    if record.get("schema") != LINK_SCHEMA:
        raise MessageError(f"unknown schema {record.get('schema')!r}")
    if record.get("tinyurl") != tinyurl:
        raise MessageError("value's tinyurl differs from the key")
    if not _positive_int(record.get("version"), VERSION_MAX + 1):
        raise MessageError("version is missing or not a positive integer")
    state = record.get("state")
    if state not in LINK_STATES:
        raise MessageError(f"unknown state {state!r}")
    expires_at = record.get("expires_at")
    if expires_at is not None and not _positive_int(expires_at):
        raise MessageError("expires_at is not a positive integer (ms since the epoch)")
    longurl = record.get("longurl")
    if state == "active":
        if not isinstance(longurl, str):
            raise MessageError("an active link's longurl is missing")
        # The same definition the master used when it accepted the link (one definition for
        # both sides: whatever /create accepts, every replica serves).
        problem = longurls.longurl_problem(longurl)
        if problem is not None:
            raise MessageError(f"longurl is not servable: {problem}")
    elif longurl is not None:
        raise MessageError("a disabled link's record carries a longurl")
    return record  # type: ignore[return-value]


# Schema 2: a counter's identity is its incarnation alone (one life of one replica's Redis),
# not the node that reports it: a node whose id changes, or two hosts sharing one Redis, report
# the same counter, and the master's max() counts its clicks once. The node is a label.
CLICK_SCHEMA = 2
NODE_RE = re.compile(r"[A-Za-z0-9._-]{1,100}")
INCARNATION_RE = re.compile(r"[A-Za-z0-9]{1,64}")


class ClickReport(TypedDict):
    schema: int
    tinyurl: str
    node: str  # the replica that sent it (a label for the admin; not part of the identity)
    incarnation: str  # the counter's identity: one life of one replica's Redis
    count: int  # the counter's absolute value: clicks of tinyurl in this incarnation
    reported_at: str  # ISO 8601, UTC


def click_report_key(*, incarnation: str, tinyurl: str) -> bytes:
    """The compaction key of a counter's reports: `<incarnation>:<tinyurl>`. The clicks topic
    keeps the newest report of every counter, which is exactly the counter's latest value."""
    return f"{incarnation}:{tinyurl}".encode()


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
    key = click_report_key(incarnation=incarnation, tinyurl=tinyurl)
    return key, json.dumps(report, separators=(",", ":")).encode()


def click_report_decode(key: bytes | None, value: bytes | None) -> ClickReport | None:
    """Parse and check one clicks-topic message; MessageError for anything not applicable.

    Returns None for a tombstone (value null): the master writes one for every counter of an
    ended incarnation it folded (links/pruning.py), so that compaction removes the key; it
    carries nothing to apply. A record without key or value is malformed (MessageError)."""
    if value is None:
        if key is None:
            raise MessageError("no key and no value")
        return None
    try:
        # orjson, not json: the master decodes every report of every replica, and json.loads
        # was most of consume_clicks' per-report Python time (docs/performance.md). orjson
        # rejects invalid UTF-8, as json does.
        report = orjson.loads(value)
    except (ValueError, RecursionError) as exc:  # orjson's JSONDecodeError is a ValueError
        raise MessageError(f"value is not JSON: {exc}") from None
    if not isinstance(report, dict):
        raise MessageError("value is not a JSON object")
    if report.get("schema") != CLICK_SCHEMA:
        raise MessageError(f"unknown schema {report.get('schema')!r}")
    tinyurl = report.get("tinyurl")
    if not isinstance(tinyurl, str) or not TINYURL_RE.fullmatch(tinyurl):
        raise MessageError("tinyurl is missing or malformed")
    node, incarnation = report.get("node"), report.get("incarnation")
    if not isinstance(node, str) or not NODE_RE.fullmatch(node):
        raise MessageError("node is missing or malformed")
    if not isinstance(incarnation, str) or not INCARNATION_RE.fullmatch(incarnation):
        raise MessageError("incarnation is missing or malformed")
    if key is not None and key != click_report_key(incarnation=incarnation, tinyurl=tinyurl):
        raise MessageError("key differs from the report's incarnation:tinyurl")
    if not _positive_int(report.get("count")):
        raise MessageError("count is missing or not a positive integer")
    return report  # type: ignore[return-value]


# --- Replicas topic (<user>-replicas): each replica's status, for the master's admin ----------
# Key = node (UTF-8), the compaction key: the topic keeps the newest status of every replica.
# `report_clicks` on each replica publishes one every SHORTENER_STATUS_SECONDS; the admin's
# replicas page reads the topic when it is shown (links/replicas.py). A status is a snapshot
# that the next one replaces: nothing is applied from it, so a lost or repeated one is harmless.
REPLICA_STATUS_SCHEMA = 1


class ReplicaStatus(TypedDict):
    schema: int
    node: str  # SHORTENER_NODE_ID of the replica
    # The links topic: the next offset this replica's Redis will apply, and the topic's end as
    # the replica last saw it, each summed over the topic's partitions; end - position is its
    # lag in records. None: unknown (Redis or Kafka did not answer; nothing applied yet).
    links_position: int | None
    links_end: int | None
    ready: bool  # what the replica's /readyz answers
    reason: str  # why it is not ready; "" when ready
    incarnation: str | None  # its click counters' incarnation; None before its first click
    redirects: int | None  # redirects served (counted GETs) in this incarnation; None: unknown
    version: str  # the code it runs (git commit, or SHORTENER_VERSION)
    reported_at: str  # ISO 8601, UTC, the replica's clock (the page uses the broker's)


def replica_status_encode(
    *,
    node: str,
    links_position: int | None,
    links_end: int | None,
    ready: bool,
    reason: str,
    incarnation: str | None,
    redirects: int | None,
    version: str,
    reported_at: datetime,
) -> tuple[bytes, bytes]:
    """The (key, value) of one replica status: key = node (UTF-8), value = JSON ReplicaStatus.
    Raises ValueError for a node that NODE_RE does not accept."""
    if not NODE_RE.fullmatch(node):
        raise ValueError(f"node {node!r} is not a node id")
    status: ReplicaStatus = {
        "schema": REPLICA_STATUS_SCHEMA,
        "node": node,
        "links_position": links_position,
        "links_end": links_end,
        "ready": ready,
        "reason": reason[:500],
        "incarnation": incarnation,
        "redirects": redirects,
        "version": version[:100],
        "reported_at": reported_at.isoformat(),
    }
    return node.encode(), json.dumps(status, separators=(",", ":")).encode()


def _count_or_none(value: object) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool)
                             and 0 <= value < 2**62)


def replica_status_decode(key: bytes | None, value: bytes | None) -> ReplicaStatus:
    """Parse and check one replicas-topic message; MessageError for anything not showable."""
    if value is None:
        raise MessageError("empty value")
    try:
        status = json.loads(value)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, huge ints, deep nesting
        raise MessageError(f"value is not JSON: {exc}") from None
    if not isinstance(status, dict):
        raise MessageError("value is not a JSON object")
    if status.get("schema") != REPLICA_STATUS_SCHEMA:
        raise MessageError(f"unknown schema {status.get('schema')!r}")
    node = status.get("node")
    if not isinstance(node, str) or not NODE_RE.fullmatch(node):
        raise MessageError("node is missing or malformed")
    if key is not None and key != node.encode():
        raise MessageError("key differs from the status' node")
    for field in ("links_position", "links_end", "redirects"):
        if not _count_or_none(status.get(field)):
            raise MessageError(f"{field} is not a non-negative integer or null")
    if not isinstance(status.get("ready"), bool):
        raise MessageError("ready is not a boolean")
    incarnation = status.get("incarnation")
    if incarnation is not None and (not isinstance(incarnation, str)
                                    or not INCARNATION_RE.fullmatch(incarnation)):
        raise MessageError("incarnation is malformed")
    for field in ("reason", "version", "reported_at"):
        if not isinstance(status.get(field), str):
            raise MessageError(f"{field} is not a string")
    return status  # type: ignore[return-value]
