"""Every batch handler survives every record (issue 16): fed arbitrary bytes, arbitrary JSON, and
every valid record with one field removed, retyped or pushed out of range, against the real
services (a redis-server of the test's own, PostgreSQL), it never raises, and a valid record
after the bad one is applied."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest
from django.conf import settings
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from testkit import FakeRecord as Rec
from topics.clicks import ClickReport, click_report_decode, click_report_encode
from topics.links import (
    EXPIRES_AT_MAX,
    LinkRecord,
    link_record_decode,
    link_record_encode,
    link_records_decode,
)
from topics.records import REJECT_REASONS, MessageError
from topics.replicas import ReplicaStatus, replica_status_decode, replica_status_encode

NOW = datetime.now(timezone.utc)
EXAMPLES = hsettings(max_examples=80, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture,
                                            HealthCheck.too_slow])

# --- the inputs ------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=12)

# Values of the wrong JSON type for a field, and values of the right type out of its range.
OTHER_TYPES = [None, True, 0, -1, 1.5, "", "text", [], [1], {}, {"a": 1}]
OUT_OF_RANGE = {
    "int": [0, -1, 2**53, 2**63, 2**64, 10**30, -(2**63)],
    "str": ["", "a b", "é", "x\n", "x" * 20_000, "\u0000", "a:b"],
    "time": ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-23:59", "2026-01-01T00:00:00",
             "soon", "2026-13-01T00:00:00Z", "2026-01-01T25:00:00Z", "1970-01-01T00:00:00Z"],
}


def _kinds(record: dict) -> dict[str, str]:
    kinds = {}
    for name, value in record.items():
        if isinstance(value, bool) or value is None:
            kinds[name] = "other"
        elif isinstance(value, int):
            kinds[name] = "int"
        elif name in ("created_at", "reported_at"):
            kinds[name] = "time"
        else:
            kinds[name] = "str"
    return kinds


def mutations(template: dict) -> st.SearchStrategy[dict]:
    """`template` with one field removed, retyped, or set out of its range."""
    kinds = _kinds(template)
    fields = sorted(template)

    @st.composite
    def mutate(draw) -> dict:
        name = draw(st.sampled_from(fields))
        record = dict(template)
        how = draw(st.sampled_from(["remove", "retype", "range"]))
        if how == "remove":
            del record[name]
        elif how == "retype" or kinds[name] == "other":
            record[name] = draw(st.sampled_from(OTHER_TYPES))
        else:
            record[name] = draw(st.sampled_from(OUT_OF_RANGE[kinds[name]]))
        return record

    return mutate()


def bad_values(template: dict) -> st.SearchStrategy[bytes | None]:
    """Arbitrary bytes, arbitrary JSON, JSON objects with the record's fields and arbitrary
    values, and the valid record with one field removed, retyped or out of range."""
    encode = lambda v: json.dumps(v).encode()  # noqa: E731
    return st.one_of(
        st.binary(max_size=300),
        JSON.map(encode),
        st.fixed_dictionaries({}, optional={k: JSON for k in template}).map(encode),
        mutations(template).map(encode),
    )


KEYS = st.one_of(st.none(), st.binary(max_size=30))


def template_of(value: bytes) -> dict:
    return json.loads(value)


# --- the decoders alone: MessageError or a typed record, nothing else ------------------------


LINK_KEY, LINK_VALUE = link_record_encode(
    tinyurl="tEmPl01", version=3, longurl="https://example.com/template", created_at=NOW,
    expires_at=NOW + timedelta(days=1))
CLICK_KEY, CLICK_VALUE = click_report_encode(
    tinyurl="tEmPl01", node="10.0.0.7", incarnation="inc1", count=5, reported_at=NOW)
STATUS_KEY, STATUS_VALUE = replica_status_encode(
    node="10.0.0.7", links_position=4, links_end=5, ready=True, reason="", incarnation="inc1",
    redirects=9, version="abc", reported_at=NOW, links_positions={0: 4})


@pytest.mark.parametrize("decode,key,value,kind", [
    (link_record_decode, LINK_KEY, LINK_VALUE, LinkRecord),
    (click_report_decode, CLICK_KEY, CLICK_VALUE, ClickReport),
    (replica_status_decode, STATUS_KEY, STATUS_VALUE, ReplicaStatus),
], ids=["links", "clicks", "status"])
def test_decoders_return_the_type_or_a_message_error(decode, key, value, kind):
    assert isinstance(decode(key, value), kind)
    assert decode(key, None) is None  # a tombstone

    @EXAMPLES
    @given(key=st.one_of(st.just(key), KEYS), value=bad_values(template_of(value)))
    def check(key, value):
        try:
            record = decode(key, value)
        except MessageError as exc:
            assert exc.reason in REJECT_REASONS
            return
        assert record is None or isinstance(record, kind)

    check()


def outcome(decode, key, value):
    """What a decode gives: the record, or the reason and text of its MessageError."""
    try:
        return decode(key, value)
    except MessageError as exc:
        return ("rejected", exc.reason, str(exc))


LONGURLS = st.one_of(
    st.sampled_from(["https://example.com/a", "http://a.example:8080/x",
                     "https://xn--bcher-kva.example/", "https://example.com/a%zz",
                     "https://a.example/ b", "https://a.example/\nx",
                     "https://" + "a" * 300 + ".example/", "https://example.com/" + "b" * 300]),
    st.text(max_size=40).map(lambda tail: "https://example.com/" + tail))


@EXAMPLES
@given(st.lists(st.one_of(
    st.tuples(st.sampled_from(["tEmPl01", "tEmPl02"]), st.sampled_from(["active", "disabled"]),
              st.one_of(st.none(), LONGURLS)).map(lambda t: (t[0].encode(), json.dumps({
                  **template_of(LINK_VALUE), "tinyurl": t[0], "state": t[1],
                  "longurl": t[2]}).encode())),
    st.tuples(st.one_of(st.just(LINK_KEY), KEYS), bad_values(template_of(LINK_VALUE)))),
    max_size=12))
def test_a_batch_decodes_as_its_records_one_by_one(pairs):
    """link_records_decode (a replica's batch: its longurls checked together) gives each
    record what link_record_decode gives it alone."""
    batch = link_records_decode([Rec(i, key, value) for i, (key, value) in enumerate(pairs)])
    for (key, value), got in zip(pairs, batch, strict=True):
        if isinstance(got, MessageError):
            got = ("rejected", got.reason, str(got))
        assert got == outcome(link_record_decode, key, value)


def single_field_changes(template: dict):
    """(field, how, new value or None, the changed record) for every field of `template`."""
    kinds = _kinds(template)
    for name in template:
        changes = [("remove", None)] + [("retype", v) for v in OTHER_TYPES] + [
            ("range", v) for v in OUT_OF_RANGE.get(kinds[name], [])]
        for how, new in changes:
            record = dict(template)
            if how == "remove":
                del record[name]
            else:
                record[name] = new
            yield name, how, new, record


# The single-field changes that leave a record valid: nullable fields set to null, text fields
# whose type and rules allow the value, a time outside today's (charted as now if it is a click
# report's), counts of zero where zero is a count, the same boolean.
STILL_VALID = {
    "links": {("expires_at", None), ("password_hash", None),
              ("created_at", "0001-01-01T00:00:00+01:00"),
              ("created_at", "9999-12-31T23:59:59-23:59"), ("created_at", "1970-01-01T00:00:00Z")},
    "clicks": {("node", "text"), ("reported_at", "0001-01-01T00:00:00+01:00"),
               ("reported_at", "9999-12-31T23:59:59-23:59"),
               ("reported_at", "1970-01-01T00:00:00Z")},
    "status": {("links_position", None), ("links_end", None), ("incarnation", None),
               ("redirects", None), ("links_position", 0), ("links_end", 0), ("redirects", 0),
               ("ready", True), ("incarnation", "text"), *(
                   (field, text) for field in ("reason", "version")
                   for text in ("", "text", "a b", "é", "x\n", "\u0000", "a:b")),
               ("reported_at", "0001-01-01T00:00:00+01:00"),
               ("reported_at", "9999-12-31T23:59:59-23:59"),
               ("reported_at", "1970-01-01T00:00:00Z"),
               # An optional field (a replica older than it sends none): absent, null or empty.
               ("links_positions", None), ("links_positions", "{}")},
}


def test_every_single_field_change_is_rejected_with_a_reason_but_the_listed_ones():
    for kind, decode, key, value in (("links", link_record_decode, LINK_KEY, LINK_VALUE),
                                     ("clicks", click_report_decode, CLICK_KEY, CLICK_VALUE),
                                     ("status", replica_status_decode, STATUS_KEY,
                                      STATUS_VALUE)):
        valid = set()
        for name, how, new, record in single_field_changes(template_of(value)):
            try:
                decode(key, json.dumps(record).encode())
            except MessageError as exc:
                assert exc.reason in REJECT_REASONS
                continue
            valid.add((name, json.dumps(new) if isinstance(new, (dict, list)) else new))
        assert valid == STILL_VALID[kind], kind


# --- consume_links: links_apply_batch against a redis-server of the test's own ---------------


@pytest.fixture
def redis(replica_factory):
    return replica_factory(start=False).redis


def test_links_apply_batch_survives_any_record(redis):
    from redirects import keys, services

    partitions = itertools.count()
    template = template_of(LINK_VALUE)

    @EXAMPLES
    @given(key=st.one_of(st.just(LINK_KEY), KEYS), value=bad_values(template))
    def check(key, value):
        partition = next(partitions)
        tinyurl = f"g{partition:06d}"[:7]
        good = Rec(1, *link_record_encode(
            tinyurl=tinyurl, version=1, longurl=f"https://example.com/good/{partition}",
            created_at=NOW), partition=partition)
        result = services.links_apply_batch(
            redis=redis, partition=partition,
            records=[Rec(0, key, value, partition=partition), good], expected_position=None)
        assert result.next_offset == 2
        assert keys.link_value_parse(redis.get(keys.link_key(tinyurl))).longurl == \
            f"https://example.com/good/{partition}"
        assert redis.hget(keys.links_positions_key(), partition) == b"2"

    check()


# --- consume_clicks: clicks_apply_batch against PostgreSQL ----------------------------------


def test_clicks_apply_batch_survives_any_record(transactional_db):
    from links.models import ClickCounter, Link
    from links.selectors import longurl_digest
    from links.totals import clicks_apply_batch

    link = Link.objects.create(tinyurl="tEmPl01", longurl="https://example.com/c",
                               longurl_sha256=longurl_digest("https://example.com/c"))
    runs = itertools.count()
    template = template_of(CLICK_VALUE)

    @EXAMPLES
    @given(key=st.one_of(st.just(CLICK_KEY), KEYS), value=bad_values(template))
    def check(key, value):
        n = next(runs)
        good = Rec(1, *click_report_encode(
            tinyurl=link.tinyurl, node="good", incarnation=f"good{n}", count=n + 1,
            reported_at=NOW))
        result = clicks_apply_batch(topic=f"props-clicks-{n}", partition=0,
                                    records=[Rec(0, key, value), good], expected_position=None)
        assert result.next_offset == 2
        assert ClickCounter.objects.get(link=link, incarnation=f"good{n}").count == n + 1

    check()


# --- the master's links audit: links_audit_batch against PostgreSQL --------------------------


def test_links_audit_batch_survives_any_record(transactional_db):
    from links.audit import links_audit_batch
    from links.models import Link
    from links.selectors import longurl_digest

    longurl = "https://example.com/audited"
    link = Link.objects.create(tinyurl="aUdIt01", longurl=longurl, state_version=2,
                               longurl_sha256=longurl_digest(longurl), published_at=NOW)
    # The bad records are about another link of this master (or no link at all).
    other = Link.objects.create(tinyurl="tEmPl01", longurl="https://example.com/template",
                                longurl_sha256=longurl_digest("https://example.com/template"),
                                published_at=NOW)
    runs = itertools.count()
    template = template_of(LINK_VALUE)
    # The link's version 1, after its version 2 was committed: the audit must mark it for the
    # outbox to send the current state again.
    stale = link_record_encode(tinyurl=link.tinyurl, version=1, longurl=longurl,
                                        created_at=NOW)

    @EXAMPLES
    @given(key=st.one_of(st.just(LINK_KEY), KEYS), value=bad_values(template))
    def check(key, value):
        n = next(runs)
        Link.objects.filter(pk__in=[link.pk, other.pk]).update(published_at=NOW)
        result = links_audit_batch(topic=f"props-audit-{n}", partition=0,
                                   records=[Rec(0, key, value), Rec(1, *stale)],
                                   expected_position=None)
        assert result.next_offset == 2
        assert Link.objects.get(pk=link.pk).published_at is None

    check()


# --- the admin's replicas page: the reader's fold of each record ----------------------------


@dataclass
class TimedRec(Rec):
    timestamp: int = 0  # ms since the epoch (the broker's LogAppendTime)


def test_replicas_reader_survives_any_record():
    from links.replicas import statuses_fold

    template = template_of(STATUS_VALUE)
    good_key, good_value = replica_status_encode(
        node="good-node", links_position=1, links_end=1, ready=True, reason="",
        incarnation=None, redirects=None, version="v", reported_at=NOW)

    @EXAMPLES
    @given(key=st.one_of(st.just(STATUS_KEY), KEYS), value=bad_values(template),
           timestamp=st.one_of(st.just(int(NOW.timestamp() * 1000)), st.integers()))
    def check(key, value, timestamp):
        newest: dict = {}
        rejected: list = []
        statuses_fold(newest=newest, rejected=rejected,
                      record=TimedRec(0, key, value, timestamp=timestamp))
        statuses_fold(newest=newest, rejected=rejected,
                      record=TimedRec(1, good_key, good_value,
                                      timestamp=int(NOW.timestamp() * 1000)))
        assert newest["good-node"][0].ready is True
        assert all(r.reason in REJECT_REASONS for r in rejected)

    check()


def test_the_largest_expiry_plus_the_keep_time_is_exact_in_lua():
    # The handlers above read SHORTENER_GONE_KEEP_SECONDS: its sum with the largest expires_at
    # stays exact in Lua's doubles (topics/, EXPIRES_AT_MAX).
    assert EXPIRES_AT_MAX + settings.SHORTENER_GONE_KEEP_SECONDS * 1000 < 2**53
