"""Passwords through the JSON API on the live server (real PostgreSQL and Kafka) that no form
would send: a lone surrogate (valid JSON, not encodable as UTF-8), and refusals that must never
echo the password back."""

from __future__ import annotations

import pytest

from links.models import Link
from tests.api.test_api import api, assert_error  # noqa: F401 (the fixture)

JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize("escaped", [r"\ud800", r"abc\udfffdef", r"\udc80\ud800"])
def test_a_lone_surrogate_password_is_refused_not_a_500(api, escaped):  # noqa: F811
    # json.loads takes "\ud800" into a str that str.encode("utf-8") refuses: scrypt's input.
    longurl = f"https://example.com/api/pw-surrogate/{len(escaped)}"
    body = '{"longurl": "%s", "password": "%s"}' % (longurl, escaped)
    refused = api("POST", "/links", data=body.encode(), headers=JSON)
    assert refused.status_code in (400, 422), refused.text
    assert refused.json()["error"]["field"] == "password"
    assert not Link.objects.filter(longurl=longurl).exists()
    # PATCH and bulk items alike.
    made = api("POST", "/links", json={"longurl": longurl}).json()["tinyurl"]
    refused = api("PATCH", f"/links/{made}", data=('{"password": "%s"}' % escaped).encode(),
                  headers=JSON)
    assert refused.status_code in (400, 422), refused.text
    assert refused.json()["error"]["field"] == "password"
    assert Link.objects.get(tinyurl=made).password_hash is None
    bulk = api("POST", "/links/bulk", headers=JSON, data=(
        '[{"longurl": "%s/b", "password": "%s"}]' % (longurl, escaped)).encode())
    assert bulk.status_code in (200, 400, 422), bulk.text
    if bulk.status_code == 200:
        assert bulk.json()["results"][0]["status"] in (400, 422), bulk.text


def test_refusals_never_echo_the_password(api):  # noqa: F811
    secret = "Zq" + "y" * 200 + "-secret-marker"  # too long
    for method, path, body in (
            ("POST", "/links", {"longurl": "https://example.com/api/pw-echo", "password": secret}),
            ("POST", "/links/bulk", [{"longurl": "https://example.com/api/pw-e2",
                                      "password": secret}]),
            ("POST", "/links", {"longurl": "not a url", "password": "short-secret-marker"})):
        response = api(method, path, json=body)
        assert response.status_code < 500, response.text
        assert "secret-marker" not in response.text, response.text
