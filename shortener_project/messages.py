"""The records on the project's Kafka topics, each declared once as a msgspec Struct for producer
and consumer. Decoding is validation: `*_decode` returns the Struct or raises MessageError, and
`*_encode` builds the same Struct and encodes it, so nothing downstream ever indexes a raw dict.
docs/records.md describes the keys; docs/records/*.schema.json is the JSON Schema generated from
these types (tests/test_records_schema.py keeps it in step).

Clicks topic (<user>-clicks): key = `<incarnation>:<tinyurl>` (UTF-8), value = JSON ClickReport.
A report carries what it counts: which counter (incarnation: one life of one replica's Redis),
the counter's absolute value, and the node that sent it as a label. The master keeps the largest
value per (link, incarnation), so a duplicate adds nothing and a lost report is healed by the
next one. (A "+100" delta could not be replayed safely.)

Links topic (<user>-links): key = tinyurl (UTF-8), value = JSON LinkRecord: the link's whole
state (active with its longurl, or disabled) and its state version. A replica applies a record
only if its version is newer than the one it holds, so a late copy of an older state, in any
order, changes nothing; a takedown is a record that compaction keeps, never a tombstone.

Every integer on the topics is at most 2**53 - 1: RFC 8259 §6 calls integers in
[-(2**53)+1, 2**53-1] interoperable (exact in any JSON reader), and the replicas' Lua scripts
read numbers as doubles. That is far inside PostgreSQL's bigint, which stores versions and counts.
Unknown fields are ignored (a field added without changing a record's meaning needs no new
schema version); a field the schema version requires is never assumed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal, Protocol

import msgspec
from msgspec import Meta

from shortener_project import longurls

TINYURL_LENGTH = 7
TINYURL_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
TINYURL_RE = re.compile(r"[a-zA-Z0-9]{7}")
# Paths a server answers itself that have the shape of a tinyurl; never issued as codes.
RESERVED_TINYURLS = frozenset({"metrics", "healthz"})
NODE_RE = re.compile(r"[A-Za-z0-9._-]{1,100}")
INCARNATION_RE = re.compile(r"[A-Za-z0-9]{1,64}")

# The largest integer a record may carry (see the module docstring). For a link's state version
# it also leaves room in Link.state_version's 64-bit column for the master to raise its own
# version above any it finds in the topic (links/audit.py).
VERSION_MAX = 2**53 - 1
INT_MAX = VERSION_MAX
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
# Schema 2: a counter's identity is its incarnation alone (one life of one replica's Redis),
# not the node that reports it: a node whose id changes, or two hosts sharing one Redis, report
# the same counter, and the master's max() counts its clicks once. The node is a label.
CLICK_SCHEMA = 2
REPLICA_STATUS_SCHEMA = 1


def _whole(pattern: str) -> str:
    # JSON Schema validators search for a pattern (ECMA-262), so it needs anchors; `$` would
    # also match before a final "\n" in Python's re, "(?![\s\S])" (nothing follows) means the
    # end of the string in both dialects.
    return f"^{pattern}(?![\\s\\S])"


# The character sets of tinyurls, incarnations and nodes are published as patterns in the JSON
# Schema but checked by the decoders with str methods (_alnum, _node_ok), not by msgspec: msgspec
# runs a Meta pattern through Python's re, about 0.7 µs a field, which made decoding a click
# report slower than the orjson reader and hand checks it replaced; the lengths msgspec checks.
def _text(pattern: re.Pattern, min_length: int, max_length: int, description: str) -> Meta:
    return Meta(min_length=min_length, max_length=max_length, description=description,
                extra_json_schema={"pattern": _whole(pattern.pattern)})


Tinyurl = Annotated[str, _text(TINYURL_RE, TINYURL_LENGTH, TINYURL_LENGTH,
                               "The link's code: 7 characters of [a-zA-Z0-9].")]
Node = Annotated[str, _text(NODE_RE, 1, 100, "A replica's SHORTENER_NODE_ID.")]
Incarnation = Annotated[str, _text(INCARNATION_RE, 1, 64, "One life of one replica's Redis "
                                                          "(its click counters' identity).")]
_NODE_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"


def _alnum(text: str) -> bool:
    """[A-Za-z0-9]* (TINYURL_RE's and INCARNATION_RE's characters)."""
    return text.isascii() and text.isalnum()


def _node_ok(text: str) -> bool:
    """NODE_RE's characters (the length is the type's): nothing is left once they are stripped."""
    return not text.strip(_NODE_CHARS)


Count = Annotated[int, Meta(ge=0, le=INT_MAX)]
# RFC 3339 requires an offset; a naive time would be read in whatever zone the reader assumes.
Time = Annotated[datetime, Meta(tz=True)]


class MessageError(ValueError):
    """A record that cannot be used: logged (topic, partition, offset, reason), counted in
    shortener_records_rejected_total{topic,reason} and skipped by the consumer.

    `reason` is one of REJECT_REASONS (a metric label); str() says what is wrong.
    """

    def __init__(self, message: str, *, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


# The reasons a record is rejected: a small fixed set, a metric label each.
REJECT_REASONS = (
    "json",  # the value is not JSON (or not UTF-8, or nested too deep)
    "schema",  # no schema version, or one this code does not know
    "key",  # the key is missing, malformed, or names another record than the value
    "missing",  # a field the schema version requires is absent
    "type",  # a field (or the value itself) has the wrong JSON type
    "range",  # a value outside its range, pattern, length or set of values
    "longurl",  # an active link's longurl is missing or cannot be served
    "state",  # fields that contradict each other (a disabled link that carries a longurl)
    "invalid",  # anything else (MessageError's default)
)


def _error(exc: Exception, what: str) -> MessageError:
    """The MessageError for msgspec's (or the JSON reader's) error `exc` on a `what` value."""
    if isinstance(exc, msgspec.ValidationError):
        text = str(exc)
        if text.endswith("`$.schema`") or text == "Object missing required field `schema`":
            reason = "schema"
        elif text.startswith("Object missing required field"):
            reason = "missing"
        elif text.startswith("Expected `") and "`, got `" in text:
            reason = "type"
        else:  # ge/le, patterns, lengths, Literal values, datetimes, integers beyond 64 bits
            reason = "range"
        return MessageError(f"{what}: {text}", reason=reason)
    # msgspec.DecodeError; UnicodeDecodeError (invalid UTF-8 in a string); RecursionError
    # (nesting deeper than msgspec's limit).
    return MessageError(f"{what} is not JSON: {exc}", reason="json")


class _Struct(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    # frozen: a decoded record is a fact, not a thing to edit. gc=False: records hold only
    # scalars, so they cannot be part of a reference cycle (msgspec's documented condition),
    # and the master allocates one per click report.
    pass


class LinkRecord(_Struct, kw_only=True):
    """One link's whole state on the links topic. Key: the tinyurl (UTF-8), equal to `tinyurl`.
    An active link carries a longurl that a replica can serve as it is
    (shortener_project/longurls.py: longurl_problem); a disabled one carries none (null or
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


class ClickReport(_Struct, kw_only=True):
    """One counter's absolute value on the clicks topic. Key: `<incarnation>:<tinyurl>` (UTF-8),
    equal to the value's. A tombstone (null value) ends the counter's key."""

    schema: Annotated[Literal[2], Meta(description="The record's schema version.")]
    tinyurl: Tinyurl
    node: Annotated[Node, Meta(description="The replica that sent it: a label for the admin, "
                                           "not part of the counter's identity.")]
    incarnation: Annotated[Incarnation, Meta(description="The counter's identity: one life of "
                                                         "one replica's Redis.")]
    count: Annotated[int, Meta(ge=1, le=INT_MAX, description="The counter's absolute value: "
                                                             "clicks of tinyurl in this "
                                                             "incarnation.")]
    reported_at: Annotated[Time, Meta(description="When it was sent, by the replica's clock "
                                                  "(RFC 3339); the hour its clicks are charted "
                                                  "in.")]


class ReplicaStatus(_Struct, kw_only=True):
    """One replica's status on the replicas topic. Key: the node (UTF-8), equal to `node`.
    A snapshot that the next one replaces; a tombstone (null value) says the replica is gone."""

    schema: Annotated[Literal[1], Meta(description="The record's schema version.")]
    node: Node
    # The links topic: the next offset this replica's Redis will apply, and the topic's end as
    # the replica last saw it, each summed over the topic's partitions; end - position is its
    # lag in records. None: unknown (Redis or Kafka did not answer; nothing applied yet).
    links_position: Annotated[Count, Meta(description="The next links-topic offset the "
                                                       "replica will apply, summed over "
                                                       "partitions; null: unknown.")] | None
    links_end: Annotated[Count, Meta(description="The links topic's end offsets as the replica "
                                                 "last saw them, summed; null: unknown.")] | None
    ready: Annotated[bool, Meta(description="What the replica's /readyz answers.")]
    reason: Annotated[str, Meta(max_length=500, description="Why it is not ready; empty when "
                                                            "ready.")]
    incarnation: Annotated[Incarnation, Meta(description="Its click counters' incarnation; "
                                                         "null before its first click.")] | None
    redirects: Annotated[Count, Meta(description="Redirects served in this incarnation; null: "
                                                 "unknown.")] | None
    version: Annotated[str, Meta(max_length=100, description="The code it runs (git commit, or "
                                                             "SHORTENER_VERSION).")]
    reported_at: Annotated[Time, Meta(description="The replica's clock when it sent the status "
                                                  "(RFC 3339); the page uses the broker's.")]


# One decoder per type, made once: msgspec compiles the type's checks when it is made.
_link_decoder = msgspec.json.Decoder(LinkRecord)
_click_decoder = msgspec.json.Decoder(ClickReport)
_status_decoder = msgspec.json.Decoder(ReplicaStatus)
_encoder = msgspec.json.Encoder()


def _key_text(key: bytes | None) -> str:
    if key is None:
        raise MessageError("record has no key", reason="key")
    try:
        return key.decode()
    except UnicodeDecodeError:
        raise MessageError("key is not UTF-8", reason="key") from None


# --- Links topic ---------------------------------------------------------------------------


def link_record_encode(
    *,
    tinyurl: str,
    version: int,
    longurl: str | None,
    created_at: datetime,
    disabled: bool = False,
    expires_at: datetime | None = None,
) -> tuple[bytes, bytes]:
    """The (key, value) of the links-topic record for one link's current state.

    key: the tinyurl (UTF-8), the compaction key. value: JSON LinkRecord. A disabled link's
    record carries no longurl (null): replicas keep only its version, so that an older record
    that arrives later cannot bring the link back. Raises ValueError for an active link without
    a longurl, and for a version outside 1..VERSION_MAX (a record no replica would apply).
    expires_at at or before the Unix epoch (the admin accepts any past time: "ends at once")
    is sent as 1 ms, which every replica reads as long past: the type's range starts at 1, and a
    record out of it would be refused by every replica while the master thought it published.
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
    )
    return tinyurl.encode(), _encoder.encode(record)


def link_record_decode(key: bytes | None, value: bytes | None) -> LinkRecord | None:
    """Decode and check one links-topic record: the LinkRecord, or None for a tombstone (value
    null: the master no longer writes them, and a tombstone carries no version, so a replica
    ignores it). Raises MessageError (with its reason) for anything a replica must not store.
    """
    tinyurl = _key_text(key)
    if not TINYURL_RE.fullmatch(tinyurl):
        raise MessageError(f"key {tinyurl[:20]!r} is not a tinyurl", reason="key")
    if value is None:
        return None
    try:
        record = _link_decoder.decode(value)
    except (msgspec.MsgspecError, ValueError, RecursionError) as exc:
        raise _error(exc, "links record") from None
    if record.tinyurl != tinyurl:  # the key's tinyurl is checked: so is the value's
        raise MessageError("value's tinyurl differs from the key", reason="key")
    if record.state == "active":
        if record.longurl is None:
            raise MessageError("an active link's longurl is missing", reason="longurl")
        # The same definition the master used when it accepted the link (one definition for
        # both sides: whatever /create accepts, every replica serves).
        problem = longurls.longurl_problem(record.longurl)
        if problem is not None:
            raise MessageError(f"longurl is not servable: {problem}", reason="longurl")
    elif record.longurl is not None:
        raise MessageError("a disabled link's record carries a longurl", reason="state")
    return record


# --- Clicks topic --------------------------------------------------------------------------


def click_report_key(*, incarnation: str, tinyurl: str) -> bytes:
    """The compaction key of a counter's reports: `<incarnation>:<tinyurl>`. The clicks topic
    keeps the newest report of every counter, which is exactly the counter's latest value."""
    return f"{incarnation}:{tinyurl}".encode()


def click_report_encode(
    *, tinyurl: str, node: str, incarnation: str, count: int, reported_at: datetime
) -> tuple[bytes, bytes]:
    """The (key, value) of one counter's report: key `<incarnation>:<tinyurl>`, value JSON
    ClickReport. reported_at must be timezone-aware."""
    report = ClickReport(schema=CLICK_SCHEMA, tinyurl=tinyurl, node=node,
                         incarnation=incarnation, count=count, reported_at=reported_at)
    return click_report_key(incarnation=incarnation, tinyurl=tinyurl), _encoder.encode(report)


def click_report_decode(key: bytes | None, value: bytes | None) -> ClickReport | None:
    """Decode and check one clicks-topic record: the ClickReport, or None for a tombstone (value
    null: the master writes one for every counter of an ended incarnation it folded,
    links/pruning.py, so that compaction removes the key). Raises MessageError (with its reason) for anything the
    master must not apply, including a key that is not the value's `<incarnation>:<tinyurl>`.

    The master decodes every report of every replica (bench/clicks.py): msgspec checks types,
    ranges and lengths in one C pass, the character sets are three str-method calls; together
    faster than the orjson reader and the Python checks they replaced (docs/records.md gives
    the figures).
    """
    if value is None:
        # A tombstone ends a counter's key: the key must still be one (whose counter it ends).
        incarnation, colon, tinyurl = _key_text(key).partition(":")
        if not (colon and INCARNATION_RE.fullmatch(incarnation) and TINYURL_RE.fullmatch(tinyurl)):
            raise MessageError("a tombstone's key is not <incarnation>:<tinyurl>", reason="key")
        return None
    if key is None:
        raise MessageError("record has no key", reason="key")
    try:
        report = _click_decoder.decode(value)
    except (msgspec.MsgspecError, ValueError, RecursionError) as exc:
        raise _error(exc, "click report") from None
    tinyurl, incarnation = report.tinyurl, report.incarnation
    if not (_alnum(tinyurl) and _alnum(incarnation) and _node_ok(report.node)):
        raise MessageError("click report: tinyurl, incarnation or node has a character its "
                           "pattern does not allow", reason="range")
    if key != f"{incarnation}:{tinyurl}".encode():
        raise MessageError("key differs from the report's incarnation:tinyurl", reason="key")
    return report


# --- Replicas topic (<user>-replicas): each replica's status, for the master's admin ----------
# Key = node (UTF-8), the compaction key: the topic keeps the newest status of every replica.
# `report_clicks` on each replica publishes one every SHORTENER_STATUS_SECONDS; the admin's
# replicas page reads the topic when it is shown (links/replicas.py). A status is a snapshot
# that the next one replaces: nothing is applied from it, so a lost or repeated one is harmless.


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
    `reason` and `version` are cut to their schema's lengths. Raises ValueError for a node that
    NODE_RE does not accept."""
    if not NODE_RE.fullmatch(node):
        raise ValueError(f"node {node!r} is not a node id")
    status = ReplicaStatus(
        schema=REPLICA_STATUS_SCHEMA, node=node, links_position=links_position,
        links_end=links_end, ready=ready, reason=reason[:500], incarnation=incarnation,
        redirects=redirects, version=version[:100], reported_at=reported_at)
    return node.encode(), _encoder.encode(status)


def replica_status_decode(key: bytes | None, value: bytes | None) -> ReplicaStatus | None:
    """Decode and check one replicas-topic record: the ReplicaStatus, or None for a tombstone
    (value null: the replica named by the key is gone). Raises MessageError (with its reason)
    for anything not showable, including a key that is not the value's node."""
    node = _key_text(key)
    if not NODE_RE.fullmatch(node):
        raise MessageError(f"key {node[:20]!r} is not a node id", reason="key")
    if value is None:
        return None
    try:
        status = _status_decoder.decode(value)
    except (msgspec.MsgspecError, ValueError, RecursionError) as exc:
        raise _error(exc, "replica status") from None
    if status.node != node:  # the key's node is checked: so is the value's
        raise MessageError("key differs from the status' node", reason="key")
    if status.incarnation is not None and not _alnum(status.incarnation):
        raise MessageError("replica status: incarnation has a character [A-Za-z0-9] does not "
                           "allow", reason="range")
    return status


# --- Rejected records ------------------------------------------------------------------------


class _Record(Protocol):
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record a consumer could not use: where it is, and why (MessageError's reason and text).
    Consumers collect these while decoding a batch and report them (shortener_project.metrics:
    records_rejected_report) once the batch's position has moved past them."""

    topic: str
    partition: int
    offset: int
    reason: str
    error: str

    @classmethod
    def of(cls, record: _Record, exc: MessageError) -> Rejected:
        return cls(topic=record.topic, partition=record.partition, offset=record.offset,
                   reason=exc.reason, error=str(exc))


def json_schemas() -> dict[str, dict]:
    """Each record kind's JSON Schema (draft 2020-12, as msgspec generates it), by file stem:
    what docs/records/<stem>.schema.json holds."""
    active = {"properties": {"state": {"const": "active"}}}
    link_rules = {
        "$comment": "Key: the tinyurl (UTF-8), equal to the value's tinyurl. An active link's "
                    "longurl must also be servable as it is (shortener_project/longurls.py).",
        "if": active,
        "then": {"required": ["longurl"], "properties": {"longurl": {"type": "string"}}},
        "else": {"properties": {"longurl": {"type": "null"}}},
    }
    kinds = {
        "links-record": Annotated[LinkRecord, Meta(extra_json_schema=link_rules)],
        "click-report": Annotated[ClickReport, Meta(extra_json_schema={
            "$comment": "Key: <incarnation>:<tinyurl> (UTF-8), equal to the value's."})],
        "replica-status": Annotated[ReplicaStatus, Meta(extra_json_schema={
            "$comment": "Key: the node (UTF-8), equal to the value's node."})],
    }
    schemas = {}
    for stem, kind in kinds.items():
        schema = msgspec.json.schema(kind)
        for definition in schema["$defs"].values():  # docstrings, without their line breaks
            definition["description"] = " ".join(definition["description"].split())
        schemas[stem] = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
    return schemas
