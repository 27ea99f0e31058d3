"""A link's propagation on the master (links/propagation.py, links/propagation_wait.py): which
replicas serve its current state, since when, and create-and-wait, against real PostgreSQL and
Kafka (the statuses are real records on the replicas topic; the replicas themselves are in
tests/test_propagation_e2e.py)."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from django.conf import settings
from django.db import connection

from links import propagation_wait
from links.models import Link, ReplicaProgress
from links.propagation import Sample, link_propagation, samples_fold, samples_prune
from links.propagation_wait import (
    link_create_waiting,
    link_update_waiting,
    link_wait_replicas,
)
from links.pruning import replicas_tombstone
from links.replicas import replica_statuses_read
from topics.links import producer_get
from testkit import wait_until
from topics.replicas import ReplicaStatus, replica_status_encode, replicas_topic

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


def status(node: str, position: int | None, *, ready: bool = True) -> ReplicaStatus:
    return ReplicaStatus(
        schema=1, node=node, links_position=position, links_end=position, ready=ready,
        reason="" if ready else "consume_links is not running", incarnation=None, redirects=0,
        version="test", reported_at=T0,
        links_positions=None if position is None else {0: position})


def published(offset: int, *, changed: datetime = T0) -> Link:
    """A link as the master stores it once Kafka acknowledged its state at `offset`."""
    return Link(tinyurl="aBcDeF1", longurl="https://example.com/", created_at=changed,
                published_at=changed, published_partition=0, published_offset=offset,
                state_version=1)


def test_a_replica_serves_the_state_once_its_position_is_past_the_record(db):
    samples_fold([Sample("r1", 0, 10, T0 + timedelta(seconds=0.1)),
                  Sample("r1", 0, 11, T0 + timedelta(seconds=0.25)),
                  Sample("r2", 0, 10, T0 + timedelta(seconds=0.1))])
    now = T0 + timedelta(seconds=1)
    result = link_propagation(link=published(10), now=now, statuses={
        "r1": (status("r1", 11), now), "r2": (status("r2", 10), now)})
    assert (result.live, result.of, result.summary()) == (1, 2, "live on 1 of 2 replicas")
    r1, r2 = result.replicas
    assert (r1.node, r1.serves, r1.seconds, r1.exact) == ("r1", True, 0.25, True)
    assert (r2.node, r2.serves, r2.seconds) == ("r2", False, None)
    assert not result.complete
    shape = result.as_dict()
    assert shape["summary"] == "live on 1 of 2 replicas" and shape["offset"] == 10
    assert shape["replicas"][0] == {"node": "r1", "ready": True, "serves": True,
                                    "reported_at": (T0 + timedelta(seconds=0.25)).isoformat(),
                                    "seconds": 0.25, "exact": True}


def test_only_ready_replicas_count_and_an_unpublished_state_is_nowhere(db):
    now = T0 + timedelta(seconds=1)
    statuses = {"r1": (status("r1", 50), now), "r2": (status("r2", 50, ready=False), now),
                "old": (status("old", 50), now - timedelta(
                    seconds=settings.SHORTENER_REPLICA_MISSING_SECONDS + 1))}
    result = link_propagation(link=published(10), now=now, statuses=statuses)
    assert (result.live, result.of) == (1, 1) and result.complete
    assert [(r.node, r.ready, r.serves) for r in result.replicas] == [
        ("old", False, True), ("r1", True, True), ("r2", False, True)]
    # Changed since (published_at cleared until Kafka acknowledges the new state): no replica
    # can serve it, whatever its position.
    link = published(10)
    link.published_at = None
    result = link_propagation(link=link, now=now, statuses=statuses)
    assert (result.live, result.of, result.offset) == (0, 1, None)
    unknown = link_propagation(link=published(10), statuses=None, error="Kafka did not answer")
    assert (unknown.of, unknown.error, unknown.complete) == (0, "Kafka did not answer", False)


def test_a_first_report_not_seen_from_before_is_an_upper_bound(db):
    """A replica whose first known sample is already past the offset (it started later, or the
    earlier samples were thinned) may have had the state before: `exact` is False."""
    samples_fold([Sample("late", 0, 40, T0 + timedelta(seconds=30))])
    now = T0 + timedelta(seconds=31)
    r = link_propagation(link=published(10), now=now,
                         statuses={"late": (status("late", 40), now)}).replicas[0]
    assert (r.serves, r.seconds, r.exact) == (True, 30.0, False)


def test_samples_keep_the_first_time_of_a_position(db):
    samples_fold([Sample("k1", 0, 5, T0 + timedelta(seconds=2))])
    samples_fold([Sample("k1", 0, 5, T0 + timedelta(seconds=9)),  # the same position, later
                  Sample("k1", 0, 5, T0 + timedelta(seconds=1))])  # and one seen earlier
    assert list(ReplicaProgress.objects.filter(node="k1").values_list(
        "reported_at", flat=True)) == [T0 + timedelta(seconds=1)]


def test_prune_thins_old_samples_to_the_last_of_each_minute(db):
    fine = settings.SHORTENER_PROPAGATION_FINE_SECONDS
    now = T0 + timedelta(seconds=fine + 3600)
    old = [Sample("p1", 0, i, T0 + timedelta(seconds=10 * i)) for i in range(12)]  # 2 minutes
    recent = [Sample("p1", 0, 100 + i, now - timedelta(seconds=5 - i)) for i in range(5)]
    samples_fold(old + recent)
    samples_prune(now=now)
    kept = sorted(ReplicaProgress.objects.filter(node="p1").values_list("position", flat=True))
    assert kept == [5, 11, 100, 101, 102, 103, 104]  # the last of each old minute, all recent
    gone_now = T0 + timedelta(seconds=settings.SHORTENER_REPLICA_GONE_SECONDS + fine + 3600)
    samples_prune(now=gone_now)
    assert list(ReplicaProgress.objects.filter(node="p1").values_list(
        "position", flat=True)) == [104]


# --- Waiting, on the real replicas topic -------------------------------------------------------


@pytest.fixture
def quiet_replicas_topic(kafka_topics):
    """The replicas topic with no node in it: earlier tests' replicas are tombstoned, so the
    replicas counted are the ones this test reports."""
    nodes = list(replica_statuses_read(timeout=10).newest)
    replicas_tombstone(nodes, producer=producer_get())
    follower = propagation_wait.follower_get()

    def no_nodes() -> bool:
        newest, _, _ = follower.snapshot(timeout=10)
        return newest is not None and not set(nodes) & set(newest)

    wait_until(no_nodes, timeout=10, what="the follower seeing the tombstones")
    return follower


def report(node: str, position: int, *, ready: bool = True) -> None:
    key, value = replica_status_encode(
        node=node, links_position=position, links_end=position, ready=ready, reason="",
        incarnation=None, redirects=0, version="test", reported_at=datetime.now(timezone.utc),
        links_positions={0: position})
    producer_get().send(replicas_topic(), key=key, value=value).get(timeout=10)


def test_create_and_wait_answers_when_the_last_ready_replica_reports_the_record(
        transactional_db, quiet_replicas_topic):
    a, b = (f"w{uuid.uuid4().hex[:6]}{i}" for i in (1, 2))
    report(a, 0)
    report(b, 0)
    link = link_create_waiting(longurl=f"https://example.com/{uuid.uuid4().hex}")[0].link
    link.refresh_from_db()
    offset = link.published_offset
    # The statuses come from another thread while the wait sleeps on the follower's condition.
    reporter = threading.Thread(target=lambda: (report(a, offset + 1), report(b, offset + 1)))
    outcome = None

    def wait() -> None:
        nonlocal outcome
        try:
            outcome = link_wait_replicas(link=Link.objects.get(pk=link.pk), timeout=20)
        finally:
            connection.close()  # this thread's own session (the test database is dropped)

    waiter = threading.Thread(target=wait)
    waiter.start()
    reporter.start()
    reporter.join()
    waiter.join(timeout=30)
    assert outcome is not None and outcome.waited and outcome.propagation.complete
    assert outcome.propagation.summary() == "live on 2 of 2 replicas"
    assert all(r.seconds is not None and r.exact for r in outcome.propagation.replicas)
    assert outcome.seconds < 20


def test_a_wait_that_times_out_says_which_replicas_lack_the_state(transactional_db,
                                                                  quiet_replicas_topic):
    node = f"w{uuid.uuid4().hex[:6]}"
    report(node, 0)
    link = link_create_waiting(longurl=f"https://example.com/{uuid.uuid4().hex}")[0].link
    updated, outcome = link_update_waiting(link=link, longurl=f"{link.longurl}x",
                                           wait="replicas", timeout=0.3)
    assert updated.state_changed_at is not None and outcome.waited
    assert not outcome.propagation.complete
    assert [(r.node, r.serves) for r in outcome.propagation.replicas] == [(node, False)]
    assert outcome.propagation.summary() == "live on 0 of 1 replica"
    shape = outcome.as_dict()
    assert (shape["waited"], shape["refused"]) == (True, None)
    assert shape["propagation"]["complete"] is False
    assert shape["propagation"]["replicas"][0]["serves"] is False


def test_waits_past_the_limit_are_answered_at_once(transactional_db, quiet_replicas_topic):
    link = link_create_waiting(longurl=f"https://example.com/{uuid.uuid4().hex}")[0].link
    taken = 0
    while propagation_wait._waits.acquire(blocking=False):
        taken += 1
    try:
        assert taken == settings.SHORTENER_PROPAGATION_WAITS
        outcome = link_wait_replicas(link=link, timeout=30)
        assert not outcome.waited and "waits are in flight" in outcome.refused
        assert outcome.seconds < 5
    finally:
        for _ in range(taken):
            propagation_wait._waits.release()


def test_wait_arguments_are_checked_before_anything_is_made(db):
    with pytest.raises(ValueError, match="wait must be"):
        link_create_waiting(longurl="https://example.com/never", wait="all")
    with pytest.raises(ValueError, match="negative"):
        link_create_waiting(longurl="https://example.com/never", wait="replicas", timeout=-1)
    assert not Link.objects.filter(longurl="https://example.com/never").exists()


def test_a_status_without_positions_per_partition_is_read_as_partition_0(db):
    """A replica not upgraded yet sends only links_position (their sum; the links topic has one
    partition): it is shown as it is during a rolling upgrade, not as lacking every link."""
    old = ReplicaStatus(schema=1, node="old", links_position=11, links_end=11, ready=True,
                        reason="", incarnation=None, redirects=0, version="old", reported_at=T0)
    now = T0 + timedelta(seconds=1)
    result = link_propagation(link=published(10), now=now, statuses={"old": (old, now)})
    assert result.summary() == "live on 1 of 1 replica"


def test_consume_clicks_folds_the_statuses_into_samples(clicks_consumer, quiet_replicas_topic):
    """The master's consume_clicks follows the replicas topic beside its clicks, so the samples
    hold every position even when no page or wait asks (links/propagation_wait.py)."""
    node = f"f{uuid.uuid4().hex[:6]}"
    quiet_replicas_topic.store = False  # this process' follower: only consume_clicks' stores
    try:
        for position in (3, 4, 4, 9):
            report(node, position)
        wait_until(lambda: sorted(ReplicaProgress.objects.filter(node=node).values_list(
            "position", flat=True)) == [3, 4, 9], timeout=30, what="the samples folded")
    finally:
        quiet_replicas_topic.store = True
    assert "thread replicas-follower died" not in clicks_consumer.output()


def test_wait_seconds_caps_the_default_and_the_asked_at_the_longest(settings):
    from links.propagation_wait import wait_seconds
    settings.SHORTENER_PROPAGATION_WAIT_SECONDS = 10.0
    settings.SHORTENER_PROPAGATION_WAIT_MAX_SECONDS = 30.0
    assert wait_seconds(None) == 10.0 and wait_seconds(45) == 30.0 and wait_seconds(0) == 0.0
    settings.SHORTENER_PROPAGATION_WAIT_MAX_SECONDS = 0.5
    assert wait_seconds(None) == 0.5 and wait_seconds(3) == 0.5
    with pytest.raises(ValueError):
        wait_seconds(-1)
