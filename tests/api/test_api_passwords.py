"""Password-protected links through the JSON API on the live server (real PostgreSQL and Kafka):
"password" on POST /links, PATCH and bulk items; the link shows "protected" and never the
password; the record carries only the hash."""

from __future__ import annotations

from links.models import Link
from testkit import link_records
from tests.api.test_api import api, assert_error  # noqa: F401 (the fixture)
from topics.links import links_topic
from topics.passwords import password_check

PASSWORD = "api pass phrase"


def test_create_change_and_remove_a_password(api):  # noqa: F811
    created = api("POST", "/links", json={"longurl": "https://example.com/api/pw",
                                          "password": PASSWORD})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["protected"] is True and PASSWORD not in created.text
    assert "password" not in body and "password_hash" not in body
    tinyurl = body["tinyurl"]
    link = Link.objects.get(tinyurl=tinyurl)
    assert password_check(PASSWORD, link.password_hash)
    assert link_records(links_topic(), tinyurl)[-1].password_hash == link.password_hash
    read = api("GET", f"/links/{tinyurl}")
    assert read.json()["protected"] is True and PASSWORD not in read.text
    listed = api("GET", "/links").json()["items"]
    assert [item["protected"] for item in listed if item["tinyurl"] == tinyurl] == [True]
    # PATCH: a new password, then "" removes it; absent leaves it.
    changed = api("PATCH", f"/links/{tinyurl}", json={"password": "another one"})
    assert changed.status_code == 200 and changed.json()["protected"] is True
    assert password_check("another one", Link.objects.get(tinyurl=tinyurl).password_hash)
    assert api("PATCH", f"/links/{tinyurl}", json={}).json()["protected"] is True
    removed = api("PATCH", f"/links/{tinyurl}", json={"password": ""})
    assert removed.json()["protected"] is False
    assert Link.objects.get(tinyurl=tinyurl).password_hash is None
    assert link_records(links_topic(), tinyurl)[-1].password_hash is None
    again = api("PATCH", f"/links/{tinyurl}", json={"password": PASSWORD})
    assert again.json()["protected"] is True
    assert api("PATCH", f"/links/{tinyurl}", json={"password": None}).json()["protected"] is False


def test_password_refusals(api):  # noqa: F811
    api("POST", "/links", json={"longurl": "https://example.com/api/pw-shared",
                                "alias": "api-pw-shared"})
    assert_error(api("POST", "/links", json={"longurl": "https://example.com/api/pw-shared",
                                             "alias": "api-pw-shared", "password": PASSWORD}),
                 409, "password_conflict", "password")
    assert_error(api("POST", "/links", json={"longurl": "https://example.com/api/pw-long",
                                             "password": "x" * 129}), 422)
    assert_error(api("POST", "/links", json={"longurl": "https://example.com/api/pw-nul",
                                             "password": "a\x00b"}),
                 400, "password_invalid", "password")
    assert not Link.objects.filter(longurl__in=["https://example.com/api/pw-long",
                                                "https://example.com/api/pw-nul"]).exists()


def test_bulk_items_take_a_password(api):  # noqa: F811
    results = api("POST", "/links/bulk", json=[
        {"longurl": "https://example.com/api/pw-b1", "password": PASSWORD},
        {"longurl": "https://example.com/api/pw-b2"},
        {"longurl": "https://example.com/api/pw-b3", "password": ""}]).json()["results"]
    assert "tinyurl" in results[0] and "tinyurl" in results[1]
    assert results[2]["status"] == 400 and results[2]["error"]["code"] == "password_invalid"
    assert Link.objects.get(tinyurl=results[0]["tinyurl"]).password_hash is not None
    assert Link.objects.get(tinyurl=results[1]["tinyurl"]).password_hash is None


def test_put_create_never_hands_out_a_protected_link(api):  # noqa: F811
    """A link protected through the API is its creator's: PUT /create of the same longurl (the
    assignment's call, which knows no password) gets the longurl's public link, and a PATCH
    that would make a second public link is refused with the other link named."""
    longurl = "https://example.com/api/pw-private"
    protected = api("POST", "/links", json={"longurl": longurl, "password": PASSWORD}).json()
    again = api("POST", "/links", json={"longurl": longurl, "password": PASSWORD})
    assert again.status_code == 200 and again.json()["tinyurl"] == protected["tinyurl"]
    put = api.http.put(api.url.removesuffix("/api/v1") + "/create", json={"longurl": longurl},
                       timeout=30)
    assert put.status_code == 200, put.text
    public = put.json()["tinyurl"]
    assert public != protected["tinyurl"]
    assert api("GET", f"/links/{public}").json()["protected"] is False
    assert api("GET", f"/links/{protected['tinyurl']}").json()["protected"] is True
    refused = api("PATCH", f"/links/{protected['tinyurl']}", json={"password": ""})
    body = assert_error(refused, 409, "password_conflict", "password")
    assert public in body["message"]
    assert api("GET", f"/links/{protected['tinyurl']}").json()["protected"] is True


def test_put_create_refuses_a_password_or_an_alias_it_would_ignore(api):  # noqa: F811
    """PUT /create answers the longurl's one public link: a "password" or "alias" in its body
    would be ignored, and the caller would hand out a link they believe protected (or named).
    Refused with a message saying where they are taken; nothing is created."""
    longurl = "https://example.com/api/put-create-password"
    create = api.url.removesuffix("/api/v1") + "/create"
    for extra in ({"password": PASSWORD}, {"alias": "put-create-alias"}):
        answer = api.http.put(create, json={"longurl": longurl, **extra}, timeout=30)
        assert answer.status_code == 400, answer.text
        assert "POST /api/v1/links" in answer.json()["error"] and PASSWORD not in answer.text
    assert not Link.objects.filter(longurl=longurl).exists()
    assert api.http.put(create, json={"longurl": longurl, "other": 1}, timeout=30).status_code \
        == 200
