"""Fixtures shared by the suite. Everything here is real: PostgreSQL (pytest-django's test
database), the Kafka broker that `make test` starts, and redis-server processes per replica.

Two lanes. A test that needs a service (PostgreSQL, Kafka, Redis, or the product's processes,
which use them) carries the `services` marker; `make test-fast` runs the rest (`-m "not
services"`) with no service started and every address pointed at a closed port
(stack/test-fast.sh). A test declares its services by requesting a fixture of SERVICE_FIXTURES
(directly or through another fixture: pytest-django's databases and live server, `kafka_topics`,
`test_data_dir`), which marks it here, or by the marker itself. One that forgets fails in the fast
lane: the database is blocked by pytest-django, and Kafka and Redis are refused.
"""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import pytest
import requests
from django.conf import settings

from testkit import ClicksConsumerProcess, Replica, topic_end, wait_until
from topics.clicks import clicks_topic
from topics.clients import admin_client
from topics.links import links_topic, producer_reset
from topics.provisioning import topic_specs, topics_ensure

# Requesting any of these, directly or through another fixture, declares that a test needs the
# services: pytest-django's database and live server, this run's Kafka topics, and the folder the
# product's processes (testkit: redis-server, consume_links, web, ...) keep their data in.
SERVICE_FIXTURES = frozenset({
    "django_db_setup", "db", "transactional_db", "django_db_reset_sequences",
    "django_db_serialized_rollback", "live_server", "kafka_topics", "test_data_dir",
})


# tryfirst: the marker must be on every test before pytest's own hook deselects by `-m`.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Mark every test that requests a service fixture (or pytest-django's django_db marker)
    with `services`: `-m "not services"` is then the fast lane, and a fixture that needs a
    service marks all of its users at once."""
    for item in items:
        if (SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ()))
                or item.get_closest_marker("django_db")):
            item.add_marker(pytest.mark.services)


@pytest.fixture(scope="session")
def kafka_topics():
    """This run's topics (its SHORTENER_USER prefix is unique); deleted at the end."""
    topics_ensure()
    yield
    from links.propagation_wait import follower_stop

    follower_stop()  # this process' follower of the replicas topic (links/propagation_wait.py)
    producer_reset()
    admin = admin_client()
    try:
        admin.delete_topics([spec.name for spec in topic_specs()])
    finally:
        admin.close()


@pytest.fixture(autouse=True)
def _services_have_the_topics(request):
    """Every test in the services lane has this run's topics, as every test had when they were
    made for all: a test that produces to or reads them directly declares `services` (a
    fixture or the marker), not also `kafka_topics`. The fast lane never reaches Kafka."""
    if request.node.get_closest_marker("services"):
        request.getfixturevalue("kafka_topics")


@pytest.fixture(autouse=True)
def _link_ids_forgotten():
    """Each test starts with consume_clicks' in-process memory of link ids empty
    (links/linkids.py): a test database is emptied between tests, so a remembered id would name
    a link of an earlier test."""
    from links import linkids

    linkids.forget()


@pytest.fixture(scope="session")
def test_data_dir() -> Path:
    base = Path(os.environ.get("SHORTENER_TEST_DATA") or Path(settings.BASE_DIR) / ".local" / "test")
    path = base / settings.SHORTENER_USER
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def replica_factory(test_data_dir, kafka_topics):
    """Make replicas: `replica_factory()` returns a Replica with its Redis running;
    `replica_factory(redis_of=other)` one that shares `other`'s Redis (two hosts, one Redis)."""
    made: list[Replica] = []

    def make(*, start: bool = True, reporter: bool = False,
             redis_of: Replica | None = None) -> Replica:
        replica = Replica(f"r{uuid.uuid4().hex[:8]}", test_data_dir, redis_of=redis_of)
        made.append(replica)
        if redis_of is None:
            replica.start_redis()
        if start:
            replica.start_consumer()
            replica.start_web()
        if reporter:
            replica.start_reporter()
        return replica

    yield make
    for replica in made:
        replica.close()


class Master:
    """The master's HTTP API on pytest-django's live server (real PostgreSQL, real Kafka)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = requests.Session()

    def put(self, body, **kwargs) -> requests.Response:
        if not isinstance(body, (bytes, str)):
            kwargs["json"] = body
            body = None
        return self.http.put(f"{self.url}/create", data=body, timeout=30, **kwargs)

    def create(self, longurl: str) -> str:
        response = self.put({"longurl": longurl})
        assert response.status_code == 200, response.text
        return response.json()["tinyurl"]


@pytest.fixture
def master(live_server, kafka_topics) -> Master:
    master = Master(live_server.url)
    yield master
    # Close the kept-alive HTTP connection: the live server's request thread, and with it its
    # database session, lives as long as that connection does.
    master.http.close()


@pytest.fixture
def make_links(transactional_db, kafka_topics):
    """Store `n` new links in PostgreSQL and publish them through the master's own path."""
    from links.models import Link
    from links.publishing import links_publish
    from links.selectors import longurl_digest
    from links.services import tinyurl_generate

    def make(n: int, tag: str = "") -> dict[str, str]:
        tag = tag or uuid.uuid4().hex[:8]
        links = []
        for i in range(n):
            longurl = f"https://example.com/{tag}/{i}"
            links.append(Link(tinyurl=tinyurl_generate(), longurl=longurl,
                              longurl_sha256=longurl_digest(longurl)))
        Link.objects.bulk_create(links, batch_size=5000)
        sent, failed = links_publish(links=links)
        assert (sent, failed) == (n, 0)
        return {link.tinyurl: link.longurl for link in links}

    return make


def links_topic_end(partition: int = 0) -> int:
    return topic_end(links_topic(), partition)


@pytest.fixture
def clicks_consumer(transactional_db, test_data_dir, kafka_topics):
    """The master's consume_clicks as a process, started; stopped before the database is reset."""
    process = ClicksConsumerProcess(test_data_dir)
    process.start()
    # Ready (signal handlers installed, partitions assigned) once it has positioned itself.
    wait_until(lambda: "positioned on" in process.output(), timeout=30, what="consume_clicks")
    yield process
    if process.alive():
        process.stop(signal.SIGKILL)
    # PostgreSQL ends a killed client's session shortly after; the test database must not be
    # reset (or dropped) under it.
    wait_until(lambda: process.sessions() == 0, timeout=10, what="consume_clicks' sessions")


def clicks_topic_end(partition: int = 0) -> int:
    return topic_end(clicks_topic(), partition)