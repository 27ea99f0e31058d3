"""The report batch (topics/clicks.py, schema 3): what it decodes to, what it rejects and with
which reason, and how the clicks topic's decoder tells it from a schema-2 report. No services:
decoding is pure."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from topics.clicks import (
    CLICK_BATCH_MAX,
    ClickBatch,
    ClickReport,
    click_batch_encode,
    click_report_encode,
    clicks_record_decode,
)
from topics.records import ALIAS_CHARS, RESERVED_TINYURLS, TINYURL_ALPHABET, MessageError

NOW = datetime(2026, 12, 1, 10, 30, tzinfo=timezone.utc)
# Generated tinyurls and aliases; never a reserved name ("Metrics" is 7 of [a-zA-Z0-9] too, and
# refused: test_tinyurl_properties.py).
TINYURLS = st.one_of(st.text(alphabet=TINYURL_ALPHABET, min_size=7, max_size=7),
                     st.text(alphabet=ALIAS_CHARS, min_size=3, max_size=64)
                     ).filter(lambda t: t not in RESERVED_TINYURLS)
PAIRS = st.lists(st.tuples(TINYURLS, st.integers(1, 2**53 - 1)), min_size=1, max_size=50)


def batch(pairs=(("abcdefg", 5), ("ABCDEFG", 7)), incarnation="17640001") -> tuple[bytes, bytes]:
    return click_batch_encode(node="10.0.0.2", incarnation=incarnation, counts=pairs,
                              reported_at=NOW)


def rejected(key: bytes | None, value: bytes | None) -> str:
    with pytest.raises(MessageError) as caught:
        clicks_record_decode(key, value)
    return caught.value.reason


@given(PAIRS)
@hsettings(max_examples=60, deadline=None)
def test_a_batch_decodes_to_its_pairs_in_order(pairs):
    key, value = batch(pairs)
    decoded = clicks_record_decode(key, value)
    assert isinstance(decoded, ClickBatch)
    assert decoded.counts == pairs  # duplicates kept: the fold takes the largest (links/totals)
    assert (decoded.schema, decoded.node, decoded.incarnation, decoded.reported_at) == (
        3, "10.0.0.2", "17640001", NOW)


def test_each_batch_has_a_key_of_its_own_under_its_incarnation():
    keys = {batch()[0] for _ in range(100)}
    assert len(keys) == 100
    for key in keys:
        incarnation, slash, rest = key.decode().partition("/")
        assert (incarnation, slash, len(rest)) == ("17640001", "/", 32)


def test_schema_2_reports_and_their_tombstones_still_decode():
    key, value = click_report_encode(tinyurl="abcdefg", node="n", incarnation="i1", count=3,
                                     reported_at=NOW)
    assert isinstance(clicks_record_decode(key, value), ClickReport)
    assert clicks_record_decode(key, None) is None


def mutated(value: bytes, change) -> bytes:
    data = json.loads(value)
    change(data)
    return json.dumps(data).encode()


# One bad pair (or field) makes the whole batch rejected, with the reason of that pair.
@pytest.mark.parametrize("change, reason", [
    (lambda d: d["counts"][1].__setitem__(0, "abc!efg"), "range"),  # a character outside
    (lambda d: d["counts"][1].__setitem__(0, "ab"), "range"),  # too short (an alias is 3-64)
    (lambda d: d["counts"][1].__setitem__(0, "a" * 65), "range"),  # too long
    (lambda d: d["counts"][1].__setitem__(0, "Metrics"), "reserved"),  # a server's own path
    (lambda d: d["counts"][1].__setitem__(1, 0), "range"),  # a count below 1
    (lambda d: d["counts"][1].__setitem__(1, 2**53), "range"),  # beyond 2**53 - 1
    (lambda d: d["counts"][1].__setitem__(1, "7"), "type"),
    (lambda d: d["counts"][1].append(3), "range"),  # a triple, not a pair
    (lambda d: d["counts"].__setitem__(1, {"abcdefg": 1}), "type"),
    (lambda d: d.__setitem__("counts", []), "range"),
    (lambda d: d.__setitem__("counts", [["abcdefg", 1]] * (CLICK_BATCH_MAX + 1)), "range"),
    (lambda d: d.pop("counts"), "missing"),
    (lambda d: d.__setitem__("node", "a b"), "range"),
    (lambda d: d.__setitem__("reported_at", "2026-12-01T10:30:00"), "range"),
    (lambda d: d.__setitem__("schema", 4), "range"),  # schema 4 carries triples, not pairs
    (lambda d: d.__setitem__("schema", 5), "schema"),
    (lambda d: d.__setitem__("schema", 2), "schema"),  # a batch under a report's schema
])
def test_a_batch_with_one_bad_pair_or_field_is_rejected_whole(change, reason):
    key, value = batch()
    assert rejected(key, mutated(value, change)) == reason


@pytest.mark.parametrize("key", [
    None,
    b"17640002/" + b"0" * 32,  # another incarnation than the value's
    b"17640001/" + b"0" * 31,  # an id of the wrong length
    b"17640001/" + b"G" * 32,  # not lowercase hex
    b"17640001/" + b"0" * 31 + b"\xff",  # not UTF-8
])
def test_a_batch_whose_key_is_not_its_own_is_rejected(key):
    assert rejected(key, batch()[1]) == "key"


def test_the_key_says_the_kind_and_the_value_must_be_of_it():
    report_key, report_value = click_report_encode(tinyurl="abcdefg", node="n",
                                                   incarnation="17640001", count=3,
                                                   reported_at=NOW)
    batch_key, batch_value = batch()
    assert rejected(report_key, batch_value) == "schema"  # a batch under a report's key
    assert rejected(batch_key, report_value) == "schema"  # a report under a batch's key
    # A tombstone names a counter: a batch's key is none.
    assert rejected(batch_key, None) == "key"


def test_encoding_refuses_an_empty_or_oversized_batch():
    with pytest.raises(ValueError):
        batch(())
    with pytest.raises(ValueError):
        batch([("abcdefg", 1)] * (CLICK_BATCH_MAX + 1))
    key, value = batch([("abcdefg", 2**53 - 1)] * CLICK_BATCH_MAX)
    # The largest batch stays far under Kafka's default message.max.bytes (1,048,588).
    assert len(value) < 200_000


def test_the_clicks_decoder_returns_a_record_kind_or_a_message_error_for_anything():
    """Fed arbitrary keys and values built from a batch (tests/test_record_properties.py's
    strategies): a typed record, a tombstone, or MessageError with a known reason."""
    from tests.test_record_properties import EXAMPLES, KEYS, bad_values, template_of
    from topics.records import REJECT_REASONS

    key, value = batch()

    @EXAMPLES
    @given(key=st.one_of(st.just(key), KEYS), value=bad_values(template_of(value)))
    def check(key, value):
        try:
            record = clicks_record_decode(key, value)
        except MessageError as exc:
            assert exc.reason in REJECT_REASONS
            return
        assert record is None or isinstance(record, (ClickBatch, ClickReport))

    check()
