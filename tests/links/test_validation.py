"""The longurl rules and the links-topic message shape, as pure functions."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from django.core.exceptions import ValidationError

from links.services import longurl_validate, tinyurl_generate
from shortener_project.messages import (
    MessageError,
    link_record_decode,
    link_record_encode,
)


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
    key, value = link_record_encode(tinyurl="abcDEF1", longurl="https://пример.рф/",
                                    created_at=datetime(2026, 1, 2, tzinfo=timezone.utc))
    record = link_record_decode(key, value)
    assert record == {"schema": 1, "tinyurl": "abcDEF1", "longurl": "https://пример.рф/",
                      "created_at": "2026-01-02T00:00:00+00:00"}


def test_tombstone_decodes_to_none():
    assert link_record_decode(b"abcDEF1", None) is None


@pytest.mark.parametrize("key,value", [
    (None, b'{}'),
    (b"short", b'{"schema":1,"tinyurl":"short","longurl":"https://x.com"}'),
    (b"\xff\xfe\xfd\xfc\xfb\xfa\xf9", b'{}'),
    (b"abcDEF1", b"not json"),
    (b"abcDEF1", b"[1,2]"),
    (b"abcDEF1", b'{"schema":99,"tinyurl":"abcDEF1","longurl":"https://x.com"}'),
    (b"abcDEF1", b'{"schema":1,"tinyurl":"zzzzzzz","longurl":"https://x.com"}'),
    (b"abcDEF1", b'{"schema":1,"tinyurl":"abcDEF1","longurl":"javascript:alert(1)"}'),
    (b"abcDEF1", b'{"schema":1,"tinyurl":"abcDEF1","longurl":"https://x.com/\\r\\nX: y"}'),
    (b"abcDEF1", b'{"schema":1,"tinyurl":"abcDEF1"}'),
])
def test_malformed_records_are_rejected(key, value):
    with pytest.raises(MessageError):
        link_record_decode(key, value)
