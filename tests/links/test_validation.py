"""The longurl rules and the links-topic message shape, as pure functions."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from django.core.exceptions import ValidationError

from links.services import tinyurl_generate
from links.validation import longurl_rules_check
from topics.links import LinkRecord, link_record_decode, link_record_encode
from topics.records import MessageError


@pytest.mark.parametrize("url", [
    "http://example.com", "https://example.com/a/b?c=d&e=f#g", "https://sub.example.co.uk:8443/",
    "http://93.184.215.14:8000/x", "https://[2606:4700:4700::1111]/", "HTTPS://EXAMPLE.COM/UPPER",
])
def test_good_urls_pass(url):
    assert longurl_validate(url) == url


@pytest.mark.parametrize("url", [
    "mailto:a@example.com", "file:///etc/passwd", "https://", "https://exa_mple..com",
    "https://example.com/\u0085", "http:/example.com",
])
def test_bad_urls_fail(url):
    with pytest.raises(ValidationError):
        longurl_validate(url)


def test_tinyurl_alphabet_and_length():
    codes = {tinyurl_generate() for _ in range(1000)}
    assert len(codes) == 1000
    assert all(len(c) == 7 and c.isascii() and c.isalnum() for c in codes)


def test_link_record_round_trip():
    key, value = link_record_encode(tinyurl="abcDEF1", version=3,
                                    longurl="https://xn--e1afmkfd.xn--p1ai/",
                                    created_at=datetime(2026, 1, 2, tzinfo=timezone.utc),
                                    expires_at=datetime(2027, 1, 1, tzinfo=timezone.utc))
    record = link_record_decode(key, value)
    assert record == LinkRecord(schema=2, tinyurl="abcDEF1", version=3, state="active",
                                longurl="https://xn--e1afmkfd.xn--p1ai/",
                                expires_at=1798761600000,
                                created_at=datetime(2026, 1, 2, tzinfo=timezone.utc))


def test_disabled_record_carries_no_longurl():
    key, value = link_record_encode(tinyurl="abcDEF1", version=2, longurl="https://x.com/",
                                    created_at=datetime(2026, 1, 2, tzinfo=timezone.utc),
                                    disabled=True)
    record = link_record_decode(key, value)
    assert (record.state, record.longurl, record.version) == ("disabled", None, 2)


def test_tombstone_decodes_to_none():
    assert link_record_decode(b"abcDEF1", None) is None


V2 = ('"schema":2,"tinyurl":"abcDEF1","version":1,"state":"active","expires_at":null,'
      '"created_at":"2026-01-01T00:00:00+00:00"')


@pytest.mark.parametrize("key,value", [
    (None, b'{}'),
    (b"short", b'{"schema":2,"tinyurl":"short","version":1,"state":"active",'
               b'"longurl":"https://x.com"}'),
    (b"\xff\xfe\xfd\xfc\xfb\xfa\xf9", b'{}'),
    (b"abcDEF1", b"not json"),
    (b"abcDEF1", b"[1,2]"),
    # schema 1 (before versions): skipped by a schema-2 replica; republish_links replaces it
    (b"abcDEF1", b'{"schema":1,"tinyurl":"abcDEF1","longurl":"https://x.com"}'),
    (b"abcDEF1", b'{"schema":99,"tinyurl":"abcDEF1","longurl":"https://x.com"}'),
    (b"abcDEF1", ('{' + V2.replace('abcDEF1', 'zzzzzzz') + ',"longurl":"https://x.com"}').encode()),
    (b"abcDEF1", ('{' + V2 + ',"longurl":"javascript:alert(1)"}').encode()),
    (b"abcDEF1", ('{' + V2 + ',"longurl":"https://x.com/\\r\\nX: y"}').encode()),
    (b"abcDEF1", ('{' + V2 + '}').encode()),
    (b"abcDEF1", ('{' + V2.replace('"version":1', '"version":0') + ',"longurl":"https://x.com"}')
     .encode()),
    (b"abcDEF1", ('{' + V2.replace('"version":1', '"version":true') +
                  ',"longurl":"https://x.com"}').encode()),
    (b"abcDEF1", ('{' + V2.replace('"active"', '"deleted"') + ',"longurl":"https://x.com"}')
     .encode()),
    (b"abcDEF1", ('{' + V2.replace('"active"', '"disabled"') + ',"longurl":"https://x.com"}')
     .encode()),
])
def test_malformed_records_are_rejected(key, value):
    with pytest.raises(MessageError):
        link_record_decode(key, value)


def test_a_good_v2_record_passes():
    # The template the malformed cases above change one thing of.
    record = link_record_decode(b"abcDEF1", ('{' + V2 + ',"longurl":"https://x.com"}').encode())
    assert record.version == 1


def longurl_validate(value: object) -> str:
    """The stored form by the master's rules that need no database (links.validation)."""
    return longurl_rules_check(value)[0]
