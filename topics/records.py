"""What every record kind on the topics shares: the field types (tinyurl, node, incarnation,
count, time), the error a record that cannot be used raises (MessageError, with its reason),
and the Rejected note a consumer keeps of it. The kinds themselves are declared once each, as
msgspec Structs, in topics/links.py, topics/clicks.py and topics/replicas.py: decoding is
validation, `*_decode` returns the Struct or raises MessageError, and `*_encode` builds the same
Struct, so nothing downstream ever indexes a raw dict. docs/records.md describes the keys;
docs/records/*.schema.json is the JSON Schema generated from the types (topics/schemas.py).

Every integer on the topics is at most 2**53 - 1: RFC 8259 §6 calls integers in
[-(2**53)+1, 2**53-1] interoperable (exact in any JSON reader), and the replicas' Lua scripts
read numbers as doubles. That is far inside PostgreSQL's bigint, which stores versions and counts.
Unknown fields are ignored (a field added without changing a record's meaning needs no new
schema version); a field the schema version requires is never assumed.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Protocol

import msgspec
from msgspec import Meta

# A generated tinyurl: 7 characters of TINYURL_ALPHABET (links/tinyurls.py draws them).
TINYURL_LENGTH = 7


TINYURL_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


# A caller's alias (links/tinyurls.py): 3-64 characters of [A-Za-z0-9_-]. A generated tinyurl has
# this shape too, so "a tinyurl" on every topic, key and path is this shape (and not reserved,
# below); nothing else is one. Both "_" and "-" are unreserved in a URL path (RFC 3986 §2.3),
# so an alias goes into a path as it is.
ALIAS_MIN_LENGTH = 3
ALIAS_MAX_LENGTH = 64
ALIAS_CHARS = TINYURL_ALPHABET + "_-"
TINYURL_RE = re.compile(r"[A-Za-z0-9_-]{3,64}")


# The first path segments the master or a replica answers itself (shortener_project/urls_*.py,
# STATIC_URL, the API's /api/v1/): never a tinyurl, compared without regard to case, so that
# /Admin cannot be an alias that looks like the admin. tests/test_reserved_paths.py fails when a
# route is added that is not listed here. A name added here later refuses the records of a link
# that already has it (consume_links counts them as reason "reserved"): check the links table
# for it first (`Link.objects.filter(tinyurl__iexact=name)`).
RESERVED_NAMES = frozenset({"admin", "api", "create", "healthz", "metrics", "readyz", "static"})


def _case_variants(name: str) -> set[str]:
    return {"".join(chars) for chars in itertools.product(*({c.lower(), c.upper()} for c in name))}


# Every spelling of every reserved name (488 strings): a set lookup tells a reserved tinyurl in
# the hot paths (a redirect, a links record) without lowering each string first.
RESERVED_TINYURLS = frozenset(v for name in RESERVED_NAMES for v in _case_variants(name))


def tinyurl_chars_ok(text: str) -> bool:
    """[A-Za-z0-9_-]* (TINYURL_RE's characters; the length is the caller's to check). A
    generated tinyurl passes with one str call: an alias with "_" or "-" needs the strip too."""
    return text.isascii() and (text.isalnum() or not text.strip(ALIAS_CHARS))


def tinyurl_ok(text: str) -> bool:
    """Whether `text` is a tinyurl: TINYURL_RE's shape (a generated code or an alias), and not a
    reserved name in any case. The one test of every reader of tinyurls (records, the audit, a
    replica's paths), in str methods and a set lookup rather than the regex, which costs more
    (docs/records.md has the decoders' figures)."""
    return (ALIAS_MIN_LENGTH <= len(text) <= ALIAS_MAX_LENGTH and tinyurl_chars_ok(text)
            and text not in RESERVED_TINYURLS)


NODE_RE = re.compile(r"[A-Za-z0-9._-]{1,100}")


INCARNATION_RE = re.compile(r"[A-Za-z0-9]{1,64}")


# The largest integer a record may carry (see the module docstring).
INT_MAX = 2**53 - 1


def _whole(pattern: str) -> str:
    # JSON Schema validators search for a pattern (ECMA-262), so it needs anchors; `$` would
    # also match before a final "\n" in Python's re, "(?![\s\S])" (nothing follows) means the
    # end of the string in both dialects.
    return f"^{pattern}(?![\\s\\S])"


# The character sets of tinyurls, incarnations and nodes are published as patterns in the JSON
# Schema but checked by the decoders with str methods (_alnum, _node_ok), not by msgspec: msgspec
# runs a Meta pattern through Python's re, about 0.7 µs a field, which made decoding a click
# report slower than the orjson reader and hand checks it replaced; the lengths msgspec checks.
# (tinyurl_chars_ok above for tinyurls.)
def text_meta(pattern: re.Pattern, min_length: int, max_length: int, description: str) -> Meta:
    return Meta(min_length=min_length, max_length=max_length, description=description,
                extra_json_schema={"pattern": _whole(pattern.pattern)})


Tinyurl = Annotated[str, text_meta(
    TINYURL_RE, ALIAS_MIN_LENGTH, ALIAS_MAX_LENGTH,
    "The link's code: generated, 7 characters of [a-zA-Z0-9]; or an alias the creator chose, 3-64 "
    "characters of [A-Za-z0-9_-]. Never a reserved name (" + ", ".join(sorted(RESERVED_NAMES))
    + ") in any case.")]


Node = Annotated[str, text_meta(NODE_RE, 1, 100, "A replica's SHORTENER_NODE_ID.")]


Incarnation = Annotated[str, text_meta(INCARNATION_RE, 1, 64, "One life of one replica's Redis "
                                                          "(its click counters' identity).")]


_NODE_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"


def alnum(text: str) -> bool:
    """[A-Za-z0-9]* (INCARNATION_RE's characters)."""
    return text.isascii() and text.isalnum()


def node_ok(text: str) -> bool:
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
    "reserved",  # a tinyurl that is a path a server answers itself (RESERVED_NAMES)
    "longurl",  # an active link's longurl is missing or cannot be served
    "state",  # fields that contradict each other (a disabled link that carries a longurl)
    "invalid",  # anything else (MessageError's default)
)


def decode_error(exc: Exception, what: str) -> MessageError:
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


class RecordStruct(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    # frozen: a decoded record is a fact, not a thing to edit. gc=False: records hold only
    # scalars, so they cannot be part of a reference cycle (msgspec's documented condition),
    # and the master allocates one per click report.
    pass


# One encoder for every kind (msgspec encoders are reusable and thread-safe).
ENCODER = msgspec.json.Encoder()


def key_text(key: bytes | None) -> str:
    if key is None:
        raise MessageError("record has no key", reason="key")
    try:
        return key.decode()
    except UnicodeDecodeError:
        raise MessageError("key is not UTF-8", reason="key") from None


class RecordAt(Protocol):
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record a consumer could not use: where it is, and why (MessageError's reason and text).
    Consumers collect these while decoding a batch and report them (runtime.metrics:
    records_rejected_report) once the batch's position has moved past them."""

    topic: str
    partition: int
    offset: int
    reason: str
    error: str

    @classmethod
    def of(cls, record: RecordAt, exc: MessageError) -> Rejected:
        return cls(topic=record.topic, partition=record.partition, offset=record.offset,
                   reason=exc.reason, error=str(exc))
