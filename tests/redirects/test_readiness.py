"""A replica's /readyz tells the truth about consume_links: 503 within 30 s of it stopping,
dying or stalling, 200 again once it runs and has caught up; Kafka unreachable alone is a note.
The replicas run with the default SHORTENER_READY_STALE_SECONDS (15 s)."""

from __future__ import annotations

import signal
import time

import pytest

from testkit import free_port, link_produce, tinyurl_new, wait_until
from tests.conftest import links_topic_end

pytestmark = pytest.mark.timeout(180)


def ready(replica) -> bool:
    return replica.readyz()[0] == 200


def not_ready_within_30s(replica, started: float) -> str:
    status, body = wait_until(lambda: (r := replica.readyz())[0] == 503 and r, timeout=35,
                              interval=0.25, what="/readyz 503")
    assert time.monotonic() - started <= 30, "503 came later than 30 s"
    return body["reason"]


def test_503_within_30s_of_a_stall_and_200_once_resumed_and_caught_up(replica_factory):
    replica = replica_factory()
    wait_until(lambda: ready(replica), timeout=30, what="ready")
    replica.consumer.send_signal(signal.SIGSTOP)
    started = time.monotonic()
    try:
        # Links published while it is stalled are the reason it must leave service.
        tinyurl = tinyurl_new()
        link_produce(tinyurl, 1, "https://example.com/while-stalled")
        reason = not_ready_within_30s(replica, started)
        assert "consume_links is stopped or stuck" in reason
        # It really is behind, and says so to a client too: the ready mark expired with the
        # beats, so a link it does not hold is 503 ("catching up"), not 404 (guarantee 5 of
        # tools/chaos/checker.py: a 404 is the replica saying it is ready).
        assert replica.target(tinyurl) is None
        wait_until(lambda: replica.get(tinyurl).status_code == 503, timeout=3,
                   what="503 for the link it lacks")
        assert replica.get(tinyurl_new()).status_code == 503  # an unknown code alike
    finally:
        replica.consumer.send_signal(signal.SIGCONT)
    # Resumed: ready only once it has caught up with what it missed.
    wait_until(lambda: ready(replica), timeout=30, what="ready again")
    assert replica.position() >= links_topic_end() - 1
    assert replica.get(tinyurl).status_code == 302


def test_503_within_30s_of_a_kill_and_200_after_a_restart(replica_factory):
    replica = replica_factory()
    wait_until(lambda: ready(replica), timeout=30, what="ready")
    replica.stop_consumer(signal.SIGKILL)
    started = time.monotonic()
    reason = not_ready_within_30s(replica, started)
    assert "consume_links is stopped or stuck" in reason
    tinyurl = tinyurl_new()
    link_produce(tinyurl, 1, "https://example.com/after-the-kill")
    replica.start_consumer()
    wait_until(lambda: ready(replica), timeout=30, what="ready after the restart")
    assert replica.get(tinyurl).status_code == 302


def test_kafka_unreachable_alone_keeps_a_running_replica_in_service_with_a_note(
    replica_factory,
):
    replica = replica_factory()
    wait_until(lambda: ready(replica), timeout=30, what="ready")
    # consume_links restarted at once (a deploy), but Kafka cannot be reached: nothing listens
    # on its bootstrap address. Its retry rounds keep the heartbeat fresh.
    assert replica.stop_consumer() == 0
    replica.start_consumer(KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}")
    status, body = wait_until(lambda: "note" in (r := replica.readyz())[1] and r, timeout=60,
                              what="the note")
    assert status == 200 and "cannot reach Kafka" in body["note"], body
    # Longer than the stale threshold: still in service, still saying why links may lag.
    until = time.monotonic() + 20
    while time.monotonic() < until:
        status, body = replica.readyz()
        assert status == 200 and "cannot reach Kafka" in body["note"], body
        time.sleep(0.5)
    # Kafka back: the note goes.
    assert replica.stop_consumer() == 0
    replica.start_consumer()
    wait_until(lambda: (r := replica.readyz())[0] == 200 and "note" not in r[1], timeout=30,
               what="ready without the note")


def test_a_replica_that_never_ran_its_consumer_is_not_ready(replica_factory):
    replica = replica_factory(start=False)
    replica.start_web()
    status, body = replica.readyz()
    assert (status, body["reason"]) == (503, "consume_links is not running (no heartbeat)")


def test_a_wiped_redis_is_never_marked_ready_before_it_is_rebuilt(replica_factory, make_links):
    """FLUSHALL under a ready replica (a Redis restarted without its data): the heartbeat's gap
    made consume_links catch up again at once from the positions in its memory and set the
    ready mark on the empty Redis, for up to a second, before its position check noticed. The
    mark is now set only if Redis holds those positions."""
    replica = replica_factory()
    links = make_links(50)
    wait_until(lambda: replica.has_all(links) and replica.readyz()[0] == 200, timeout=30,
               what="the replica ready with the links")
    before = len(replica.consumer_output())
    replica.redis.flushall()
    wait_until(lambda: replica.has_all(links) and replica.readyz()[0] == 200, timeout=30,
               what="the replica rebuilt and ready again")
    after = replica.consumer_output()[before:]
    assert "caught up with" in after
    # The first thing it said was that Redis lost its position; it caught up only after that.
    assert after.index("differs from ours") < after.index("caught up with"), after[-3000:]
