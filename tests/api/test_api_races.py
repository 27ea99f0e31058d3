"""The API under races a single client cannot make: another request's write in flight (its
transaction open in PostgreSQL) while this request checks and writes. Real PostgreSQL: the
other request is a second session holding its uncommitted row, released once this request is
seen waiting on its lock."""

from __future__ import annotations

import threading
import uuid

import psycopg2
import pytest
from django.db import connection

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
