"""PUT /create on the master: the contract, validation, idempotence under concurrency, and what
happens while Kafka is unreachable. Real PostgreSQL and Kafka throughout."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.conf import settings
from django.test import override_settings

from links import publishing, services
from links.models import Link
from testkit import free_port
from topics.links import producer_reset

TINY_RE = re.compile(r"[a-zA-Z0-9]{7}")
LIMIT = settings.SHORTENER_MAX_URL_LENGTH


def test_create_returns_the_contract(master, transactional_db):
    response = master.put({"longurl": "https://example.com/path?q=1#frag"})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body["longurl"] == "https://example.com/path?q=1#frag"
    assert TINY_RE.fullmatch(body["tinyurl"])
    link = Link.objects.get(tinyurl=body["tinyurl"])
    assert link.longurl == body["longurl"]
    assert link.published_at is not None, "a tinyurl is only handed out once Kafka has it"


def test_same_longurl_same_tinyurl_different_longurl_different(master, transactional_db):
    first = master.create("https://example.com/same")
    again = master.create("https://example.com/same")
    other = master.create("https://example.com/other")
    assert first == again
    assert other != first
    assert Link.objects.count() == 2


def test_twenty_concurrent_creates_of_one_longurl_make_one_link(master, transactional_db):
    longurl = "https://example.com/concurrent"
    with ThreadPoolExecutor(20) as pool:
        tinyurls = list(pool.map(lambda _: master.create(longurl), range(20)))
    assert len(set(tinyurls)) == 1
    assert Link.objects.filter(longurl=longurl).count() == 1


def test_concurrent_creates_of_different_longurls_all_distinct(master, transactional_db):
    with ThreadPoolExecutor(10) as pool:
        tinyurls = list(pool.map(lambda i: master.create(f"https://example.com/{i}"), range(50)))
    assert len(set(tinyurls)) == 50


def test_tinyurls_are_not_sequential(transactional_db):
    # Random codes: consecutive links share no structure (a counter in base62 would share a
    # long prefix). 200 codes from a CSPRNG collide on a 4-char prefix with probability ~1e-3.
    codes = [services.link_create(longurl=f"https://example.com/seq/{i}").link.tinyurl
             for i in range(200)]
    assert all(TINY_RE.fullmatch(c) for c in codes)
    assert len({c[:4] for c in codes}) >= 199


def test_longurl_up_to_the_limit_works(master, transactional_db):
    base = "https://example.com/?q="
    longest = base + "a" * (LIMIT - len(base))
    assert len(longest) == LIMIT
    response = master.put({"longurl": longest})
    assert response.status_code == 200, response.text
    assert Link.objects.get(tinyurl=response.json()["tinyurl"]).longurl == longest
    # And it is still unique by its full text: differing only in the last character.
    other = longest[:-1] + "b"
    assert master.create(other) != response.json()["tinyurl"]


def test_unicode_and_idn_longurls_are_stored_as_they_are_sent(master, transactional_db):
    # The host in IDNA (punycode), the rest percent-encoded as UTF-8: the form replicas send in
    # Location (topics/longurls.py); both spellings are one link.
    longurl = "https://пример.рф/путь?q=значение"
    stored = "https://xn--e1afmkfd.xn--p1ai/%D0%BF%D1%83%D1%82%D1%8C?q=%D0%B7%D0%BD%D0%B0%D1%87%D0%B5%D0%BD%D0%B8%D0%B5"
    response = master.put({"longurl": longurl})
    assert response.status_code == 200, response.text
    assert response.json()["longurl"] == stored
    assert master.create(stored) == response.json()["tinyurl"]


BAD_INPUTS = [
    # (name, raw body, expected fragment of the error)
    ("empty body", b"", "empty"),
    ("not json", b"longurl=https://example.com", "not valid JSON"),
    ("truncated json", b'{"longurl": "https://example.com"', "not valid JSON"),
    ("not utf-8", b'{"longurl": "https://example.com/\xff"}', "not UTF-8"),
    ("json array", b'["https://example.com"]', "JSON object"),
    ("json string", b'"https://example.com"', "JSON object"),
    ("missing field", b'{"url": "https://example.com"}', "longurl is missing"),
    ("null", b'{"longurl": null}', "must be a string"),
    ("number", b'{"longurl": 42}', "must be a string"),
    ("list", b'{"longurl": ["https://example.com"]}', "must be a string"),
    ("empty string", b'{"longurl": ""}', "empty"),
    ("relative", b'{"longurl": "/just/a/path"}', "absolute http"),
    ("no scheme", b'{"longurl": "example.com/page"}', "absolute http"),
    ("ftp scheme", b'{"longurl": "ftp://example.com/file"}', "absolute http"),
    ("javascript", b'{"longurl": "javascript:alert(1)"}', "absolute http"),
    ("data url", b'{"longurl": "data:text/html,<b>x</b>"}', "absolute http"),
    ("no host", b'{"longurl": "http://"}', "not a valid URL"),
    ("bad host", b'{"longurl": "http://exa mple.com"}', "whitespace"),
    ("space inside", b'{"longurl": "https://example.com/a b"}', "whitespace"),
    ("leading space", b'{"longurl": " https://example.com"}', "whitespace"),
    ("newline", b'{"longurl": "https://example.com/\\nSet-Cookie: x=1"}', "whitespace"),
    ("nul byte", b'{"longurl": "https://example.com/\\u0000"}', "control"),
    ("too long", ('{"longurl": "https://example.com/' + "a" * LIMIT + '"}').encode(), "longer than"),
    ("oversized body", b'{"longurl": "https://example.com", "pad": "' + b"x" * (LIMIT * 13) + b'"}',
     "larger than"),
]


@pytest.mark.parametrize("name,body,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_a_400_with_a_message_and_changes_nothing(client, db, name, body, message):
    response = client.put("/create", data=body, content_type="application/json")
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert Link.objects.count() == 0


@pytest.mark.parametrize("method", ["get", "post", "delete", "patch"])
def test_other_methods_are_405(client, db, method):
    response = getattr(client, method)("/create")
    assert response.status_code == 405
    assert response["Allow"] == "PUT"
    assert "PUT" in response.json()["error"]
    assert Link.objects.count() == 0


def test_kafka_down_gives_503_then_the_outbox_delivers_the_same_tinyurl(transactional_db, client):
    """While Kafka is unreachable, /create must not hand out a tinyurl the replicas may never
    learn; the link is kept and delivered once Kafka is back, under the same tinyurl."""
    longurl = "https://example.com/while-kafka-is-down"
    dead = [f"127.0.0.1:{free_port()}"]  # nothing listens there: Kafka is unreachable
    producer_reset()
    try:
        with override_settings(KAFKA_BOOTSTRAP_SERVERS=dead, SHORTENER_PUBLISH_TIMEOUT=1.0):
            started = time.monotonic()
            response = client.put("/create", data={"longurl": longurl},
                                  content_type="application/json")
            elapsed = time.monotonic() - started
            assert response.status_code == 503
            assert "retry" in response.json()["error"]
            assert response["Retry-After"]
            assert elapsed < 15, "the client must get an answer within seconds"
            link = Link.objects.get(longurl=longurl)
            assert link.published_at is None  # committed, marked for the outbox
            assert publishing.links_publish_pending() == (0, 1)  # still down: stays pending
    finally:
        producer_reset()
    # Kafka is back: the outbox relay delivers it, and a retry gets the same tinyurl.
    assert publishing.links_publish_pending() == (1, 0)
    link.refresh_from_db()
    assert link.published_at is not None
    response = client.put("/create", data={"longurl": longurl}, content_type="application/json")
    assert response.status_code == 200
    assert response.json()["tinyurl"] == link.tinyurl


def test_republish_links_sends_every_link(transactional_db):
    from io import StringIO

    from django.core.management import call_command

    for i in range(30):
        services.link_create(longurl=f"https://example.com/republish/{i}")
    out = StringIO()
    call_command("republish_links", stdout=out)
    assert out.getvalue().strip() == "30 sent, 0 failed"
