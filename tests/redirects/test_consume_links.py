"""The links path end to end: master -> real Kafka topic -> each replica's own Redis -> 302.

Every replica here is real processes: its own redis-server, `manage.py consume_links` and
gunicorn, as on a separate host."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from django.conf import settings

from shortener_project import bus
from tests.conftest import links_topic_end
from tests.support import ROOT, wait_until


def assert_serves(replica, links: dict[str, str]) -> None:
    for tinyurl, longurl in links.items():
        response = replica.get(tinyurl)
        assert response.status_code == 302, (tinyurl, response.status_code)
        assert response.headers["Location"] == longurl


def test_create_then_redirect_on_two_replicas_with_their_own_redis(master, replica_factory):
    r1, r2 = replica_factory(), replica_factory()
    assert r1.redis_port != r2.redis_port
    longurl = "https://example.com/e2e?x=1&y=2"
    tinyurl = master.create(longurl)
    for replica in (r1, r2):
        wait_until(lambda r=replica: r.get(tinyurl).status_code == 302, timeout=20,
                   what=f"{replica.name} to serve {tinyurl}")
        response = replica.get(tinyurl)
        assert response.headers["Location"] == longurl
        assert response.headers["Cache-Control"] == "no-store"
        head = replica.get(tinyurl, method="HEAD")
        assert (head.status_code, head.headers["Location"]) == (302, longurl)
        assert replica.target(tinyurl) == longurl  # in this replica's own Redis


def test_replica_answers_404_for_unknown_and_malformed_codes(replica_factory):
    replica = replica_factory()
    for path in ["ZZZZZZ9", "abc", "abcdefgh", "abc-def", "abc%20de", "", "admin/", "create",
                 "metrics-"]:
        response = replica.get(path)
        assert response.status_code == 404, path
        assert response.json() == {"error": "no such link"}
    assert replica.get("abcdefg", method="POST").status_code == 405
    assert replica.get("abcdefg", method="DELETE").status_code == 405


def test_fresh_replica_serves_1000_links_already_in_the_topic(make_links, replica_factory):
    links = make_links(1000)
    replica = replica_factory()
    wait_until(lambda: replica.has_all(links), timeout=60, what="1,000 links in the replica")
    assert_serves(replica, links)
    assert replica.position() == links_topic_end()


def test_stopped_replica_catches_up_on_what_it_missed(master, replica_factory):
    replica = replica_factory()
    wait_until(lambda: "caught up" in replica.consumer_output(), timeout=30, what="catch-up")
    assert replica.stop_consumer(signal.SIGTERM) == 0
    links = {}
    for i in range(100):
        longurl = f"https://example.com/missed/{i}"
        links[master.create(longurl)] = longurl
    missed = next(iter(links))
    assert replica.get(missed).status_code == 404  # it really was down
    replica.start_consumer()
    wait_until(lambda: replica.has_all(links), timeout=30, what="the 100 missed links")
    assert_serves(replica, links)


def test_flushed_redis_is_rebuilt_although_group_offsets_are_at_the_end(make_links, replica_factory):
    links = make_links(300)
    replica = replica_factory()
    wait_until(lambda: replica.has_all(links), timeout=30, what="initial load")
    end = links_topic_end()
    assert replica.stop_consumer() == 0

    # The group's committed offset is at the end of the topic...
    group = f"{settings.SHORTENER_USER}-links-{replica.name}"
    admin = bus.admin_client()
    try:
        offsets = admin.list_group_offsets(group)[group]
    finally:
        admin.close()
    assert [o.offset for o in offsets.values()] == [end]

    # ...yet a replica whose Redis lost everything reads the topic again from the start.
    replica.redis.flushall()
    assert replica.get(next(iter(links))).status_code == 404
    replica.start_consumer()
    wait_until(lambda: replica.has_all(links), timeout=30, what="rebuild after flush")
    assert replica.position() == end
    assert "reading from the start" in replica.consumer_output()


def test_redis_wiped_under_a_running_consumer_is_rebuilt(make_links, replica_factory):
    links = make_links(200)
    replica = replica_factory()
    wait_until(lambda: replica.has_all(links), timeout=30, what="initial load")
    replica.restart_redis_empty()  # Redis restarted without persistence, consumer untouched
    wait_until(lambda: replica.has_all(links), timeout=30, what="rebuild after Redis restart")
    assert replica.consumer_alive()
    replica.redis.flushall()  # and wiped while running
    wait_until(lambda: replica.has_all(links), timeout=30, what="rebuild after FLUSHALL")
    assert_serves(replica, dict(list(links.items())[:20]))


def test_kill_9_during_catch_up_loses_nothing(make_links, replica_factory):
    links = make_links(20_000)
    end = links_topic_end()
    replica = replica_factory(start=False)
    # Small batches, so that the catch-up takes many transactions and can be cut in the middle.
    replica.start_consumer(SHORTENER_LINKS_BATCH="200")
    stored = wait_until(lambda: (p := replica.position()) is not None and p > 0 and p,
                        timeout=30, interval=0.005, what="the first batch")
    assert replica.stop_consumer(signal.SIGKILL) == -signal.SIGKILL
    cut = replica.position()
    assert stored <= cut < end, "the kill must land during the catch-up"
    # What Redis holds is whole batches: every link before the stored position is there.
    replica.start_consumer()
    wait_until(lambda: replica.position() == end, timeout=60, what="catch-up after SIGKILL")
    assert replica.has_all(links)
    assert f"stored positions {{0: {cut}}}" in replica.consumer_output()  # resumed, not restarted
    replica.start_web()
    assert_serves(replica, dict(list(links.items())[-50:]))


def test_poison_messages_are_skipped_counted_and_the_links_after_them_arrive(
    master, replica_factory
):
    replica = replica_factory()
    wait_until(lambda: "caught up" in replica.consumer_output(), timeout=30, what="catch-up")
    skipped_before = replica.stats().get("skipped", 0)
    poison = [
        (b"abcDEF1", b"this is not json"),
        (b"abcDEF2", b"[1, 2, 3]"),
        (b"abcDEF3", b'{"schema": 99, "tinyurl": "abcDEF3", "longurl": "https://x.com"}'),
        (b"bad key!", b'{"schema": 1, "tinyurl": "bad key!", "longurl": "https://x.com"}'),
        # (A record with no key never gets this far: a compacted topic refuses it.)
        (b"abcDEF4", b'{"schema": 1, "tinyurl": "abcDEF4", "longurl": "javascript:alert(1)"}'),
    ]
    producer = bus.producer_get()
    for key, value in poison:
        producer.send(bus.links_topic(), key=key, value=value).get(timeout=10)
    longurl = "https://example.com/after-the-poison"
    tinyurl = master.create(longurl)
    wait_until(lambda: replica.target(tinyurl) == longurl, timeout=20, what="the link after")
    assert replica.stats()["skipped"] == skipped_before + len(poison)
    assert replica.consumer_alive()
    assert replica.get("abcDEF1").status_code == 404
    assert replica.get("abcDEF4").status_code == 404
    assert "skipping malformed record" in replica.consumer_output()


def test_a_tombstone_removes_the_link(master, replica_factory):
    replica = replica_factory()
    tinyurl = master.create("https://example.com/to-be-removed")
    wait_until(lambda: replica.get(tinyurl).status_code == 302, timeout=20, what="the link")
    bus.producer_get().send(bus.links_topic(), key=tinyurl.encode(), value=None).get(timeout=10)
    wait_until(lambda: replica.get(tinyurl).status_code == 404, timeout=20, what="removal")
    assert replica.stats()["removed"] >= 1


def test_sigterm_stops_the_consumer_cleanly(replica_factory):
    replica = replica_factory()
    wait_until(lambda: "caught up" in replica.consumer_output(), timeout=30, what="catch-up")
    assert replica.stop_consumer(signal.SIGTERM, timeout=10) == 0
    assert "links consumer stopped" in replica.consumer_output()


@pytest.mark.parametrize("role,message", [
    ("", "SHORTENER_ROLE is not set"),
    ("bogus", "SHORTENER_ROLE='bogus' is not a role"),
])
def test_a_process_without_a_valid_role_refuses_to_start(role, message):
    env = {**__import__("os").environ, "SHORTENER_ROLE": role}
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert message in result.stderr
