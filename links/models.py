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
    # Set when an admin took the link down: the replicas then remove it (a tombstone on the
    # links topic) and answer 404. published_at then tracks the tombstone's acknowledgement.
    disabled_at = models.DateTimeField(null=True, blank=True, db_index=True)
    # Bumped by every change of what the replicas must hold (take down, put back). A send marks
    # the link published only if it carried the current version, so a slow send of an older
    # state can never be taken for the newest one; the outbox then sends the newest again.
    state_version = models.PositiveIntegerField(default=1)
    # Sum of this link's ClickCounter rows, kept in the same transaction as they change, so the
    # admin can list and sort by clicks without summing millions of rows. Not indexed: with an
    # index, every change of a total rewrites an entry in each of the table's indexes (no HOT
    # update), which was half of consume_clicks' PostgreSQL time (docs/performance.md); sorting
    # the admin's list by clicks scans the table instead.
    clicks = models.BigIntegerField(default=0)

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
    """The largest count reported by one counter: one link in one incarnation (one life) of one
    replica's Redis. The incarnation alone is the counter's identity: a replica whose node id
    changes, or two hosts sharing one Redis, report the same counter, and max() counts its clicks
    once. max() makes every report idempotent: a duplicate or an out-of-date report changes
    nothing, a lost one is covered by the next."""

    # No index of its own: the unique (link, incarnation) index serves lookups by link, and one
    # index fewer is one insert fewer per new counter in consume_clicks' hot path.
    link = models.ForeignKey(Link, on_delete=models.CASCADE, related_name="click_counters",
                             db_index=False)
    incarnation = models.CharField(max_length=64)
    # A label for the admin, not part of the identity: the node that last raised the count.
    node = models.CharField(max_length=100)
    count = models.BigIntegerField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["link", "incarnation"], name="links_clickcounter_link_incarnation"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.link_id} in {self.incarnation} (last from {self.node}): {self.count}"


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
