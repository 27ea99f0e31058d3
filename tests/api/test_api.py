"""The JSON API /api/v1/ on the live server (real PostgreSQL and Kafka): every operation, its
answers and its errors, all in one shape."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
import requests
from django.test import override_settings
from django.utils import timezone

from links import protection
from links.models import ClickBucket, ClickCounter, Link
from testkit import link_records
from topics.links import links_topic


class Api:
    def __init__(self, url: str, http: requests.Session, token: str | None) -> None:
        self.url, self.http = f"{url}/api/v1", http
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def __call__(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return self.http.request(method, self.url + path, headers=headers, timeout=30, **kwargs)


@pytest.fixture
def api(master, transactional_db) -> Api:
    _, token = protection.api_key_create(name="tests")
    return Api(master.url, master.http, token)


def assert_error(response: requests.Response, status: int, code: str | None = None,
                 field: str | None = "any") -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "field"}, body
    if code is not None:
        assert body["error"]["code"] == code, body
    if field != "any":
        assert body["error"]["field"] == field, body
    return body["error"]


def test_create_then_the_same_longurl_again(api):
    created = api("POST", "/links", json={"longurl": "https://example.com/api/one"})
    assert created.status_code == 201, created.text
    link = created.json()
    assert link["longurl"] == "https://example.com/api/one" and len(link["tinyurl"]) == 7
    assert link["state"] == "active" and link["published"] is True and link["expires_at"] is None
    again = api("POST", "/links", json={"longurl": "https://example.com/api/one"})
    assert again.status_code == 200 and again.json()["tinyurl"] == link["tinyurl"]


def test_create_with_expiry_and_refusals(api):
    when = (timezone.now() + timedelta(days=2)).replace(microsecond=0)
    created = api("POST", "/links", json={"longurl": "https://example.com/api/exp",
                                          "expires_at": when.isoformat()})
    assert created.status_code == 201 and created.json()["expires_at"].startswith(
        when.strftime("%Y-%m-%dT%H:%M:%S"))
    assert_error(api("POST", "/links", json={"longurl": "https://example.com/x",
                                             "expires_at": "2020-01-01T00:00:00"}),
                 400, "expires_at", "expires_at")
    assert_error(api("POST", "/links", json={"longurl": "ftp://example.com/"}), 400,
                 field="longurl")
    assert_error(api("POST", "/links", json={"longurl": "http://127.0.0.1/"}), 400,
                 field="longurl")
    assert_error(api("POST", "/links", json={}), 422, "invalid", "longurl")
    assert_error(api("POST", "/links", json={"longurl": 5}), 422, "invalid", "longurl")
    assert_error(api("POST", "/links", data=b"{nope", headers={
        "Content-Type": "application/json"}), 400, "json")
    assert not Link.objects.filter(longurl="https://example.com/x").exists()


def test_a_taken_down_longurl_is_not_created_again(api):
    tinyurl = api("POST", "/links", json={"longurl": "https://example.com/api/td"}).json()[
        "tinyurl"]
    assert api("POST", f"/links/{tinyurl}/takedown").json()["state"] == "disabled"
    assert_error(api("POST", "/links", json={"longurl": "https://example.com/api/td"}), 410,
                 "taken_down", "longurl")


def test_every_operation_needs_a_valid_key(api, master):
    link = api("POST", "/links", json={"longurl": "https://example.com/api/key"}).json()
    t = link["tinyurl"]
    calls = [("POST", "/links"), ("POST", "/links/bulk"), ("GET", "/links"),
             ("GET", f"/links/{t}"), ("PATCH", f"/links/{t}"), ("POST", f"/links/{t}/takedown"),
             ("POST", f"/links/{t}/restore"), ("GET", f"/links/{t}/clicks"), ("GET", "/replicas")]
    revoked_key, revoked = protection.api_key_create(name="revoked")
    protection.api_key_revoke(key=revoked_key)
    for method, path in calls:
        for headers, code in (({}, "auth_missing"), ({"Authorization": "Basic eDp5"},
                                                     "auth_missing"),
                              ({"Authorization": "Bearer sk_unknown"}, "auth_refused"),
                              ({"Authorization": f"Bearer {revoked}"}, "auth_refused")):
            anon = Api(master.url, master.http, None)
            response = anon(method, path, headers=headers, json={"longurl": "https://e.com/"})
            assert_error(response, 401, code, None)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert Link.objects.get(tinyurl=t).disabled_at is None


def test_bulk_answers_each_item_in_order(api):
    existing = api("POST", "/links", json={"longurl": "https://example.com/api/b0"}).json()
    response = api("POST", "/links/bulk", json=[
        {"longurl": "https://example.com/api/b0"}, {"longurl": "https://example.com/api/b1"},
        {"longurl": "javascript:alert(1)"}, {"nope": 1}, "text",
        {"longurl": "https://example.com/api/b2", "expires_at": "yesterday"}])
    assert response.status_code == 200, response.text
    r = response.json()["results"]
    assert r[0]["tinyurl"] == existing["tinyurl"]
    assert r[1]["longurl"] == "https://example.com/api/b1"
    assert Link.objects.get(tinyurl=r[1]["tinyurl"]).published_at is not None
    for entry in r[2:]:
        assert entry["status"] == 400 and set(entry["error"]) == {"code", "message", "field"}
    assert r[5]["error"]["code"] == "expires_at"
    assert_error(api("POST", "/links/bulk", json={"longurl": "x"}), 400, "json")
    assert_error(api("POST", "/links/bulk", data=b""), 400)


@override_settings(SHORTENER_BULK_MAX_BODY_BYTES=1000)
def test_bulk_too_large_is_413(api):
    assert_error(api("POST", "/links/bulk", json=[{"longurl": "https://e.com/" + "a" * 2000}]),
                 413)


@override_settings(SHORTENER_CREATE_RATE_LIMIT="3/minute")
def test_creates_count_per_link_against_the_create_limit(api):
    bulk = api("POST", "/links/bulk", json=[
        {"longurl": f"https://example.com/api/rl{i}"} for i in range(2)])
    assert [e.get("status") for e in bulk.json()["results"]] == [None, None]
    assert api("POST", "/links", json={"longurl": "https://example.com/api/rl2"}
               ).status_code == 201
    refused = api("POST", "/links", json={"longurl": "https://example.com/api/rl3"})
    assert_error(refused, 429, "rate_limited")
    assert int(refused.headers["Retry-After"]) >= 1
    again = api("POST", "/links/bulk", json=[{"longurl": "https://example.com/api/rl4"}])
    assert again.json()["results"][0]["status"] == 429
    # Reads have their own budget: the creates' is used up, reads still answer.
    assert api("GET", "/links").status_code == 200


@override_settings(SHORTENER_CREATE_RATE_LIMIT="2/minute")
def test_other_operations_count_per_request(api):
    assert api("GET", "/links").status_code == 200
    assert api("GET", "/links").status_code == 200
    assert_error(api("GET", "/links"), 429, "rate_limited")


def test_read_a_link_with_its_clicks(api):
    t = api("POST", "/links", json={"longurl": "https://example.com/api/read"}).json()["tinyurl"]
    link = Link.objects.get(tinyurl=t)
    ClickCounter.objects.create(link=link, incarnation="i1", node="r1", count=3)
    ClickCounter.objects.create(link=link, incarnation="i2", node="r2", count=4)
    Link.objects.filter(pk=link.pk).update(clicks=7)
    body = api("GET", f"/links/{t}").json()
    assert body["clicks"] == 7 and body["clicks_by_replica"] == {"r1": 3, "r2": 4}
    assert body["clicks_human"] == 7 and body["clicks_bot"] == 0
    Link.objects.filter(pk=link.pk).update(bot_clicks=2)
    ClickCounter.objects.filter(link=link, incarnation="i2").update(bots=2)
    body = api("GET", f"/links/{t}").json()
    assert (body["clicks"], body["clicks_human"], body["clicks_bot"]) == (7, 5, 2)
    assert body["clicks_kinds_by_replica"] == {"r1": {"total": 3, "human": 3, "bot": 0},
                                               "r2": {"total": 4, "human": 2, "bot": 2}}
    listed = api("GET", "/links").json()["items"]
    assert [(i["clicks_human"], i["clicks_bot"]) for i in listed if i["tinyurl"] == t] == [(5, 2)]
    # Where it is served: the replicas other tests left may count (tests/test_propagation_e2e.py
    # checks the figures); here, the shape and this link's state.
    shown = body["propagation"]
    assert shown["summary"] == f"live on {shown['live']} of {shown['of']} replica" + (
        "" if shown["of"] == 1 else "s")
    assert shown["state_version"] == link.state_version and shown["offset"] is not None
    assert_error(api("GET", "/links/Zz9Zz9Z"), 404, "not_found", "tinyurl")
    assert_error(api("GET", "/links/a%00b"), 404, "not_found")


def test_list_pages_with_a_cursor_stable_under_inserts_and_filters(api):
    made = [api("POST", "/links", json={"longurl": f"https://Page{i % 2}.example/p/{i}"}).json()
            for i in range(5)]
    first = api("GET", "/links", params={"limit": 2}).json()
    assert [x["tinyurl"] for x in first["items"]] == [made[4]["tinyurl"], made[3]["tinyurl"]]
    api("POST", "/links", json={"longurl": "https://example.com/p/new"})  # an insert meanwhile
    second = api("GET", "/links", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [x["tinyurl"] for x in second["items"]] == [made[2]["tinyurl"], made[1]["tinyurl"]]
    last = api("GET", "/links", params={"limit": 2, "cursor": second["next_cursor"]}).json()
    assert [x["tinyurl"] for x in last["items"]] == [made[0]["tinyurl"]]
    assert last["next_cursor"] is None

    hosts = api("GET", "/links", params={"host": "PAGE1.example."}).json()["items"]
    assert {x["tinyurl"] for x in hosts} == {made[1]["tinyurl"], made[3]["tinyurl"]}
    api("POST", f"/links/{made[0]['tinyurl']}/takedown")
    Link.objects.filter(tinyurl=made[1]["tinyurl"]).update(expires_at=timezone.now())
    by_state = {s: {x["tinyurl"] for x in api("GET", "/links", params={"state": s}).json()[
        "items"]} for s in ("active", "disabled", "expired")}
    assert by_state["disabled"] == {made[0]["tinyurl"]}
    assert by_state["expired"] == {made[1]["tinyurl"]}
    assert made[2]["tinyurl"] in by_state["active"] and made[0]["tinyurl"] not in by_state["active"]
    future = (timezone.now() + timedelta(hours=1)).isoformat()
    assert api("GET", "/links", params={"created_after": future}).json()["items"] == []
    assert len(api("GET", "/links", params={"created_before": future}).json()["items"]) == 6

    assert_error(api("GET", "/links", params={"cursor": "garbage"}), 400, "cursor", "cursor")
    assert_error(api("GET", "/links", params={"state": "gone"}), 422, "invalid", "state")
    assert_error(api("GET", "/links", params={"limit": 0}), 422, "invalid", "limit")
    assert_error(api("GET", "/links", params={"host": "a b"}), 400, "host", "host")
    assert_error(api("GET", "/links", params={"created_after": "2030-01-01T00:00:00"}), 400,
                 "naive_time", "created_after")
    # Found by schemathesis: offsets past PostgreSQL's 15:59 (a DataError), and times that
    # leave datetime's range in UTC.
    assert api("GET", "/links", params={"created_before": "0725-06-23T15:52:07-17:42"}
               ).json()["items"] == []
    assert_error(api("GET", "/links", params={"created_after": "0001-01-01T00:00:00+05:00"}),
                 400, "time_range", "created_after")


def test_change_target_and_expiry_is_published_as_a_new_version(api):
    t = api("POST", "/links", json={"longurl": "https://example.com/api/ch"}).json()["tinyurl"]
    other = api("POST", "/links", json={"longurl": "https://example.com/api/taken"}).json()
    when = (timezone.now() + timedelta(days=3)).replace(microsecond=0)
    changed = api("PATCH", f"/links/{t}", json={"longurl": "https://example.com/api/ch2",
                                                "expires_at": when.isoformat()})
    assert changed.status_code == 200, changed.text
    assert changed.json()["longurl"] == "https://example.com/api/ch2"
    assert changed.json()["state_version"] == 2 and changed.json()["published"]
    records = link_records(links_topic(), t)
    assert [(r.version, r.longurl) for r in records] == [
        (1, "https://example.com/api/ch"), (2, "https://example.com/api/ch2")]
    # Only what is sent changes; null clears the expiry.
    cleared = api("PATCH", f"/links/{t}", json={"expires_at": None}).json()
    assert cleared["expires_at"] is None and cleared["longurl"].endswith("/ch2")
    assert_error(api("PATCH", f"/links/{t}", json={"longurl": other["longurl"]}), 409,
                 "conflict", "longurl")
    assert_error(api("PATCH", f"/links/{t}", json={"longurl": "http://10.0.0.1/"}), 400,
                 field="longurl")
    assert_error(api("PATCH", f"/links/{t}", json={"longurl": None}), 400, "longurl")
    assert_error(api("PATCH", "/links/Nope123", json={}), 404, "not_found")
    assert Link.objects.get(tinyurl=t).state_version == 3


def test_takedown_and_restore_are_idempotent_and_published(api):
    t = api("POST", "/links", json={"longurl": "https://example.com/api/tdr"}).json()["tinyurl"]
    for _ in range(2):
        down = api("POST", f"/links/{t}/takedown")
        assert down.status_code == 200 and down.json()["state"] == "disabled"
    up = api("POST", f"/links/{t}/restore").json()
    assert up["state"] == "active" and up["state_version"] == 3
    assert [r.state for r in link_records(links_topic(), t)] == ["active", "disabled", "active"]
    assert_error(api("POST", "/links/Nope123/takedown"), 404)


def test_clicks_per_hour_and_day_as_json_and_csv(api):
    t = api("POST", "/links", json={"longurl": "https://example.com/api/cl"}).json()["tinyurl"]
    link = Link.objects.get(tinyurl=t)
    hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    ClickBucket.objects.create(link=link, hour=hour, node="r1", clicks=5)
    ClickBucket.objects.create(link=link, hour=hour - timedelta(hours=1), node="r2", clicks=2)
    hourly = api("GET", f"/links/{t}/clicks", params={"unit": "hour", "slots": 3}).json()
    assert hourly["total"] == [0, 2, 5] and hourly["by_replica"] == {
        "r1": [0, 0, 5], "r2": [0, 2, 0]}
    daily = api("GET", f"/links/{t}/clicks", params={"unit": "day"}).json()
    assert len(daily["slots"]) == 90 and sum(daily["total"]) == 7
    response = api("GET", f"/links/{t}/clicks", params={"unit": "hour", "slots": 2,
                                                        "format": "csv"})
    assert response.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == ["hour", "clicks", "r1", "r2"] and [r[1] for r in rows[1:]] == ["2", "5"]
    assert_error(api("GET", f"/links/{t}/clicks", params={"unit": "week"}), 422, "invalid",
                 "unit")
    assert_error(api("GET", f"/links/{t}/clicks", params={"slots": 500}), 400, "slots", "slots")
    assert_error(api("GET", "/links/Nope123/clicks"), 404)


def test_replicas_lists_what_the_topic_holds(api):
    from links.replicas import replicas_view
    # The topic holds what earlier tests' replicas left (if any): the API lists those, as the
    # admin's page does.
    view = replicas_view()
    body = api("GET", "/replicas").json()
    assert {r["node"]: r["state"] for r in body["replicas"]} == {
        r.node: r.state for r in view.replicas}
    # Bad records earlier tests wrote are skipped and counted, as the admin's page counts them.
    assert body["rejected"] == view.rejected


def test_unknown_paths_and_methods_answer_in_the_error_shape(api):
    assert_error(api("GET", "/nothing/here"), 404, "no_such_path", None)
    assert_error(api("GET", "/links/a/b/c"), 404, "no_such_path")
    response = api("DELETE", "/links")
    assert_error(response, 405, "method_not_allowed")
    assert "GET" in response.headers["Allow"] and "POST" in response.headers["Allow"]


def test_the_openapi_document_lists_every_operation(api):
    schema = api("GET", "/openapi.json", headers={"Authorization": ""}).json()
    operations = {(m.upper(), p) for p, ops in schema["paths"].items() for m in ops}
    assert operations == {
        ("POST", "/api/v1/links"), ("GET", "/api/v1/links"), ("POST", "/api/v1/links/bulk"),
        ("GET", "/api/v1/links/{tinyurl}"), ("PATCH", "/api/v1/links/{tinyurl}"),
        ("POST", "/api/v1/links/{tinyurl}/takedown"), ("POST", "/api/v1/links/{tinyurl}/restore"),
        ("GET", "/api/v1/links/{tinyurl}/clicks"), ("GET", "/api/v1/replicas")}
    assert schema["openapi"].startswith("3.")


def test_create_with_an_alias_taken_reserved_and_invalid(api):
    created = api("POST", "/links", json={"longurl": "https://example.com/api/alias",
                                          "alias": "spring-sale_26"})
    assert created.status_code == 201, created.text
    assert created.json()["tinyurl"] == "spring-sale_26" and created.json()["alias"] is True
    again = api("POST", "/links", json={"longurl": "https://example.com/api/alias",
                                        "alias": "spring-sale_26"})
    assert again.status_code == 200 and again.json()["tinyurl"] == "spring-sale_26"
    plain = api("POST", "/links", json={"longurl": "https://example.com/api/alias"})
    assert plain.status_code == 201 and plain.json()["alias"] is False
    assert len(plain.json()["tinyurl"]) == 7
    assert api("GET", "/links/spring-sale_26").json()["alias"] is True
    assert_error(api("POST", "/links", json={"longurl": "https://example.com/api/other",
                                             "alias": "spring-sale_26"}),
                 409, "alias_taken", "alias")
    for reserved in ("admin", "Api", "HEALTHZ", "metrics"):
        assert_error(api("POST", "/links", json={"longurl": "https://example.com/api/r",
                                                 "alias": reserved}),
                     409, "alias_reserved", "alias")
    for invalid in ("ab", "a" * 65, "has space", "dot.ted", "ünï"):
        assert_error(api("POST", "/links", json={"longurl": "https://example.com/api/i",
                                                 "alias": invalid}), 422)
    assert not Link.objects.filter(longurl__in=["https://example.com/api/other",
                                                "https://example.com/api/r",
                                                "https://example.com/api/i"]).exists()
    bulk = api("POST", "/links/bulk", json=[
        {"longurl": "https://example.com/api/b1", "alias": "bulk-one"},
        {"longurl": "https://example.com/api/b2", "alias": "admin"},
        {"longurl": "https://example.com/api/b3", "alias": "x"}]).json()["results"]
    assert bulk[0]["tinyurl"] == "bulk-one"
    assert bulk[1]["status"] == 409 and bulk[1]["error"]["code"] == "alias_reserved"
    assert bulk[2]["status"] == 400 and bulk[2]["error"]["code"] == "alias_invalid"


def test_a_taken_down_longurl_gets_no_new_alias_and_unknown_fields_are_refused(api):
    longurl = "https://example.com/api/taken-down-target"
    t = api("POST", "/links", json={"longurl": longurl}).json()["tinyurl"]
    assert api("POST", f"/links/{t}/takedown").status_code == 200
    assert_error(api("POST", "/links", json={"longurl": longurl}), 410, "taken_down")
    assert_error(api("POST", "/links", json={"longurl": longurl, "alias": "dodge-it"}),
                 410, "taken_down")
    bulk = api("POST", "/links/bulk", json=[{"longurl": longurl, "alias": "dodge-it2"}])
    assert bulk.json()["results"][0]["status"] == 410
    assert not Link.objects.filter(tinyurl__in=["dodge-it", "dodge-it2"]).exists()
    # Put back, the target may have aliases again.
    assert api("POST", f"/links/{t}/restore").status_code == 200
    assert api("POST", "/links", json={"longurl": longurl, "alias": "dodge-it"}).status_code == 201
    assert_error(api("PATCH", f"/links/{t}", json={"alias": "renamed"}), 422)
    assert_error(api("POST", "/links", json={"longurl": longurl, "colour": "red"}), 422)
