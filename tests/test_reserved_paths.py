"""Every path the master or a replica answers itself is reserved (topics.records.RESERVED_NAMES):
no alias, no generated tinyurl, no record and no replica path can ever be one of them, in any
case. Read from the URL confs themselves, so a route added without its name here fails this
test; and a replica routes every spelling of a reserved name to Django, never to a redirect."""

from __future__ import annotations

import asyncio
import re

import pytest
from django.conf import settings
from django.urls import URLPattern, URLResolver, get_resolver

from links import tinyurls
from redirects.asgi import RedirectApp
from topics.records import RESERVED_NAMES, RESERVED_TINYURLS, TINYURL_RE, tinyurl_ok

URLCONFS = ("shortener_project.urls_master", "shortener_project.urls_replica")


def _first_segments(urlconf: str) -> set[str]:
    """The first path segment of every route of `urlconf` that is a fixed text (a converter's
    route, the replica's <tiny:tinyurl>, is not a name)."""
    segments = set()
    for entry in get_resolver(urlconf).url_patterns:
        assert isinstance(entry, (URLPattern, URLResolver))
        route = str(entry.pattern).lstrip("^")
        first = re.split(r"[/$\\]", route, maxsplit=1)[0]
        if first and not first.startswith("<") and not first.startswith("("):
            segments.add(first)
    return segments


def test_the_route_reader_sees_the_routes():
    assert {"create", "metrics", "healthz", "readyz", "admin"} <= _first_segments(URLCONFS[0])
    assert {"metrics", "healthz", "readyz"} <= _first_segments(URLCONFS[1])


@pytest.mark.parametrize("urlconf", URLCONFS)
def test_every_served_path_is_reserved(urlconf):
    missing = {s for s in _first_segments(urlconf) if s.lower() not in RESERVED_NAMES
               and TINYURL_RE.fullmatch(s)}
    assert not missing, (f"{urlconf} serves {sorted(missing)}: add them to "
                         "topics.records.RESERVED_NAMES (and see its comment)")


def test_the_static_files_and_the_api_are_reserved():
    assert settings.STATIC_URL.strip("/").split("/")[0].lower() in RESERVED_NAMES
    assert "api" in RESERVED_NAMES  # the JSON API's /api/v1/ (issue 18)


def test_every_spelling_of_a_reserved_name_is_reserved():
    for name in RESERVED_NAMES:
        assert name == name.lower()
        for spelling in (name, name.upper(), name.title(), name.swapcase()):
            assert spelling in RESERVED_TINYURLS and not tinyurl_ok(spelling)
            with pytest.raises(tinyurls.AliasReserved):
                tinyurls.alias_check(spelling)
    assert len(RESERVED_TINYURLS) == sum(2 ** len(n) for n in RESERVED_NAMES)
    assert not any(code.lower() in RESERVED_NAMES for code in tinyurls.tinyurls_generate(20000))


class _Routes(RedirectApp):
    """The replica's ASGI application with its redirect and Django replaced by notes of where a
    request went: the routing alone, without Redis."""

    def __init__(self) -> None:
        async def fallback(scope, receive, send):
            self.went.append(("django", scope["path"]))
        super().__init__(fallback, redis_url="redis://unused")
        self.went: list[tuple[str, str]] = []

    async def redirect(self, method, tinyurl, send, scope, receive=None):
        self.went.append(("redirect", tinyurl))


def route(path: str) -> str:
    app = _Routes()
    asyncio.run(app({"type": "http", "path": path, "method": "GET"}, None, None))
    return app.went[0][0]


def test_a_replica_answers_its_own_paths_itself_in_any_case():
    for name in RESERVED_NAMES:
        for spelling in (name, name.upper(), name.capitalize()):
            assert route(f"/{spelling}") == "django", spelling
    for tinyurl in ("Xa3k9Qz", "abc", "a" * 64, "promo-2026_A", "metricz", "healthz0"):
        assert route(f"/{tinyurl}") == "redirect", tinyurl
    for path in ("/ab", "/" + "a" * 65, "/a.b.c", "/abc/", "/ab cd", "/ünï"):
        assert route(path) == "django", path
