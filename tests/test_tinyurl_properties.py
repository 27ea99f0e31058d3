"""A tinyurl is a generated code (7 of [a-zA-Z0-9]) or an alias (3-64 of [A-Za-z0-9_-]), never
a reserved name in any case, and nothing else: every reader agrees, over the space of strings
(hypothesis): tinyurl_ok, the links record's key, a click report, a report batch, a tombstone's
key, the master's alias check, and a replica's paths (the ASGI fast path and Django's URL conf
and view). The oracle is the regular expression and the list of names, written here again."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest
from django.test import RequestFactory
from django.urls import get_resolver
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from links import tinyurls
from redirects import views
from tests.test_reserved_paths import route
from topics.clicks import click_batch_encode, click_report_encode, clicks_record_decode
from topics.links import link_record_decode, link_record_encode
from topics.records import ALIAS_CHARS, RESERVED_NAMES, MessageError, tinyurl_ok

NOW = datetime.now(timezone.utc)
SHAPE = re.compile(r"[A-Za-z0-9_-]{3,64}")  # ASCII classes: no other letter or digit matches


def oracle(text: str) -> bool:
    return SHAPE.fullmatch(text) is not None and text.lower() not in RESERVED_NAMES


# Any text; texts of the alias alphabet around the length limits with a stray character now and
# then (what most often sits at the edge); every reserved name in a random case.
STRINGS = st.one_of(
    st.text(max_size=80),
    st.text(alphabet=ALIAS_CHARS + ".:/ %é\n\x00K", min_size=0, max_size=70),
    st.text(alphabet=ALIAS_CHARS, min_size=60, max_size=68),
    st.sampled_from(sorted(RESERVED_NAMES)).flatmap(
        lambda name: st.lists(st.booleans(), min_size=len(name), max_size=len(name)).map(
            lambda ups: "".join(c.upper() if u else c for c, u in zip(name, ups)))),
)
EDGES = ["abc", "ab", "a" * 64, "a" * 65, "Xa3k9Qz", "___", "---", "a-b_c", "Metrics",
         "HEALTHZ", "readyZ", "api", "API", "static", "admin", "create", "abc\n", "abc ",
         "\u212aelvin", "adm\u0130n", "ab\u0441", ""]


def _accepted(decode) -> bool:
    try:
        decode()
    except MessageError:
        return False
    return True


@hsettings(max_examples=600, deadline=None)
@given(STRINGS)
def test_every_reader_accepts_exactly_the_tinyurls(text):
    readers_agree(text)


@pytest.mark.parametrize("text", EDGES)
def test_the_edges(text):
    readers_agree(text)
    assert (route("/" + text) == "redirect") is oracle(text)


def readers_agree(text: str) -> None:
    expected = oracle(text)
    assert tinyurl_ok(text) is expected
    raw = text.encode("utf-8", "surrogatepass")
    key, value = link_record_encode(tinyurl=text, version=1, longurl="https://example.com/p",
                                    created_at=NOW)
    assert key == raw
    assert _accepted(lambda: link_record_decode(key, value)) is expected
    key, value = click_report_encode(tinyurl=text, node="r1", incarnation="inc1", count=3,
                                     reported_at=NOW)
    assert _accepted(lambda: clicks_record_decode(key, value)) is expected
    assert _accepted(lambda: clicks_record_decode(key, None)) is expected  # a tombstone's key
    key, value = click_batch_encode(node="r1", incarnation="inc1", reported_at=NOW,
                                    counts=[("Xa3k9Qz", 1), (text, 2)])
    assert _accepted(lambda: clicks_record_decode(key, value)) is expected
    try:
        tinyurls.alias_check(text)
        assert expected
    except tinyurls.AliasRefused:
        assert not expected


@hsettings(max_examples=300, deadline=None)
@given(STRINGS.filter(lambda t: "/" not in t and "?" not in t and "#" not in t))
def test_a_replica_redirects_exactly_the_tinyurls(text):
    assert (route("/" + text) == "redirect") is oracle(text)


def test_the_replicas_django_path_admits_the_shape_and_its_view_no_reserved_name():
    resolver = get_resolver("shortener_project.urls_replica")
    for text in EDGES:
        if "\n" in text or " " in text or not text:
            continue
        try:
            match = resolver.resolve("/" + text)
        except Exception:  # noqa: BLE001 - Resolver404: not a path of the replica
            assert not oracle(text) and SHAPE.fullmatch(text) is None, text
            continue
        if match.url_name == "redirect":
            assert SHAPE.fullmatch(text), text
            if text.lower() in RESERVED_NAMES:  # /Metrics: a 404 before any Redis call
                response = views.redirect(RequestFactory().get("/" + text), text)
                assert response.status_code == 404, text
        else:
            assert text in RESERVED_NAMES, text
