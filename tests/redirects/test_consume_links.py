"""The links path end to end: master -> real Kafka topic -> each replica's own Redis -> 302.

Every replica here is real processes: its own redis-server, `manage.py consume_links` and
gunicorn, as on a separate host."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from django.conf import settings
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import AlterConfigOp, ConfigResource, ConfigResourceType

from testkit import ROOT, link_produce, scrape, tinyurl_new, topic_read, wait_until
from tests.conftest import links_topic_end
from topics.clients import admin_client
from topics.links import links_topic, producer_get


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
    # Ready first: until then a missing link is a 503 (test_asgi.py).
    wait_until(lambda: replica.readyz()[0] == 200, timeout=30, what="the replica ready")
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


def test_the_group_offset_shows_the_stored_position_once_the_replica_is_idle(make_links,
                                                                           replica_factory):
    """The group offset (monitoring only) is committed at most once a second while batches
    stream in (topics/loop.py), and at the first poll that brings nothing."""
    make_links(300)
    replica = replica_factory()
    end = links_topic_end()
    wait_until(lambda: replica.position() == end, timeout=60, what="the replica at the end")
    tp = TopicPartition(links_topic(), 0)
    consumer = KafkaConsumer(bootstrap_servers=settings.KAFKA_BOOTSTRAP_SERVERS,
                             group_id=f"{settings.SHORTENER_USER}-links-{replica.name}",
                             enable_auto_commit=False)
    try:
        wait_until(lambda: consumer.committed(tp) == end, timeout=10,
                   what="the group offset at the stored position")
    finally:
        consumer.close(autocommit=False)


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
    admin = admin_client()
    try:
        offsets = admin.list_group_offsets(group)[group]
    finally:
        admin.close()
    assert [o.offset for o in offsets.values()] == [end]

    # ...yet a replica whose Redis lost everything reads the topic again from the start.
    replica.redis.flushall()
    # Not 404: with its ready mark gone too, the replica cannot tell a link it lost from one
    # that does not exist (tools/chaos found live links answered 404 after a wipe).
    lost = replica.get(next(iter(links)))
    assert lost.status_code == 503 and "catching up" in lost.json()["error"], lost.text
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


def test_records_a_replica_cannot_apply_are_logged_counted_and_shown(master, replica_factory):
    replica = replica_factory()
    wait_until(lambda: "caught up" in replica.consumer_output(), timeout=30, what="catch-up")
    rejected_before = replica.stats().get("rejected", 0)
    poison = [
        (b"abcDEF1", b"this is not json"),
        (b"abcDEF2", b"[1, 2, 3]"),
        (b"abcDEF3", b'{"schema": 99, "tinyurl": "abcDEF3", "longurl": "https://x.com"}'),
        (b"bad key!", b'{"schema": 2, "tinyurl": "bad key!", "longurl": "https://x.com"}'),
        # (A record with no key never gets this far: a compacted topic refuses it.)
        (b"abcDEF4", json.dumps({"schema": 2, "tinyurl": "abcDEF4", "version": 1,
                                 "state": "active", "longurl": "javascript:alert(1)",
                                 "expires_at": None, "created_at": "2026-01-01T00:00:00Z"}
                                ).encode()),
        # A schema-1 record (no version) cannot be ordered against versioned state.
        (b"abcDEF5", b'{"schema": 1, "tinyurl": "abcDEF5", "longurl": "https://x.com/5"}'),
    ]
    producer = producer_get()
    offsets = [producer.send(links_topic(), key=key, value=value).get(timeout=10).offset
               for key, value in poison]
    longurl = "https://example.com/after-the-poison"
    tinyurl = master.create(longurl)
    wait_until(lambda: replica.target(tinyurl) == longurl, timeout=20, what="the link after")
    assert replica.stats()["rejected"] == rejected_before + len(poison)
    assert replica.consumer_alive()
    assert replica.get("abcDEF1").status_code == 404
    assert replica.get("abcDEF4").status_code == 404
    # Logged with its offset... (The log line and the metric follow the batch's reply from
    # Redis, which consume_links reads when its next batch is ready or at its next idle poll
    # (redirects/links_writes.py): they may come a poll after the link is served.)
    wait_until(lambda: (f"rejected record topic={links_topic()} partition=0 offset={offsets[-1]} "
                        "reason=schema") in replica.consumer_output(), timeout=10,
               what="the last poison record's log line")

    # ...counted in a metric, by reason...
    def rejected_metric() -> dict[str, float]:
        metrics = scrape(f"http://127.0.0.1:{replica.consumer_metrics_port}/metrics")
        return {dict(labels)["reason"]: value for (name, labels), value in metrics.items()
                if name == "shortener_records_rejected_total"
                and dict(labels)["topic"] == links_topic()}

    # (This process read the whole topic: earlier tests' poison is in these counts too.)
    wait_until(lambda: sum(rejected_metric().values()) == replica.stats()["rejected"],
               timeout=10, what="the metric counting every rejected record")
    rejected = rejected_metric()
    assert all(rejected.get(reason, 0) >= n for reason, n in
               {"json": 1, "type": 1, "schema": 2, "key": 1, "longurl": 1}.items()), rejected
    # ...and shown on /readyz, which stays ready: the other links are served.
    status, body = replica.readyz()
    assert status == 200
    assert body["rejected"] == rejected_before + len(poison)
    assert body["rejected_last"] == f"0:{offsets[-1]}"


def test_a_tombstone_is_ignored_a_takedown_is_a_versioned_record(replica_factory):
    replica = replica_factory()
    tinyurl = tinyurl_new()
    link_produce(tinyurl, 1, "https://example.com/to-be-taken-down")
    wait_until(lambda: replica.get(tinyurl).status_code == 302, timeout=20, what="the link")
    ignored = replica.stats().get("ignored", 0)
    # A tombstone carries no version: it could be older than what the replica holds.
    producer_get().send(links_topic(), key=tinyurl.encode(), value=None).get(timeout=10)
    end = links_topic_end()
    wait_until(lambda: replica.position() == end, timeout=20, what="the tombstone read")
    assert replica.stats()["ignored"] == ignored + 1
    assert replica.get(tinyurl).status_code == 302
    link_produce(tinyurl, 2, disabled=True)
    wait_until(lambda: replica.get(tinyurl).status_code == 404, timeout=20, what="the takedown")
    assert replica.link(tinyurl) == (2, None, None)  # its version only


def caught_up(*replicas) -> None:
    end = links_topic_end()
    for replica in replicas:
        wait_until(lambda r=replica: r.position() == end, timeout=20,
                   what=f"{replica.name} at the end of the topic")


def test_a_stale_copy_after_a_takedown_or_a_put_back_changes_nothing(replica_factory):
    r1, r2 = replica_factory(), replica_factory()
    tinyurl = tinyurl_new()
    v1 = link_produce(tinyurl, 1, "https://example.com/stale/1")
    link_produce(tinyurl, 2, disabled=True)
    caught_up(r1, r2)
    # A late copy of the active record (a slow republish, a retried /create that read the row
    # before the takedown) lands after the takedown.
    link_produce(tinyurl, 1, "https://example.com/stale/1")
    caught_up(r1, r2)
    for replica in (r1, r2):
        assert replica.get(tinyurl).status_code == 404
        assert replica.link(tinyurl) == (2, None, None)
    # Put back (v3), then a late copy of the takedown (v2): still redirected.
    link_produce(tinyurl, 3, "https://example.com/stale/back")
    link_produce(tinyurl, 2, disabled=True)
    caught_up(r1, r2)
    for replica in (r1, r2):
        response = replica.get(tinyurl)
        assert (response.status_code, response.headers["Location"]) == (
            302, "https://example.com/stale/back")
        assert replica.stats()["stale"] >= 2
    # A replica started now reads the whole history, in the topic's order: the same end.
    r3 = replica_factory()
    caught_up(r3)
    assert r3.target(tinyurl) == "https://example.com/stale/back"
    assert v1 < links_topic_end()


@pytest.mark.timeout(240)
def test_a_replica_paused_while_a_link_is_taken_down_and_the_topic_compacts(replica_factory):
    replica = replica_factory()
    tinyurl = tinyurl_new()
    v1 = link_produce(tinyurl, 1, "https://example.com/compacted")
    wait_until(lambda: replica.get(tinyurl).status_code == 302, timeout=20, what="the link")
    caught_up(replica)
    replica.consumer.send_signal(signal.SIGSTOP)
    paused_at = replica.position()
    assert paused_at > v1  # it holds the active record
    topic = links_topic()
    resource = ConfigResource(ConfigResourceType.TOPIC, topic)
    # Small segments, cleaned at once: whatever the ratio of new to already-cleaned bytes
    # (earlier tests filled this topic), max.compaction.lag.ms makes a rolled segment due.
    fast = {"segment.ms": "100", "delete.retention.ms": "100", "min.compaction.lag.ms": "0",
            "max.compaction.lag.ms": "500", "min.cleanable.dirty.ratio": "0.0"}
    admin = admin_client()
    try:
        resource.configs = fast
        admin.alter_configs([resource])
        v2 = link_produce(tinyurl, 2, disabled=True)

        def compacted() -> bool:
            link_produce(tinyurl_new(), 1, "https://example.com/filler")  # rolls the segment
            mine = [r.offset for r in topic_read(topic) if r.key == tinyurl.encode()]
            return mine == [v2]

        wait_until(compacted, timeout=180, interval=1, what="compaction to drop the active copy")
        # What is left of the link in the topic is its disabled record, which compaction keeps
        # (a tombstone would have gone after delete.retention.ms, taking the takedown with it).
        records = [r for r in topic_read(topic) if r.key == tinyurl.encode()]
        assert [json.loads(r.value)["state"] for r in records] == ["disabled"]
        # The paused replica's position is past the active copy (gone now) and before the
        # takedown (kept): resuming, it reads the takedown whatever was removed before it.
        assert v1 < paused_at <= v2
        replica.consumer.send_signal(signal.SIGCONT)
        caught_up(replica)
        assert replica.get(tinyurl).status_code == 404
        # And a replica that reads the compacted topic from the start never serves the link.
        fresh = replica_factory()
        caught_up(fresh)
        assert fresh.get(tinyurl).status_code == 404
        assert fresh.link(tinyurl) == (2, None, None)
    finally:
        if replica.consumer_alive():
            replica.consumer.send_signal(signal.SIGCONT)
        resource.configs = {name: (AlterConfigOp.DELETE, None) for name in fast}
        admin.alter_configs([resource])
        admin.close()


def test_expired_links_answer_410_and_leave_redis_by_themselves(replica_factory):
    replica = replica_factory()
    now = datetime.now(timezone.utc)
    expired, expiring, forever = tinyurl_new(), tinyurl_new(), tinyurl_new()
    link_produce(expired, 1, "https://example.com/expired", expires_at=now - timedelta(minutes=1))
    link_produce(expiring, 1, "https://example.com/expiring",
                 expires_at=now + timedelta(seconds=12))
    link_produce(forever, 1, "https://example.com/forever")
    caught_up(replica)
    response = replica.get(expired)
    assert (response.status_code, response.json()) == (410, {"error": "this link has expired"})
    assert replica.get(expired, method="HEAD").status_code == 410
    answers = []
    wait_until(lambda: answers.append(replica.get(expiring).status_code) or answers[-1] == 410,
               timeout=30, interval=0.2, what="the link to expire")
    assert answers[0] == 302 and set(answers) == {302, 410}
    assert replica.get(forever).status_code == 302
    # A 410 counts nothing: only the 302s were counted.
    assert replica.clicks_count(expired) == 0
    assert replica.clicks_count(expiring) == answers.count(302)
    keep = settings.SHORTENER_GONE_KEEP_SECONDS
    user = settings.SHORTENER_USER
    for tinyurl in (expired, expiring):
        assert keep - 120 < replica.redis.ttl(f"{user}:link:{tinyurl}") <= keep
    assert replica.redis.ttl(f"{user}:link:{forever}") == -1


def test_a_full_redis_under_noeviction_drops_no_key_and_still_redirects(replica_factory):
    replica = replica_factory()
    tinyurl = tinyurl_new()
    link_produce(tinyurl, 1, "https://example.com/full")
    wait_until(lambda: replica.get(tinyurl).status_code == 302, timeout=20, what="the link")
    counted = replica.clicks_count(tinyurl)
    replica.redis.config_set("maxmemory", 1)  # full; noeviction is Redis' default policy
    try:
        assert replica.redis.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        # The click script's write is refused: the redirect is answered, the click not counted
        # (tests/redirects/test_writes_refused.py).
        assert replica.get(tinyurl).status_code == 302
        assert replica.clicks_count(tinyurl) == counted
        assert replica.get(tinyurl, method="HEAD").status_code == 302  # reads still work
        assert replica.target(tinyurl) == "https://example.com/full"  # nothing was dropped
    finally:
        replica.redis.config_set("maxmemory", 0)
    assert replica.get(tinyurl).status_code == 302


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
