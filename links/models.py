"""The master's data: every link ever issued, in PostgreSQL."""

from __future__ import annotations

from django.contrib.postgres.indexes import BrinIndex
from django.db import models


class Link(models.Model):
    # Both uniqueness rules are database constraints, not check-then-insert: two concurrent
    # /create calls for one longurl cannot both insert, and a random tinyurl that collides with
    # an existing one (or an alias asked for twice at once) is refused by the database itself.
    # A generated tinyurl is 7 characters of [a-zA-Z0-9]; an alias (below) 3-64 of
    # [A-Za-z0-9_-] (topics.records.TINYURL_RE, the CHECK in Meta). Case-sensitive, as the
    # replicas' paths and Redis keys are: "Promo" and "promo" are two aliases.
    tinyurl = models.CharField(max_length=64, unique=True)
    longurl = models.TextField()
    # sha256 of the longurl. A longurl may be up to SHORTENER_MAX_URL_LENGTH long; a B-tree
    # index entry may not exceed ~2.7 kB, so uniqueness is enforced on the 32-byte hash, for the
    # generated links only (Meta: "same longurl, same tinyurl" is the rule of a create without
    # an alias); a longurl may also have any number of aliases.
    longurl_sha256 = models.BinaryField(max_length=32, editable=False)
    # True: the tinyurl is an alias its creator chose (links/tinyurls.py), not generated. Never
    # changes. db_default: the raw INSERTs (links/services.py, imports) need not name it.
    alias = models.BooleanField(default=False, db_default=False, editable=False)
    # Indexed by a BRIN index (Meta), not a B-tree: see there.
    created_at = models.DateTimeField(auto_now_add=True)
    # The outbox mark: NULL until Kafka acknowledged the link's record. Rows still NULL are
    # re-sent by `manage.py republish_links --pending` (which runs continuously with --follow),
    # which finds them through PendingLink: a row of it is made by PostgreSQL itself whenever
    # a link is stored with, or set to, a NULL published_at (migration 0014's triggers).
    published_at = models.DateTimeField(null=True, blank=True)
    # Where Kafka put the acknowledged record of the current state (set with published_at, from
    # the producer's acknowledgement). The links audit (links/audit.py) compares an older
    # record's offset with it: a record before it is followed in the topic by the current
    # state (a change that raced the audit, nothing to do); one after it is a stale copy that
    # landed later (send the current state again). NULL: not known (published before these
    # columns existed), so the audit sends the current state again, as it always did.
    published_partition = models.IntegerField(null=True, blank=True, editable=False)
    published_offset = models.BigIntegerField(null=True, blank=True, editable=False)
    # When the current state was made: set by every change (links.services.link_update); NULL
    # means never changed, the state is the create's (created_at). Not set at create: nothing
    # more to write per new link. The propagation shown per replica is timed from it
    # (links/propagation.py).
    state_changed_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Set when an admin took the link down: the link's record then says "disabled" and the
    # replicas answer 404 for it. published_at then tracks that record's acknowledgement.
    disabled_at = models.DateTimeField(null=True, blank=True)
    # When the link stops redirecting (replicas answer 410 Gone after it); NULL: never. Published
    # in the link's record; changed only through links.services.link_update.
    expires_at = models.DateTimeField(null=True, blank=True)
    # Bumped by every change of what the replicas must hold (take down, put back, a new target or
    # expiry; links.services.link_update). Every record carries it, and a replica applies a
    # record only if its version is newer than the one it holds. A send marks the link
    # published only if it carried the current version, so a slow send of an older state can
    # never be taken for the newest one; the outbox then sends the newest again.
    # 64-bit: a record may carry any version up to messages.VERSION_MAX (2**53 - 1), and the
    # links audit must always be able to raise this one above what the topic holds.
    state_version = models.PositiveBigIntegerField(default=1)
    # Sum of this link's ClickCounter rows and FoldedClicks rows (counters of ended incarnations,
    # links/pruning.py), kept in the same transaction as they change, so the
    # admin can list and sort by clicks without summing millions of rows. Not indexed: with an
    # index, every change of a total rewrites an entry in each of the table's indexes (no HOT
    # update), which was half of consume_clicks' PostgreSQL time (docs/performance.md); sorting
    # the admin's list by clicks scans the table instead.
    clicks = models.BigIntegerField(default=0)
    # How many of `clicks` were a bot's (a crawler, a link-preview bot, a mail scanner: the
    # replica's redirects/bots.py); human clicks are clicks - bot_clicks. The sum of the
    # counters' and folded rows' bots, kept with `clicks` in the same statement. Not indexed,
    # for the same reason.
    bot_clicks = models.BigIntegerField(default=0)
    # A password-protected link: the salted scrypt hash of its password (topics/passwords.py),
    # published in its record so that every replica checks the password itself. Never the
    # password. NULL: not protected. Set and removed through links.services only (link_update's
    # `password`), so every change bumps state_version and reaches the replicas.
    password_hash = models.CharField(max_length=220, null=True, blank=True, editable=False)

    class Meta:
        constraints = [
            # One public generated link per longurl ("same longurl, same tinyurl"), and one
            # generated link per longurl and password (links/passwords.py: a protected link is
            # found again by its hash); aliases are outside both. The predicates' columns change
            # only with a link's password, so the published mark stays a HOT update (see below).
            models.UniqueConstraint(
                fields=["longurl_sha256"],
                condition=models.Q(alias=False, password_hash__isnull=True),
                name="links_link_longurl_public"),
            models.UniqueConstraint(
                fields=["longurl_sha256", "password_hash"],
                condition=models.Q(alias=False, password_hash__isnull=False),
                name="links_link_longurl_protected"),
            # Whatever writes a row (a raw INSERT, an import, the shell), the tinyurl has a shape
            # every replica serves (TINYURL_RE): at least 3 characters, none outside
            # [A-Za-z0-9_-]; at most 64 is the column's. Not TINYURL_RE itself: PostgreSQL's
            # regex engine runs "{3,64}" at about 5 µs a row, these two tests at about 1 (200,000
            # inserts into a temporary table, with and without, alternated). Reserved names are
            # refused by links.tinyurls and the replicas, not here: the list grows with the
            # routes (topics.records.RESERVED_NAMES).
            models.CheckConstraint(condition=models.Q(tinyurl__regex=r"^...")
                                   & ~models.Q(tinyurl__regex=r"[^A-Za-z0-9_-]"),
                                   name="links_link_tinyurl_shape"),
        ]
        # Every index of this table costs each new link an entry at its insert, so it keeps only
        # those that a reader needs at any size (bench/bulk.py; migration 0013: the B-trees on
        # created_at and disabled_at and tinyurl's LIKE index went, and PostgreSQL's time for a
        # 10,000-link insert and mark went down by about 40 %). No index names published_at,
        # published_partition or published_offset, not even in a predicate (PostgreSQL counts a
        # partial index's predicate columns as indexed): the published mark then changes no
        # indexed column and is a HOT update, written beside the old row version in its page
        # (the table's fillfactor leaves the room: migration 0014), with no new index entry.
        # The outbox relay finds the unpublished links through PendingLink instead.
        indexes = [
            # The admin's date filters and date hierarchy ask for ranges of created_at. Rows are
            # appended in the order of their created_at, so a BRIN index (the least and the
            # greatest created_at of each 128 pages) finds a range in a few pages' worth of
            # summaries, and costs an insert almost nothing. It cannot give rows in order: the
            # admin's list is ordered by id, which is the same order (links/admin.py).
            BrinIndex(fields=["created_at"], name="links_link_created_brin"),
            # The admin's "taken down" filter; the links still enabled, nearly all of them, are
            # read by scans anyway (links_to_hosts), so only the taken-down ones are indexed.
            models.Index(
                fields=["disabled_at"],
                name="links_link_disabled",
                condition=models.Q(disabled_at__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.tinyurl} -> {self.longurl[:80]}"


class PendingLink(models.Model):
    """A link that Kafka may not have acknowledged yet: the outbox relay's worklist
    (selectors.links_unpublished), kept small, so that the relay finds every unpublished link
    quickly however many links there are.

    Written by PostgreSQL, not by the application: triggers on links_link (migration 0014) add
    the link's row whenever a link is inserted with a NULL published_at, or its published_at is
    set to NULL (link_update, the links audit, anything else, raw SQL included), so no writer
    can leave an unpublished link out of the relay's sight. The published mark deletes the rows
    of the links it marks, in the same statement (links.publishing._links_mark_published).
    A row whose link is published meanwhile by another path, or deleted, is harmless: the
    relay reads links through this table and keeps only those still unpublished, and drops
    such rows as it goes.

    This replaces a partial index on links_link (published_at IS NULL): with published_at in an
    index predicate, every published mark was a non-HOT update writing a new entry in each of
    links_link's indexes, about two thirds of PostgreSQL's work for a new link
    (docs/performance.md). A row here costs a heap row and one index entry at the insert, and
    its deletion at the mark."""

    # No foreign key: its check would cost every new link a probe of links_link at the insert,
    # and deleting a link by hand must not depend on this table (the relay ignores orphans).
    link = models.OneToOneField(Link, on_delete=models.DO_NOTHING, primary_key=True,
                                db_constraint=False, related_name="+")

    def __str__(self) -> str:
        return f"link {self.link_id} (pending)"


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
    count = models.BigIntegerField()  # every click, a bot's too
    # How many of `count` were a bot's: kept by max() like the count (links/totals.py).
    bots = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["link", "incarnation"], name="links_clickcounter_link_incarnation"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.link_id} in {self.incarnation} (last from {self.node}): {self.count}"


class EndedIncarnation(models.Model):
    """An incarnation (one life of one replica's Redis) whose counters were folded into
    FoldedClicks and whose clicks-topic keys were tombstoned (links/pruning.py).

    One row per incarnation, whatever the number of links it counted: consume_clicks refuses
    every report of an incarnation listed here (a replay from offset 0, a reporter's retry),
    because the per-link counts that max() would compare it with are gone. `folded_at` is NULL
    while the fold is under way (the incarnation is already refused then; a crashed prune
    finishes it on its next run)."""

    incarnation = models.CharField(max_length=64, primary_key=True)
    ended_at = models.DateTimeField(auto_now_add=True)
    folded_at = models.DateTimeField(null=True, blank=True)
    counters = models.BigIntegerField(default=0)  # ClickCounter rows folded
    clicks = models.BigIntegerField(default=0)  # their clicks, now in FoldedClicks

    def __str__(self) -> str:
        return f"{self.incarnation}: {self.counters} counters, {self.clicks} clicks folded"


class FoldedClicks(models.Model):
    """The clicks of one link counted in ended incarnations, under the node label their counters
    had (ClickCounter.node): what stays of those counters once they are folded, so that the
    link's total and its per-replica breakdown are unchanged. At most one row per (link, node),
    however many Redis lives the replicas go through."""

    link = models.ForeignKey(Link, on_delete=models.CASCADE, related_name="folded_clicks",
                             db_index=False)
    node = models.CharField(max_length=100)
    clicks = models.BigIntegerField()
    bots = models.BigIntegerField(default=0)  # how many of `clicks` were a bot's

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["link", "node"], name="links_foldedclicks_link_node"),
        ]

    def __str__(self) -> str:
        return f"{self.link_id} on {self.node}: {self.clicks} (ended incarnations)"


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
    # The id Kafka gave the topic when it was created (KIP-516), as of the batch that stored
    # this position; "" if unknown. A topic deleted and created again has another id, and the
    # position then means nothing in it (topics/loop.py).
    topic_id = models.CharField(max_length=36, blank=True, default="")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["topic", "partition"], name="links_position_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}] @ {self.next_offset}"


# --- /create's protection (links/protection.py) ----------------------------------------------


class BlockedHost(models.Model):
    """A host whose links /create refuses, with all its subdomains: blocking "evil.example"
    also blocks "www.evil.example". Stored in the form used for comparisons
    (longurls.host_normalize: lower case, A-labels, no final dot, no port), so every spelling of
    it matches one row; /create looks up the host and each domain above it."""

    host = models.CharField(max_length=253, unique=True)
    reason = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "blocked host"
        ordering = ("host",)

    def __str__(self) -> str:
        return self.host


class ApiKey(models.Model):
    """A key for PUT /create (`Authorization: Bearer <token>`). Only the token's sha256 is kept:
    the token is 256 random bits, so a fast hash is enough (nothing to guess from), and a
    database dump gives no usable key. The token is shown once, when the key is made."""

    name = models.CharField(max_length=100, help_text="who or what uses this key")
    # The first characters of the token, to recognise a key in the admin and in logs.
    prefix = models.CharField(max_length=12, editable=False)
    digest = models.BinaryField(max_length=32, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class RateLimitCounter(models.Model):
    """One fixed-window counter of the rate limiter (links/ratelimit.py), keyed by client and
    limit. The table is UNLOGGED (migration 0006): its writes skip the write-ahead log, so a
    /create pays no disk flush for it; a PostgreSQL crash empties it, which only resets limits."""

    key = models.CharField(max_length=255, primary_key=True)
    count = models.BigIntegerField()
    expires_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.key}: {self.count} until {self.expires_at}"


class ClickBucket(models.Model):
    """Clicks of one link on one replica (node label) within one hour (UTC), for the charts.

    Filled by consume_clicks in the same transaction as the counters (links/totals.py): when a
    counter rises from a to b, the b - a clicks land in the hour of the report that raised it,
    so a duplicate or a replayed report, which raises nothing, adds nothing. A row exists only
    for an hour in which the link was clicked on that replica. Days are sums of hours.

    Roll-up (links/buckets.py, buckets_roll_up): the rows of a day that lies wholly before the
    hourly chart's window are summed into one row at that day's 00:00 (UTC), so an old day costs
    one row per (link, node) instead of up to 24. A day's sum is the same before and after, and
    every reader of rows that old sums them per day (the daily chart, the CSV).
    """

    # No index of its own: the unique (link, hour, node) index serves every lookup by link (the
    # charts, a link's deletion), and one index fewer is one insert fewer per new bucket row in
    # consume_clicks' apply: 3-6 µs of PostgreSQL CPU a new counter with a million links
    # (docs/performance.md).
    link = models.ForeignKey(Link, on_delete=models.CASCADE, related_name="click_buckets",
                             db_index=False)
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


class ReplicaProgress(models.Model):
    """A sample of one replica's applied position in one partition of the links topic, with
    the time the master first saw it reported (the broker's time of the status record that
    first carried it): the master learns "replica R reported having the record at offset O" as
    the earliest sample of R on that partition whose position is past O (links/propagation.py).

    Folded from the replicas topic by the master (links/propagation_wait.py): one row per new
    position a replica reports, not per status (a replica that applies nothing writes nothing).
    Bounded by links.propagation.samples_prune (run by `manage.py prune`): samples younger than
    SHORTENER_PROPAGATION_FINE_SECONDS are all kept, older ones thinned to the last of each
    minute (a time read from them is then late by under a minute), and none is kept past
    SHORTENER_REPLICA_GONE_SECONDS except each replica's newest. At most one status every
    SHORTENER_STATUS_MIN_SECONDS a replica, that is at most 36,000 + 10,080 rows a replica at
    the defaults, whatever the number of links.
    """

    node = models.CharField(max_length=100)
    partition = models.IntegerField()
    position = models.BigIntegerField()  # the next offset the replica will apply
    reported_at = models.DateTimeField()

    class Meta:
        constraints = [
            # The fold's conflict target (a status folded twice, or by two processes, adds
            # nothing: the first, earliest, time of a position stays) and the lookup's index:
            # one node, one partition, the least position past an offset.
            models.UniqueConstraint(fields=["node", "partition", "position"],
                                    name="links_replicaprogress_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.node} [{self.partition}] @ {self.position} at {self.reported_at}"
