"""Which replicas serve a link's current state, and since when: "live on 2 of 2 replicas".

The master knows, for every link, where the record of its current state is in the links topic
(Link.published_partition and published_offset, from Kafka's acknowledgement; links/
publishing.py) and when that state was made (Link.state_changed_at, or created_at for a link
never changed). Each replica's status (topics/replicas.py) carries its applied position per
partition: the next offset it will apply. A replica serves the link's current state once that
position is past the record's offset (a replica applies the topic in order, and applies a
record's state unless it holds a newer version, which only a later record carries).

When a replica first *reported* having it is the earliest sample (ReplicaProgress) of that
replica on that partition with a position past the offset: the master folds every status it
reads into one sample per new position (samples_fold, called by the status follower of
links/propagation_wait.py), so it learns the time without keeping every status, and without a
row per link and replica (bulk creates make 20,000 links a second; a row per link per replica
would be that many writes again, the samples are at most 10 a second per replica).

What the answer is not: a record re-sent for the same state (the outbox relay's duplicate, the
links audit's resend) moves the link's offset later, and the replicas are then shown not serving
until they pass the copy, though they served the state already: conservative, for the seconds
a copy takes to arrive. A topic deleted and created again restarts the offsets; the replicas'
positions and the links' offsets are then both the new topic's once it was republished.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from links.models import Link, ReplicaProgress
from topics.replicas import ReplicaStatus


@dataclass(frozen=True)
class ReplicaPropagation:
    """One replica, for one link's current state."""

    node: str
    ready: bool  # counted in "of M": ready, and heard from within SHORTENER_REPLICA_MISSING_SECONDS
    serves: bool  # its applied position is past the current state's record
    # When it first reported having the state (the broker's time of that status), and the
    # seconds from the state's change to then; None while it does not serve it, or if the
    # report is no longer in the samples.
    reported_at: datetime | None
    seconds: float | None
    # False when the time is an upper bound: the samples of the moment were thinned or pruned
    # (links.propagation.samples_prune), so it reported it at that time or before.
    exact: bool


@dataclass(frozen=True)
class Propagation:
    """A link's current state across the replicas: `live` of `of` ready replicas serve it."""

    tinyurl: str
    state_version: int
    changed_at: datetime  # when the current state was made (create, change or takedown)
    # Where its record is; None while Kafka has not acknowledged the current state (no replica
    # can serve it yet: the outbox relay sends it).
    partition: int | None
    offset: int | None
    replicas: list[ReplicaPropagation]  # every replica not gone, sorted by node
    error: str | None = None  # why the replicas' statuses could not be read (then none listed)

    @property
    def live(self) -> int:
        return sum(1 for r in self.replicas if r.ready and r.serves)

    @property
    def of(self) -> int:
        return sum(1 for r in self.replicas if r.ready)

    @property
    def complete(self) -> bool:
        """Every ready replica serves the current state (and there is at least one)."""
        return self.error is None and self.of > 0 and self.live == self.of

    def summary(self) -> str:
        return f"live on {self.live} of {self.of} replica{'' if self.of == 1 else 's'}"

    def as_dict(self) -> dict:
        """The JSON shape the API shows (times in RFC 3339)."""
        def iso(t: datetime | None) -> str | None:
            return t.isoformat() if t is not None else None

        return {
            "summary": self.summary(), "live": self.live, "of": self.of,
            "complete": self.complete, "state_version": self.state_version,
            "changed_at": iso(self.changed_at), "partition": self.partition,
            "offset": self.offset, "error": self.error,
            "replicas": [{"node": r.node, "ready": r.ready, "serves": r.serves,
                          "reported_at": iso(r.reported_at), "seconds": r.seconds,
                          "exact": r.exact} for r in self.replicas],
        }


@dataclass(frozen=True)
class Sample:
    node: str
    partition: int
    position: int
    reported_at: datetime


def positions_of(status: ReplicaStatus) -> dict[int, int]:
    """A status' applied position per partition. A replica older than links_positions sends
    only their sum, links_position: that is partition 0's, the links topic's only partition
    (topics/links.py), so it is read as such (a rolling upgrade shows the replicas that have
    not been upgraded yet as they are)."""
    if status.links_positions is not None:
        return status.links_positions
    return {0: status.links_position} if status.links_position is not None else {}


def samples_of(status: ReplicaStatus, seen: datetime) -> list[Sample]:
    """The samples one status gives: its position on each partition, at the broker's time."""
    return [Sample(status.node, p, pos, seen) for p, pos in positions_of(status).items()]


def samples_fold(samples: Iterable[Sample]) -> None:
    """Store samples, one statement: a (node, partition, position) already stored keeps its
    time (the first report of a position is the one that counts; folding a status twice, or in
    two processes, changes nothing)."""
    rows = list({(s.node, s.partition, s.position): s for s in samples}.values())
    if not rows:
        return
    nodes, parts, positions, times = zip(*((s.node, s.partition, s.position, s.reported_at)
                                           for s in rows))
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO links_replicaprogress (node, partition, position, reported_at) "
            "SELECT * FROM unnest(%s::text[], %s::int[], %s::bigint[], %s::timestamptz[]) "
            "ON CONFLICT (node, partition, position) DO UPDATE SET reported_at = "
            "LEAST(links_replicaprogress.reported_at, EXCLUDED.reported_at) "
            "WHERE EXCLUDED.reported_at < links_replicaprogress.reported_at",
            [list(nodes), list(parts), list(positions), list(times)])


def _first_reports(*, nodes: list[str], partition: int, offset: int
                   ) -> dict[str, tuple[datetime, bool]]:
    """node -> (time of its earliest sample past `offset`, whether a sample at or before
    `offset` is still kept: without one, the first report may have been thinned away)."""
    if not nodes:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT n.node, first.reported_at, EXISTS (SELECT 1 FROM links_replicaprogress b "
            "  WHERE b.node = n.node AND b.partition = %s AND b.position <= %s) "
            "FROM unnest(%s::text[]) AS n(node) "
            "CROSS JOIN LATERAL (SELECT reported_at FROM links_replicaprogress a "
            "  WHERE a.node = n.node AND a.partition = %s AND a.position > %s "
            "  ORDER BY a.position LIMIT 1) AS first",
            [partition, offset, nodes, partition, offset])
        return {node: (at, before) for node, at, before in cursor.fetchall()}


def link_propagation(*, link: Link,
                     statuses: Mapping[str, tuple[ReplicaStatus, datetime]] | None,
                     error: str | None = None, now: datetime | None = None) -> Propagation:
    """Which replicas serve `link`'s current state (as stored: refresh it first), given every
    replica's newest status and its broker time (the status follower's snapshot, links/
    propagation_wait.py: link_propagation_now reads it for you). `statuses` None: they could
    not be read (`error` says why)."""
    now = now or timezone.now()
    changed = link.state_changed_at or link.created_at
    current = link.published_at is not None and link.published_offset is not None
    partition = link.published_partition if current else None
    offset = link.published_offset if current else None
    if statuses is None:
        return Propagation(tinyurl=link.tinyurl, state_version=link.state_version,
                           changed_at=changed, partition=partition, offset=offset,
                           replicas=[], error=error or "the replicas' statuses are unknown")
    rows = []
    gone = timedelta(seconds=settings.SHORTENER_REPLICA_GONE_SECONDS)
    missing = timedelta(seconds=settings.SHORTENER_REPLICA_MISSING_SECONDS)
    live_nodes = {node: (status, seen) for node, (status, seen) in statuses.items()
                  if now - seen <= gone}
    serving = []
    for node, (status, seen) in sorted(live_nodes.items()):
        position = positions_of(status).get(partition) if current else None
        if position is not None and position > offset:
            serving.append(node)
    firsts = (_first_reports(nodes=serving, partition=partition, offset=offset)
              if current else {})
    fine = timedelta(seconds=settings.SHORTENER_PROPAGATION_FINE_SECONDS)
    for node, (status, seen) in sorted(live_nodes.items()):
        serves = node in serving
        first = firsts.get(node)
        at = first[0] if first else None
        rows.append(ReplicaPropagation(
            node=node, ready=status.ready and now - seen <= missing, serves=serves,
            reported_at=at,
            seconds=max(0.0, (at - changed).total_seconds()) if at else None,
            exact=bool(first and first[1] and now - at <= fine)))
    return Propagation(tinyurl=link.tinyurl, state_version=link.state_version,
                       changed_at=changed, partition=partition, offset=offset, replicas=rows)


def samples_prune(*, now: datetime | None = None) -> int:
    """Bound the samples (`manage.py prune`): older than SHORTENER_PROPAGATION_FINE_SECONDS,
    only the last (highest) position of each replica, partition and minute stays (a first
    report read from them is at most a minute late, and marked not exact); older than
    SHORTENER_REPLICA_GONE_SECONDS, only each replica's newest. Returns the rows deleted."""
    now = now or timezone.now()
    fine_before = now - timedelta(seconds=settings.SHORTENER_PROPAGATION_FINE_SECONDS)
    gone_before = now - timedelta(seconds=settings.SHORTENER_REPLICA_GONE_SECONDS)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM links_replicaprogress s WHERE s.reported_at < %s AND EXISTS ("
            "SELECT 1 FROM links_replicaprogress t WHERE t.node = s.node "
            "AND t.partition = s.partition AND t.position > s.position AND ("
            "  s.reported_at < %s OR date_trunc('minute', t.reported_at) = "
            "  date_trunc('minute', s.reported_at)))",
            [fine_before, gone_before])
        return cursor.rowcount
