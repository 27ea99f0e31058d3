"""A tester's attempts to break the API's password promises (docs/api.md, docs/passwords.md) on
the live server (real PostgreSQL and Kafka). Each test here is a promise found broken; what
held is in the tester's report."""

from __future__ import annotations

import uuid

import requests

from links.models import Link
from tests.api.test_api import api, assert_error  # noqa: F401 (the fixture)
from topics.passwords import password_check

PASSWORD = "breaker api pass phrase"


def fresh_call(api, method: str, path: str, **kwargs) -> requests.Response:  # noqa: F811
    """One call on a connection of its own, closed when it is answered: a failing assertion
    would keep a kept-alive connection (with the live server's thread and its database session)
    alive past the test, and the test database could then not be dropped. (Not "Connection:
    close" on the shared session: the live server does not echo it, so the session could reuse
    the socket the server is closing, and the next call fail with RemoteDisconnected.)"""
    return requests.request(method, api.url + path, headers=api.headers, timeout=30, **kwargs)


def test_patch_longurl_onto_a_link_with_that_password_is_409(api):  # noqa: F811
    """docs/api.md, PATCH: "409 if another link has that longurl, or (password_conflict) that
    password". Two generated links protected by one password, of longurls p and q; PATCH the
    first's longurl to q: answered 200, and q then has two generated links that open with the
    one password (the moved link's hash is still salted from p, so neither link_update's
    check nor the unique index of (longurl, hash) sees them as one password)."""
    suffix = uuid.uuid4().hex[:8]
    p, q = f"https://example.com/breaker/{suffix}/p", f"https://example.com/breaker/{suffix}/q"
    mover, there = (fresh_call(api, "POST", "/links",
                               json={"longurl": longurl, "password": PASSWORD})
                    .json()["tinyurl"] for longurl in (p, q))
    required = fresh_call(api, "PATCH", f"/links/{mover}", json={"longurl": q})
    assert_error(required, 400, "password_required", "password")
    refused = fresh_call(api, "PATCH", f"/links/{mover}",
                         json={"longurl": q, "password": PASSWORD})
    body = assert_error(refused, 409, "password_conflict", "password")
    assert there in body["message"]
    opening = [link.tinyurl for link in Link.objects.filter(longurl=q, alias=False)
               if link.password_hash and password_check(PASSWORD, link.password_hash)]
    assert opening == [there]
