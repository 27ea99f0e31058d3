"""PUT /create/bulk on the live server (real PostgreSQL and Kafka): each item answered in input
order exactly as PUT /create answers it alone; only the new links created; the API key, the rate
limit (counted per item), the whole-call refusals, and Kafka down (per-item 503, nothing lost)."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
import requests
from django.db import connection
from django.test import override_settings
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from links import bodies, protection, ratelimit, services
from links.models import Link
from runtime.metrics import CREATE_REFUSED
from testkit import MasterWeb, free_port, topic_end
from topics.links import links_topic, producer_reset


def bulk(master, body, **kwargs) -> requests.Response:
    if not isinstance(body, (bytes, str)):
        kwargs["json"] = body
        body = None
    return master.http.put(f"{master.url}/create/bulk", data=body, timeout=60, **kwargs)


def as_create(answer: dict) -> tuple[int, dict]:
    """A bulk entry as the (status, body) PUT /create gives."""
    if "error" in answer:
        return answer["status"], {"error": answer["error"]}
    return 200, answer


def refused(reason: str) -> float:
    return CREATE_REFUSED.labels(reason)._value.get()


def test_each_item_is_answered_in_order_as_create_answers_it(master, transactional_db):
    protection.blocked_host_add(host="evil.example")
    try:
        existing = services.link_create(longurl="https://example.com/existing").link
        gone = services.link_create(longurl="https://example.com/gone").link
        services.link_set_disabled(link=gone, disabled=True)
        ended = services.link_create(longurl="https://example.com/ended").link
        Link.objects.filter(pk=ended.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
        later = (timezone.now() + timedelta(days=3)).replace(microsecond=0).isoformat()
        items = [
            {"longurl": "https://example.com/new-1"},
            {"longurl": "https://example.com/existing"},
            {"longurl": "https://example.com/new-1"},          # twice in one call
            {"longurl": "ftp://example.com/"},                 # scheme
            {"longurl": 42},                                   # type
            {"longurl": "https://user@example.com/"},          # userinfo
            {"longurl": "https://127.0.0.1/"},                 # the service's own host
            {"longurl": "https://10.1.2.3/"},                  # private
            {"longurl": "https://example.com/" + "x" * 9000},  # too long
            {"longurl": "https://www.evil.example/x"},         # blocked
            {"longurl": "https://example.com/gone"},           # taken down
            {"longurl": "https://example.com/ended"},          # expired
            {"expires_at": later},                             # no longurl
            "https://example.com/not-an-object",
            {"longurl": "https://example.com/bad-expiry", "expires_at": "2030-01-01T00:00:00"},
            {"longurl": "https://example.com/new-2", "expires_at": later},
        ]
        before = {r: refused(r) for r in ("scheme", "blocked_host", "taken_down", "json")}
        end = topic_end(links_topic())
        response = bulk(master, items)
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert len(results) == len(items)
        # Exactly the two new links were made and sent.
        assert Link.objects.count() == 5
        assert topic_end(links_topic()) == end + 2
        assert [r.get("code") for r in results] == [
            None, None, None, "scheme", "type", "userinfo", "own_host", "private_host",
            "too_long", "blocked_host", "taken_down", "expired", "json", "json", "expires_at",
            None]
        assert results[0]["tinyurl"] == results[2]["tinyurl"]
        assert results[1]["tinyurl"] == existing.tinyurl
        assert results[15]["expires_at"].startswith(later[:19])
        assert refused("scheme") == before["scheme"] + 1
        assert refused("json") == before["json"] + 2
        assert refused("blocked_host") == before["blocked_host"] + 1
        assert refused("taken_down") == before["taken_down"] + 1
        # Each entry is what PUT /create answers for that item alone (status, message or link).
        # (An item that is not an object gets /create's status, with a message about the item
        # rather than "the request body".)
        for item, answer in zip(items, results):
            alone = master.put(json.dumps(item))
            if isinstance(item, dict):
                assert as_create(answer) == (alone.status_code, alone.json()), item
            else:
                assert answer["status"] == alone.status_code == 400
        assert Link.objects.count() == 5
        for answer in (results[0], results[15]):
            assert Link.objects.get(tinyurl=answer["tinyurl"]).published_at is not None
    finally:
        protection.blocklist_cache_clear()


def test_the_same_call_again_gets_the_same_tinyurls(master, transactional_db):
    items = [{"longurl": f"https://example.com/again/{i}"} for i in range(50)]
    first = bulk(master, items).json()["results"]
    second = bulk(master, items).json()["results"]
    assert first == second and Link.objects.count() == 50


@override_settings(SHORTENER_CREATE_AUTH="key")
def test_an_api_key_is_required_as_for_create(master, transactional_db):
    items = [{"longurl": "https://example.com/keyed"}]
    missing = bulk(master, items)
    assert missing.status_code == 401 and "Bearer" in missing.headers["WWW-Authenticate"]
    assert bulk(master, items, headers={"Authorization": "Bearer sk_nope"}).status_code == 403
    assert not Link.objects.exists()
    _, token = protection.api_key_create(name="bulk")
    ok = bulk(master, items, headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200 and "tinyurl" in ok.json()["results"][0]


@override_settings(SHORTENER_CREATE_RATE_LIMIT="5/minute")
def test_the_rate_limit_counts_each_item(master, transactional_db):
    """A budget of 5 and 8 items: the first 5 created, the other 3 answered 429 each; the budget
    is shared with PUT /create, so the next /create is refused too."""
    items = [{"longurl": f"https://example.com/budget/{i}"} for i in range(8)]
    results = bulk(master, items).json()["results"]
    assert all("tinyurl" in r for r in results[:5])
    assert [(r["status"], r["code"]) for r in results[5:]] == [(429, "rate_limited")] * 3
    assert all(1 <= r["retry_after"] <= 60 for r in results[5:])
    assert Link.objects.count() == 5
    again = bulk(master, items[5:]).json()["results"]
    assert [r["status"] for r in again] == [429] * 3
    assert master.put({"longurl": "https://example.com/budget/single"}).status_code == 429
    assert Link.objects.count() == 5


@override_settings(SHORTENER_CREATE_RATE_LIMIT="10/minute;1000/hour")
def test_concurrent_takes_never_grant_more_than_the_limit(transactional_db):
    """Six threads of one client each asking for 3 at once, against a budget of 10: whatever
    the interleaving, at most 10 are granted in all (a take that loses a race gets 0)."""
    grants: list[int] = []
    start = threading.Barrier(6)

    def take() -> None:
        try:
            start.wait()
            grants.append(ratelimit.create_rate_limit_take(client="addr:192.0.2.9", cost=3)[0])
        finally:
            connection.close()

    threads = [threading.Thread(target=take) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(grants) == 6 and 0 < sum(grants) <= 10
    assert ratelimit.create_rate_limit_take(client="addr:192.0.2.9", cost=1)[0] == 0


@override_settings(SHORTENER_BULK_MAX_ITEMS=3, SHORTENER_BULK_MAX_BODY_BYTES=2000)
@pytest.mark.parametrize("body, status, reason", [
    ([{"longurl": f"https://example.com/many/{i}"} for i in range(4)], 400, "too_many_items"),
    ({"longurl": "https://example.com/object"}, 400, "json"),
    (b"[{\"longurl\": ", 400, "json"),
    (b"", 400, "body"),
    ([{"longurl": "https://example.com/" + "x" * 2000}], 413, "body"),
])
def test_a_call_refused_whole_creates_nothing(master, transactional_db, body, status, reason):
    before = refused(reason)
    response = bulk(master, body)
    assert response.status_code == status and response.json()["error"], response.text
    assert refused(reason) == before + 1
    assert not Link.objects.exists()


def test_another_method_is_refused(master, transactional_db):
    response = master.http.post(f"{master.url}/create/bulk", json=[], timeout=10)
    assert response.status_code == 405 and response.headers["Allow"] == "PUT"


def test_kafka_down_answers_503_per_item_and_loses_nothing(master, transactional_db):
    items = [{"longurl": f"https://example.com/kafka-down/{i}"} for i in range(3)] + [
        {"longurl": "ftp://example.com/"}]
    producer_reset()
    try:
        with override_settings(KAFKA_BOOTSTRAP_SERVERS=[f"127.0.0.1:{free_port()}"],
                               SHORTENER_PUBLISH_TIMEOUT=1.0):
            results = bulk(master, items).json()["results"]
    finally:
        producer_reset()
    assert [(r["status"], r["code"]) for r in results] == [(503, "unpublished")] * 3 + [
        (400, "scheme")]
    rows = Link.objects.filter(longurl__startswith="https://example.com/kafka-down/")
    assert rows.count() == 3 and not rows.filter(published_at__isnull=False).exists()
    stored = dict(rows.values_list("longurl", "tinyurl"))
    # Kafka is back: the retry gets the links that were stored, now acknowledged.
    again = bulk(master, items).json()["results"]
    assert [r["tinyurl"] for r in again[:3]] == [stored[i["longurl"]] for i in items[:3]]
    assert not Link.objects.filter(published_at__isnull=True).exists()


POOL = [{"longurl": "https://example.com/p"}, {"longurl": "https://example.com/P"},
        {"longurl": "https://EXAMPLE.com/p"}, {"longurl": "https://b.example/"},
        {"longurl": "http://127.0.0.1/"}, {"longurl": ""}, {"longurl": None}, {}, [], 7,
        {"longurl": "https://c.example/x", "expires_at": "yesterday"},
        {"longurl": "https://c.example/ü"}, {"longurl": "https://c.example/%C3%BC"}]


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(calls=st.lists(st.lists(st.sampled_from(POOL), max_size=10), min_size=1, max_size=3))
def test_any_calls_answer_each_item_as_create_would(master, transactional_db, calls):
    """Any calls drawn from items that are equal in stored form, refused for each reason, or
    distinct: one entry per item, in order; every accepted longurl gets one tinyurl in every
    call; exactly the distinct accepted longurls are stored."""
    Link.objects.all().delete()
    tinyurl_of: dict[str, str] = {}
    for items in calls:
        results = bulk(master, items).json()["results"]
        assert len(results) == len(items)
        for item, answer in zip(items, results):
            if "tinyurl" in answer:
                assert isinstance(item, dict) and "expires_at" not in item
                assert tinyurl_of.setdefault(answer["longurl"], answer["tinyurl"]) == \
                    answer["tinyurl"]
            else:
                assert answer["status"] == 400 and answer["code"]
    assert dict(Link.objects.values_list("longurl", "tinyurl")) == tinyurl_of


# Items as JSON text: Python writes no integer of more than 4,300 digits, so these are spelled.
HUGE = "7" * 5000
ITEM_TEXTS = [json.dumps(item) for item in POOL] + [
    f'{{"longurl": {HUGE}}}',                                         # the longurl itself
    f'{{"longurl": "https://example.com/huge", "n": [{{"m": -{HUGE}}}]}}',  # deep inside
    f'{{"longurl": "https://example.com/huge", "expires_at": {HUGE}}}',
    f"[{HUGE}]", HUGE, '{"longurl": ' + "[" * 50 + "]" * 50 + "}",
]


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.sampled_from(ITEM_TEXTS), min_size=1, max_size=8))
def test_each_refused_item_is_answered_alone_and_spoken_of_as_the_item(master, transactional_db,
                                                                       texts):
    """Any mix of items, an integer too long for Python's parser among them: each entry has
    the status /create gives that item alone as its body; no message about an item speaks of
    "the request body"; an item that is an object /create would parse gets /create's very
    message; the integers too long refuse their items, never the call."""
    response = bulk(master, ("[" + ", ".join(texts) + "]").encode())
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == len(texts)
    for text, answer in zip(texts, results):
        alone = master.put(text.encode())
        if "error" not in answer:
            assert alone.status_code == 200 and alone.json() == answer
            continue
        assert answer["status"] == alone.status_code, (text, answer, alone.text)
        assert "body" not in answer["error"], answer
        if text.startswith("{") and HUGE not in text:
            assert answer["error"] == alone.json()["error"]
        elif HUGE in text:
            assert answer["code"] == "json" and "the item holds an integer of more than 4300 " \
                "digits" in answer["error"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                 max_size=3), max_leaves=6)


@settings(max_examples=200, deadline=None)
@given(elements=st.lists(st.tuples(json_values, st.booleans()), max_size=6))
def test_the_parser_marks_exactly_the_elements_that_hold_an_integer_too_long(elements):
    """links/bodies.py alone (no service): an element with an integer past Python's limit
    anywhere in it becomes INTEGER_TOO_LONG, the others parse as they are; without
    `elements_most` (PUT /create) such a body is refused whole, as before."""
    texts = [f"[{json.dumps(value)}, {HUGE}]" if huge else json.dumps(value)
             for value, huge in elements]
    body = ("[" + ", ".join(texts) + "]").encode()
    read = bodies.json_body(None, lambda: body, limit=10**6,
                            too_large_status=413, too_large="", empty="", elements_most=6)
    assert read == [bodies.INTEGER_TOO_LONG if huge else value for value, huge in elements]
    if any(huge for _, huge in elements):
        with pytest.raises(bodies.BodyRefused, match="not JSON this service accepts"):
            bodies.json_body(None, lambda: body, limit=10**6, too_large_status=413,
                             too_large="", empty="")


def test_an_item_nested_past_the_parsers_limit_refuses_the_whole_call(master, transactional_db):
    """As docs/bulk.md says: Python's json stops at the recursion limit, and the call is
    refused (400 json) rather than that item alone; 100 levels are an item's own refusal."""
    before = refused("json")
    deep = '{"longurl": ' + "[" * 2000 + "]" * 2000 + "}"
    response = bulk(master, f'[{{"longurl": "https://example.com/deep"}}, {deep}]'.encode())
    assert response.status_code == 400
    assert response.json()["error"].startswith("request body is not JSON this service accepts: "
                                               "maximum recursion depth exceeded")
    assert refused("json") == before + 1 and not Link.objects.exists()
    shallow = '{"longurl": ' + "[" * 100 + "]" * 100 + "}"
    response = bulk(master, f'[{{"longurl": "https://example.com/deep"}}, {shallow}]'.encode())
    assert [r.get("code") for r in response.json()["results"]] == [None, "type"]


def test_a_dropped_database_connection_is_taken_again(master, transactional_db):
    """PostgreSQL dropped the live server's kept connection: the call reconnects, never a 500."""
    assert bulk(master, [{"longurl": "https://example.com/before-drop"}]).status_code == 200
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                       "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    protection.blocklist_cache_clear()  # the blocklist's read meets the dead connection first
    response = bulk(master, [{"longurl": "https://example.com/after-drop"}])
    assert response.status_code == 200 and "tinyurl" in response.json()["results"][0]


def test_the_database_unreachable_is_503_for_the_call(test_data_dir, kafka_topics):
    web = MasterWeb(test_data_dir, workers=1,
                    DATABASE_URL=f"postgres://postgres@127.0.0.1:{free_port()}/none")
    try:
        response = requests.put(f"{web.url}/create/bulk", timeout=30,
                                json=[{"longurl": "https://example.com/no-database"}])
    finally:
        web.close()
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert "database" in response.json()["error"]
