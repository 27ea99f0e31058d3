"""The master's live view of the replicas' statuses, and waiting on it: create-and-wait.

One StatusFollower a process follows the replicas topic (from its start: it is compacted and
small) with one group-less consumer, keeps every replica's newest status in memory, folds each
new applied position into the samples (links/propagation.py, samples_fold), and wakes the
waiting requests (a threading.Condition) whenever statuses arrive. A waiting request therefore
costs no Kafka connection and no query per poll: it sleeps on the condition until a status
comes, checks its link's propagation (one indexed query per serving replica) and sleeps again.

consume_clicks runs a follower all the time (follow_thread_start), so the samples hold every
position even when no one is looking; a web process starts its own at the first propagation it
is asked for, and keeps it (a daemon thread; it reads a few records a second).

Waits are bounded: at most SHORTENER_PROPAGATION_WAITS at once in a process (each holds one of
its request threads: 16 a gunicorn worker). Past that, a wait is not made: the answer comes at
once with the propagation as it stands (`waited` False), so waits can never take every thread
and starve the admin or the health checks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import DatabaseError, connection
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from links.models import Link
from links.propagation import Propagation, link_propagation, samples_fold, samples_of
from links.replicas import statuses_fold
from links.services import LinkCreated, link_create, link_update
from runtime.supervision import SupervisedThread
from topics.clients import consumer_close
from topics.replicas import ReplicaStatus, replicas_reader_make, replicas_topic

logger = logging.getLogger(__name__)

Newest = dict[str, tuple[ReplicaStatus, datetime]]


class StatusFollower:
    """Follows the replicas topic; see the module docstring."""

    def __init__(self, *, reader_factory: Callable[[], KafkaConsumer] = replicas_reader_make,
                 store: bool = True) -> None:
        self.reader_factory = reader_factory
        self.store = store  # fold samples into PostgreSQL
        self.changed = threading.Condition()
        self.newest: Newest = {}
        self.caught_up = False  # read up to the end the topic had when the follow began
        self.error: str | None = None  # the last Kafka error, until a read succeeds again
        self.generation = 0  # bumped (under `changed`) whenever statuses or the error change

    def run(self, stop: threading.Event) -> None:
        """Follow until `stop` is set. Raises what Kafka or PostgreSQL raise (the supervisor
        starts it again after a back-off); the view then says the statuses are unknown."""
        with self.changed:  # a follow started again reads the topic whole before answering
            self.caught_up = False
        consumer = self.reader_factory()
        try:
            tp = TopicPartition(replicas_topic(), 0)  # one partition (topics/replicas.py)
            consumer.assign([tp])
            consumer.seek_to_beginning(tp)
            end = consumer.end_offsets([tp])[tp]
            newest: Newest = {}
            while not stop.is_set():
                # The broker holds the fetch until a record arrives (fetch_max_wait_ms, 500 ms
                # by default), so a new status is seen as soon as it is appended.
                batches = consumer.poll(timeout_ms=500)
                samples = []
                for records in batches.values():
                    for record in records:
                        # A record that is no status is skipped here; the replicas page logs
                        # and counts it (links/replicas.py).
                        statuses_fold(newest=newest, rejected=[], record=record)
                        if record.value is not None and record.key is not None:
                            got = newest.get(record.key.decode(errors="replace"))
                            if got is not None:
                                samples.extend(samples_of(*got))
                if self.store and samples:
                    try:
                        samples_fold(samples)
                    except DatabaseError as exc:
                        # The waits go on from the statuses in memory; only the times of these
                        # positions are lost (a later sample then times them, marked not exact).
                        logger.warning("%d position sample(s) not stored: %r", len(samples), exc)
                        connection.close()
                elif not batches:
                    # Quiet for a poll: this thread's session is closed, so that no idle
                    # session of it lingers (a database reset or drop waits on none); a burst
                    # of statuses keeps it (a connection costs PostgreSQL a process).
                    connection.close()
                caught = self.caught_up or consumer.position(tp) >= end
                if batches or caught != self.caught_up or self.error is not None:
                    with self.changed:
                        self.newest, self.caught_up, self.error = dict(newest), caught, None
                        self.generation += 1
                        self.changed.notify_all()
        except KafkaError as exc:
            with self.changed:
                self.error, self.caught_up = f"Kafka did not answer: {exc!r}", False
                self.generation += 1
                self.changed.notify_all()
            raise
        finally:
            connection.close()
            consumer_close(consumer, name="replicas follower")

    def snapshot(self, *, timeout: float) -> tuple[Newest | None, str | None, int]:
        """(newest statuses, error, generation) once caught up, waiting for that at most
        `timeout` seconds; (None, why, generation) if not caught up by then, at once while
        the follower's last read failed (a page is not held for a Kafka that is away)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not self.caught_up:
                left = deadline - time.monotonic()
                if left <= 0 or self.error is not None:  # Kafka failed the last read: no wait
                    return None, self.error or "the replicas topic was not read in time", \
                        self.generation
                self.changed.wait(left)
            return self.newest, None, self.generation

    def wait_change(self, generation: int, *, timeout: float) -> int:
        """Sleep until the statuses change after `generation`, or `timeout` seconds."""
        with self.changed:
            self.changed.wait_for(lambda: self.generation != generation, timeout=timeout)
            return self.generation


_follower: StatusFollower | None = None
_follower_thread: SupervisedThread | None = None
_follower_lock = threading.Lock()


def follow_thread_start(*, stop: threading.Event) -> StatusFollower:
    """Start this process's follower in a supervised daemon thread (restarted after a
    back-off if Kafka or PostgreSQL fail it: runtime/supervision.py), once; returns it."""
    global _follower, _follower_thread
    with _follower_lock:
        if _follower is None:
            follower = StatusFollower()
            _follower_thread = SupervisedThread(
                name="replicas-follower", target=lambda: follower.run(stop), stop=stop,
                restart=True, daemon=True).start()
            _follower = follower
        return _follower


_follower_stop: threading.Event | None = None


def follower_get() -> StatusFollower:
    """This process's follower, started on first use (it ends with the process, or with
    follower_stop)."""
    global _follower_stop
    if _follower is None:
        with _follower_lock:
            _follower_stop = _follower_stop or threading.Event()
        return follow_thread_start(stop=_follower_stop)
    return _follower


def follower_stop() -> None:
    """Stop the follower that follower_get started (the tests do, before their topics are
    deleted); the next follower_get starts a new one."""
    global _follower, _follower_stop, _follower_thread
    with _follower_lock:
        if _follower_stop is not None:
            _follower_stop.set()
        if _follower_thread is not None:
            _follower_thread.join(timeout=10)  # its poll returns within 0.5 s
        _follower = _follower_stop = _follower_thread = None


def link_propagation_now(*, link: Link) -> Propagation:
    """link_propagation for the admin's link page and the API's read of a link: the replicas'
    statuses as this process follows them (waiting at most SHORTENER_REPLICAS_READ_SECONDS for
    the first read of the topic)."""
    newest, error, _ = follower_get().snapshot(
        timeout=settings.SHORTENER_REPLICAS_READ_SECONDS)
    return link_propagation(link=link, statuses=newest, error=error)


@dataclass(frozen=True)
class WaitOutcome:
    """What a wait ended with: `propagation.complete` if every ready replica serves the link's
    current state; otherwise the timeout passed (`waited` True) or no wait was made because
    SHORTENER_PROPAGATION_WAITS were in flight (`waited` False, `refused` says so)."""

    propagation: Propagation
    waited: bool
    seconds: float  # how long the call took
    refused: str | None = None

    def as_dict(self) -> dict:
        """The JSON shape the API shows: {"waited", "seconds", "refused", "propagation":
        Propagation.as_dict()}. The API answers 202 with it unless propagation["complete"]."""
        return {"waited": self.waited, "seconds": round(self.seconds, 3),
                "refused": self.refused, "propagation": self.propagation.as_dict()}


_waits = threading.BoundedSemaphore(max(1, settings.SHORTENER_PROPAGATION_WAITS))


def wait_seconds(requested: float | None) -> float:
    """The wait a caller gets, in seconds: its own, or SHORTENER_PROPAGATION_WAIT_SECONDS, at
    most SHORTENER_PROPAGATION_WAIT_MAX_SECONDS. Raises ValueError for a negative one."""
    if requested is None:
        requested = settings.SHORTENER_PROPAGATION_WAIT_SECONDS
    if requested < 0:
        raise ValueError("a wait cannot be negative")
    # The default too: a deployment that lowers the longest wait below the default wait means
    # the longest.
    return min(float(requested), settings.SHORTENER_PROPAGATION_WAIT_MAX_SECONDS)


def link_wait_replicas(*, link: Link, timeout: float | None = None) -> WaitOutcome:
    """Wait until every ready replica serves `link`'s current state (wait="replicas"), at most
    `timeout` seconds (wait_seconds). Call it after the create, change or takedown returned
    (links.services: the state is then committed and, unless LinkPublishError was raised,
    acknowledged by Kafka, so its offset is known).

    Answers as soon as a status shows the last replica past the record: the replicas send one
    soon after applying (redirects/status.py), so on a local cluster that is a fraction of a
    second (docs/performance.md). Wakes only when statuses arrive (no fixed sleep). The link is
    read again from PostgreSQL at each check, so a change made meanwhile is waited for too.
    """
    started = time.monotonic()
    deadline = started + wait_seconds(timeout)
    if not _waits.acquire(blocking=False):
        return WaitOutcome(
            propagation=link_propagation_now(link=link), waited=False,
            seconds=time.monotonic() - started,
            refused=f"{settings.SHORTENER_PROPAGATION_WAITS} waits are in flight in this "
                    "process; not waited")
    try:
        follower = follower_get()
        while True:
            newest, error, generation = follower.snapshot(
                timeout=max(0.0, deadline - time.monotonic()))
            link.refresh_from_db()
            propagation = link_propagation(link=link, statuses=newest, error=error)
            left = deadline - time.monotonic()
            if propagation.complete or left <= 0:
                return WaitOutcome(propagation=propagation, waited=True,
                                   seconds=time.monotonic() - started)
            follower.wait_change(generation, timeout=left)
    finally:
        _waits.release()


# --- The services with wait="replicas", for the API: the same services as the admin's, then a
# --- wait. A caller that gets `complete` False answers 202 with the propagation (as_dict()).

WAIT_REPLICAS = "replicas"


def _wait_check(wait: str | None) -> bool:
    if wait not in (None, WAIT_REPLICAS):
        raise ValueError(f'wait must be "{WAIT_REPLICAS}" or absent, not {wait!r}')
    return wait == WAIT_REPLICAS


def link_create_waiting(*, longurl: str, expires_at: datetime | None = None,
                        wait: str | None = None, timeout: float | None = None
                        ) -> tuple[LinkCreated, WaitOutcome | None]:
    """links.services.link_create, then, with wait="replicas", link_wait_replicas. Raises what
    link_create raises (LinkPublishError: Kafka did not acknowledge, nothing to wait for), and
    ValueError for another `wait` or a negative timeout (checked before anything is made)."""
    waiting = _wait_check(wait)
    seconds = wait_seconds(timeout)
    created = link_create(longurl=longurl, expires_at=expires_at)
    return created, (link_wait_replicas(link=created.link, timeout=seconds) if waiting
                     else None)


def link_update_waiting(*, link: Link, wait: str | None = None, timeout: float | None = None,
                        **changes) -> tuple[Link, WaitOutcome | None]:
    """links.services.link_update(link=link, **changes) (a new target, an expiry; disabled=True
    takes the link down, False puts it back), then, with wait="replicas",
    link_wait_replicas. Raises what link_update raises, and ValueError as link_create_waiting."""
    waiting = _wait_check(wait)
    seconds = wait_seconds(timeout)
    updated = link_update(link=link, **changes)
    return updated, (link_wait_replicas(link=updated, timeout=seconds) if waiting else None)
