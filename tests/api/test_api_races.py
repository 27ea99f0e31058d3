"""The API under what a single client cannot make happen: another request's write in flight (its
transaction open in PostgreSQL) while this request checks and writes (real PostgreSQL: the
other request is a second session holding its uncommitted row, released once this request is
seen waiting on its lock); a generated code drawn equal to an alias that exists; one alias
asked for by many requests at once."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg2
import pytest
from django.db import connection

from links import tinyurls
from links.models import Link
from links.selectors import longurl_digest
from testkit import wait_until
from tests.api.test_api import Api, api, assert_error  # noqa: F401 - the fixture

APP_NAME = "test_api_races_other"


def other_session():
    db = connection.settings_dict
    return psycopg2.connect(dbname=db["NAME"], user=db["USER"], host=db["HOST"] or "127.0.0.1",
                            port=db["PORT"] or 5432, application_name=APP_NAME)


def waiting_on_a_lock() -> bool:
    """A session of the live server waits on a lock (the other session's row)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                       " AND wait_event_type = 'Lock' AND application_name <> %s", [APP_NAME])
        return cursor.fetchone()[0] > 0


def test_a_change_to_a_longurl_another_request_is_creating_answers_409_not_500(api):
    """PATCH a generated link's longurl to q while another request's create of q is in flight:
    the check "no other generated link has q" passes (q's row is not committed yet), then the
    UPDATE waits on q's entry in the unique index and fails once that create commits. The
    answer must be what the check would have said a moment later, 409, with the link as it
    was; not a 500 from the unique violation."""
    suffix = uuid.uuid4().hex
    p, q = f"https://example.com/race/{suffix}/p", f"https://example.com/race/{suffix}/q"
    created = api("POST", "/links", json={"longurl": p})
    assert created.status_code == 201, created.text
    tinyurl = created.json()["tinyurl"]

    other = other_session()
    try:
        with other.cursor() as cursor:  # another create of q, its transaction still open
            cursor.execute(
                "INSERT INTO links_link (tinyurl, longurl, longurl_sha256, created_at, "
                "state_version, clicks, bot_clicks, alias) "
                "VALUES (%s, %s, %s, now(), 1, 0, 0, FALSE)",
                [uuid.uuid4().hex[:7], q, longurl_digest(q)])
        answer: dict = {}
        patch = threading.Thread(target=lambda: answer.setdefault(
            "response", api("PATCH", f"/links/{tinyurl}", json={"longurl": q})))
        patch.start()
        wait_until(waiting_on_a_lock, timeout=30, what="the PATCH waiting on q's uncommitted row")
        other.commit()
        patch.join(timeout=60)
        assert not patch.is_alive()
    finally:
        other.close()
    assert_error(answer["response"], 409)
    link = Link.objects.get(tinyurl=tinyurl)
    assert (link.longurl, link.state_version) == (p, 1)


def test_a_generated_code_drawn_equal_to_an_alias_is_drawn_again(api, monkeypatch):
    """The first code drawn for each new link is an existing alias (of another longurl, and of
    the same longurl): each gets a generated link of its own, never the alias's link."""
    suffix = uuid.uuid4().hex[:6]
    alias = f"A{suffix}"  # 7 characters of [a-zA-Z0-9]: a code the generator can draw
    made = api("POST", "/links", json={"longurl": f"https://example.com/{suffix}/a",
                                       "alias": alias})
    assert made.status_code == 201, made.text
    drawn = tinyurls.tinyurls_generate
    rounds: list[int] = []

    def alias_first(n: int) -> list[str]:  # the real draw from the second round on
        rounds.append(n)
        return [alias] * n if len(rounds) == 1 else drawn(n)

    # The live server runs in this process: its inserts draw through the patched module.
    monkeypatch.setattr(tinyurls, "tinyurls_generate", alias_first)
    for longurl in (f"https://example.com/{suffix}/b", f"https://example.com/{suffix}/a"):
        rounds.clear()
        created = api("POST", "/links", json={"longurl": longurl})
        assert created.status_code == 201, created.text
        link = created.json()
        assert (link["longurl"], link["alias"]) == (longurl, False)
        assert link["tinyurl"] != alias and len(rounds) == 2
    rounds.clear()
    bulk = api("POST", "/links/bulk", json=[{"longurl": f"https://example.com/{suffix}/c{i}"}
                                            for i in range(3)])
    codes = [r["tinyurl"] for r in bulk.json()["results"]]
    assert alias not in codes and len(set(codes)) == 3
    assert Link.objects.get(tinyurl=alias).longurl == f"https://example.com/{suffix}/a"


def test_one_alias_asked_for_at_once_by_many_requests(api):
    """Eight requests at once for one alias: for eight longurls, one gets it and seven 409
    alias_taken; for one longurl, one 201 and seven 200 with that same link."""
    suffix = uuid.uuid4().hex[:6]

    def ask(alias: str, longurl: str):
        return api("POST", "/links", json={"longurl": longurl, "alias": alias})

    with ThreadPoolExecutor(8) as pool:
        rivals = list(pool.map(lambda i: ask(f"r{suffix}", f"https://example.com/{suffix}/{i}"),
                               range(8)))
        same = list(pool.map(lambda i: ask(f"s{suffix}", f"https://example.com/{suffix}/s"),
                             range(8)))
    assert sorted(r.status_code for r in rivals) == [201] + [409] * 7
    for refused in (r for r in rivals if r.status_code == 409):
        assert_error(refused, 409, "alias_taken", "alias")
    assert sorted(r.status_code for r in same) == [200] * 7 + [201]
    assert {r.json()["tinyurl"] for r in same} == {f"s{suffix}"}
    assert Link.objects.filter(tinyurl__in=[f"r{suffix}", f"s{suffix}"]).count() == 2
