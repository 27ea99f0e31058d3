"""PUT /create's group commit (links/batching.py) through the lean path (links/asgi.py), in this
process: requests sent with httpx to the ASGI application on an event loop of its own thread,
real PostgreSQL and Kafka.

A batch is made deterministic without timing: the batcher (one batch at a time here) is held by
a first batch whose INSERT waits for a row lock this test holds (an uncommitted insert of the
same longurl); the requests sent meanwhile queue (the batcher says how many), and go together as
the next batch once the test lets the first one go. The batch sizes are read from
shortener_create_batch_size."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future

import httpx
import pytest
from django.db import connection, transaction

from links import selectors
from links.asgi import CreateApp
from links.batching import CreateBatcher
from links.models import Link
from runtime.metrics import CREATE_BATCH_SIZE
from testkit import wait_until

DATABASE_UNAVAILABLE = {"error": "the database is unavailable; retry shortly"}


class Client:
    """The lean path in this process: an event loop in a thread, httpx on it."""

    def __init__(self) -> None:
        self.app = CreateApp(self._not_lean, batcher=CreateBatcher(in_flight=1))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    @staticmethod
    async def _not_lean(scope, receive, send):
        raise AssertionError(f"{scope['path']} handed to Django")

    def put(self, longurl: str) -> Future:
        """Send PUT /create {"longurl"}; a future of (status, JSON body)."""
        async def put() -> tuple[int, dict]:
            transport = httpx.ASGITransport(app=self.app, client=("127.0.0.1", 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
                response = await c.put("/create", json={"longurl": longurl}, timeout=60)
                return response.status_code, response.json()
        return self.run(put())

    def run(self, coroutine: Coroutine) -> Future:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def close(self) -> None:
        if self.app.started:
            self.run(self.app.close()).result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def client(transactional_db, kafka_topics):
    client = Client()
    yield client
    client.close()


def batches() -> tuple[float, float]:
    """(batches run, creates in them) so far in this process."""
    values = {s.name: s.value for metric in CREATE_BATCH_SIZE.collect() for s in metric.samples}
    return values["shortener_create_batch_size_count"], values["shortener_create_batch_size_sum"]


class Held:
    """A first batch held in its INSERT: this test's connection inserts `longurl` first and
    keeps the row uncommitted, so the batch's INSERT of the same longurl waits for the row's
    lock. let_go() rolls the row back: the batch then inserts its own."""

    def __init__(self, client: Client, longurl: str) -> None:
        self.atomic = transaction.atomic()
        self.atomic.__enter__()
        Link.objects.create(tinyurl="Held000", longurl=longurl,
                            longurl_sha256=selectors.longurl_digest(longurl))
        self.first = client.put(longurl)
        try:
            wait_until(self._waiting, what="the first batch waiting for the row lock")
        except BaseException:
            self.let_go()
            raise

    @staticmethod
    def _waiting() -> bool:
        with connection.cursor() as cursor:
            # A transaction sees one snapshot of the statistics views unless told to drop it.
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                           "current_database() AND wait_event_type = 'Lock'")
            return cursor.fetchone()[0] >= 1

    def let_go(self) -> tuple[int, dict]:
        transaction.set_rollback(True)
        self.atomic.__exit__(None, None, None)
        return self.first.result(timeout=60)


def test_a_request_alone_goes_at_once_as_a_batch_of_one(client):
    count, total = batches()
    status, body = client.put("https://example.com/alone").result(timeout=60)
    assert status == 200
    assert Link.objects.get(tinyurl=body["tinyurl"]).published_at is not None
    # It was not held for company: it went as soon as it came, in a batch of its own.
    assert batches() == (count + 1, total + 1)


def test_two_racing_requests_for_one_longurl_in_one_batch_get_one_tinyurl(client):
    held = Held(client, "https://example.com/first")
    count, total = batches()
    racing = [client.put("https://example.com/raced") for _ in range(2)]
    wait_until(lambda: client.app.batcher.queued() == 2, what="both requests queued")
    assert held.let_go()[0] == 200
    (status1, body1), (status2, body2) = (f.result(timeout=60) for f in racing)
    assert status1 == status2 == 200
    assert body1 == body2
    link = Link.objects.get(longurl="https://example.com/raced")
    assert body1["tinyurl"] == link.tinyurl and link.published_at is not None
    # The two went together: one batch (the held one was counted when it began, before).
    assert batches() == (count + 1, total + 2)


def test_a_batch_the_database_fails_answers_every_member_503_and_loses_nothing(client):
    longurls = [f"https://example.com/member/{i}" for i in range(3)]
    failing = longurls[1] + "/refused-by-trigger"
    with connection.cursor() as cursor:
        # PostgreSQL refuses the INSERT of one row: the whole statement, so the whole batch.
        cursor.execute("""
            CREATE FUNCTION test_refuse_link() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.longurl LIKE '%refused-by-trigger%' THEN
                    RAISE EXCEPTION 'refused by a test trigger';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER test_refuse_link BEFORE INSERT ON links_link
                FOR EACH ROW EXECUTE FUNCTION test_refuse_link();""")
    try:
        held = Held(client, "https://example.com/first")
        members = [client.put(u) for u in (longurls[0], failing, longurls[2])]
        wait_until(lambda: client.app.batcher.queued() == 3, what="the batch queued")
        assert held.let_go()[0] == 200
        for member in members:
            assert member.result(timeout=60) == (503, DATABASE_UNAVAILABLE)
        # Nothing of the batch was committed, nor sent to the replicas.
        assert not Link.objects.filter(longurl__startswith="https://example.com/member/").exists()
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER test_refuse_link ON links_link; "
                           "DROP FUNCTION test_refuse_link()")
    # The clients retry: every link is made (once), and published.
    answers = [client.put(u).result(timeout=60) for u in (longurls[0], failing, longurls[2])]
    assert [status for status, _ in answers] == [200, 200, 200]
    assert Link.objects.filter(longurl__startswith="https://example.com/member/",
                               published_at__isnull=False).count() == 3


def test_shutdown_fails_the_queued_and_answers_the_running(client):
    held = Held(client, "https://example.com/running")
    queued = client.put("https://example.com/queued")
    wait_until(lambda: client.app.batcher.queued() == 1, what="the second request queued")
    closing = client.run(client.app.close())
    # The queued request is answered at once, while the running batch still waits.
    assert queued.result(timeout=60) == (
        503, {"error": "the server is shutting down; retry shortly"})
    assert not closing.done()
    assert held.let_go()[0] == 200  # the running batch is answered when it ends
    closing.result(timeout=60)
    assert not Link.objects.filter(longurl="https://example.com/queued").exists()
    # And a request after the shutdown is refused the same way.
    assert client.put("https://example.com/late").result(timeout=60)[0] == 503
