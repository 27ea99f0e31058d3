"""The master's data: every link ever issued, in PostgreSQL."""

from __future__ import annotations

from django.db import models


class Link(models.Model):
    # Both uniqueness rules are database constraints, not check-then-insert: two concurrent
    # /create calls for one longurl cannot both insert, and a random tinyurl that collides with
    # an existing one is refused by the database itself.
    tinyurl = models.CharField(max_length=7, unique=True)
    longurl = models.TextField()
    # sha256 of the longurl. A longurl may be up to SHORTENER_MAX_URL_LENGTH long; a B-tree
    # index entry may not exceed ~2.7 kB, so uniqueness is enforced on the 32-byte hash.
    longurl_sha256 = models.BinaryField(max_length=32, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    # The outbox mark: NULL until Kafka acknowledged the link's record. Rows still NULL are
    # re-sent by `manage.py republish_links --pending` (which runs continuously with --follow).
    published_at = models.DateTimeField(null=True, blank=True)
    # Set when an admin took the link down: the link's record then says "disabled" and the
    # replicas answer 404 for it. published_at then tracks that record's acknowledgement.
    disabled_at = models.DateTimeField(null=True, blank=True, db_index=True)
    # When the link stops redirecting (replicas answer 410 Gone after it); NULL: never. Published
    # in the link's record; changed only through links.services.link_update.
    expires_at = models.DateTimeField(null=True, blank=True)
    # Bumped by every change of what the replicas must hold (take down, put back, a new target or
    # expiry; links.services.link_update). Every record carries it, and a replica applies a
    # record only if its version is newer than the one it holds. A send marks the link
    # published only if it carried the current version, so a slow send of an older state can
    # never be taken for the newest one; the outbox then sends the newest again.
    state_version = models.PositiveIntegerField(default=1)
    # Sum of this link's ClickCounter rows, kept in the same transaction as they change, so the
    # admin can list and sort by clicks without summing millions of rows.
    clicks = models.BigIntegerField(default=0, db_index=True)

    class Meta:
        indexes = [
            # The outbox relay looks for unpublished rows often; a partial index keeps that
            # lookup tiny however many links there are.
            models.Index(
                fields=["created_at"],
                name="links_link_unpublished",
                condition=models.Q(published_at__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.tinyurl} -> {self.longurl[:80]}"


class ClickCounter(models.Model):
    """The largest count reported by one counter: one link, on one replica, in one incarnation of
    that replica's Redis. max() makes every report idempotent: a duplicate or an out-of-date
    report changes nothing, a lost one is covered by the next."""

    link = models.ForeignKey(Link, on_delete=models.CASCADE, related_name="click_counters")
    node = models.CharField(max_length=100)
    incarnation = models.CharField(max_length=64)
    count = models.BigIntegerField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["link", "node", "incarnation"], name="links_clickcounter_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.link_id} on {self.node}/{self.incarnation}: {self.count}"


class ConsumerPosition(models.Model):
    """Where consume_clicks stands in a partition of the clicks topic, and what it has done.

    Written in the same transaction as the totals it produced: after a crash the position and
    the totals agree, so nothing is skipped and nothing is applied twice."""

    topic = models.CharField(max_length=255)
    partition = models.IntegerField()
    next_offset = models.BigIntegerField()
    applied = models.BigIntegerField(default=0)
    skipped_malformed = models.BigIntegerField(default=0)
    skipped_unknown = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["topic", "partition"], name="links_position_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}] @ {self.next_offset}"


class ClickBucket(models.Model):
    """Clicks of one link on one replica (node label) within one hour (UTC), for the charts.

    Filled by consume_clicks in the same transaction as the counters (links/clicks.py): when a
    counter rises from a to b, the b - a clicks land in the hour of the report that raised it,
    so a duplicate or a replayed report, which raises nothing, adds nothing. A row exists only
    for an hour in which the link was clicked on that replica. Days are sums of hours.
    """

    link = models.ForeignKey(Link, on_delete=models.CASCADE, related_name="click_buckets")
    node = models.CharField(max_length=100)
    hour = models.DateTimeField()  # the hour's start, UTC
    clicks = models.BigIntegerField()

    class Meta:
        constraints = [
            # (link, hour, node): the upsert's conflict target, and the index behind every
            # per-link read, which asks for one link over a range of hours.
            models.UniqueConstraint(fields=["link", "hour", "node"],
                                    name="links_clickbucket_unique"),
        ]
        indexes = [
            # The replicas page sums the last hour of every node: a range over all links.
            models.Index(fields=["hour"], name="links_clickbucket_hour"),
        ]

    def __str__(self) -> str:
        return f"{self.link_id} on {self.node} at {self.hour:%Y-%m-%d %H}:00: {self.clicks}"


class Replica(models.Model):
    """No table: the admin's entry for the replicas page (links/admin.py, ReplicaAdmin).

    The replicas' state is read from the <user>-replicas topic when the page is shown
    (links/replicas.py); this model only gives the page its place, name and permission.
    """

    class Meta:
        managed = False
        verbose_name = "replica"
        verbose_name_plural = "replicas"
        default_permissions = ("view",)
