"""Reads of the master's links."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from django.db import connection
from django.db.models import (
    BigIntegerField,
    F,
    Func,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
    TextField,
    Value,
)
from django.db.models.functions import Coalesce, Lower, Trunc
from django.utils import timezone as django_timezone

from links.models import ClickBucket, ClickCounter, FoldedClicks, Link, PendingLink
from topics import longurls


def longurl_digest(longurl: str) -> bytes:
    return hashlib.sha256(longurl.encode()).digest()


def link_get_by_longurl(*, longurl: str) -> Link | None:
    """The longurl's public generated link (the one a create without an alias or a password
    answers): not an alias, not a protected link (links/passwords.py)."""
    return Link.objects.filter(longurl_sha256=longurl_digest(longurl), alias=False,
                               password_hash__isnull=True).first()


def links_by_digest(digests: Iterable[bytes]) -> dict[bytes, Link]:
    """The public generated links of these longurl digests that exist, by digest (aliases and
    protected links are not "the" link of a longurl: links/tinyurls.py, links/passwords.py). The
    condition is the predicate of the unique index the lookup probes (links_link_longurl_public).

    One array parameter (= ANY), not an IN list: Django compiles an IN of 10,000 values
    parameter by parameter (a tenth of a bulk create's time, profiled), PostgreSQL plans it the
    same way. The digests travel as one array literal of hex texts (psycopg2 adapts a list of
    bytes one by one), decoded once into the array the unique index is probed with."""
    return {bytes(link.longurl_sha256): link for link in Link.objects.raw(
        "SELECT * FROM links_link WHERE NOT alias AND password_hash IS NULL"
        " AND longurl_sha256 = ANY(ARRAY("
        "SELECT decode(h, 'hex') FROM unnest(%s::text[]) AS h))",
        ["{" + ",".join(digest.hex() for digest in digests) + "}"])}


def links_protected_by_hash(keys: Iterable[tuple[bytes, str]]) -> dict[tuple[bytes, str], Link]:
    """The protected generated links of these (longurl digest, password hash) pairs that exist,
    by pair (links/passwords.py: a generated link's hash is the same for the same longurl and
    password). Probes the unique index links_link_longurl_protected; protected creates are few,
    so the pairs go as plain parameters."""
    keys = list(keys)
    if not keys:
        return {}
    query = Q()
    for digest, hashed in keys:
        query |= Q(longurl_sha256=digest, password_hash=hashed)
    return {(bytes(link.longurl_sha256), link.password_hash): link
            for link in Link.objects.filter(query, alias=False)}


def links_taken_down_by_digest(digests: Iterable[bytes]) -> dict[bytes, Link]:
    """{longurl_sha256: a taken-down link of that longurl} for the digests that have one (a
    generated link or an alias). Reads the partial index of taken-down links, which are few."""
    return {bytes(link.longurl_sha256): link for link in Link.objects.filter(
        disabled_at__isnull=False, longurl_sha256__in=list(digests)).order_by("id")}


def links_unpublished(*, created_before: datetime | None = None) -> Iterator[Link]:
    """Every link Kafka has not acknowledged (published_at NULL), in id order, through the
    outbox's worklist (PendingLink: as small as the number of such links, however many links
    there are). Worklist rows of links published since by another path, or deleted, are
    dropped on the way."""
    with connection.cursor() as cursor:
        # Worklist rows no mark will delete: their link was published by another writer (raw
        # SQL, a test), or deleted (ids are never reused). The link's row is locked before its
        # worklist row goes: a link_update clearing the mark right now holds that lock, and its
        # committed NULL is what this statement then sees (the row is skipped), so no
        # unpublished link ever loses its worklist row. In id order, as the mark locks them
        # (links.publishing._links_mark_published), so the two cannot deadlock.
        cursor.execute(
            "DELETE FROM links_pendinglink WHERE link_id IN ("
            "SELECT l.id FROM links_link AS l JOIN links_pendinglink AS p ON p.link_id = l.id "
            "WHERE l.published_at IS NOT NULL ORDER BY l.id FOR NO KEY UPDATE OF l); "
            "DELETE FROM links_pendinglink AS p WHERE NOT EXISTS ("
            "SELECT FROM links_link AS l WHERE l.id = p.link_id)")
    qs = Link.objects.filter(pk__in=PendingLink.objects.values("link_id"),
                             published_at__isnull=True).order_by("id")
    if created_before is not None:
        qs = qs.filter(created_at__lt=created_before)
    return qs.iterator(chunk_size=2000)


def links_all() -> Iterator[Link]:
    return Link.objects.order_by("id").iterator(chunk_size=2000)


# --- clicks over time (links_clickbucket; see ClickBucket) -----------------------------------

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
# The admin link page's charts: per hour over the last 7 days (the current hour included), per
# day over the last 90. Hourly rows older than the hourly chart's window are rolled into daily
# rows (links/buckets.py, buckets_roll_up_before).
CHART_HOURS = 7 * 24
CHART_DAYS = 90


def hour_start(when: datetime) -> datetime:
    """The start of `when`'s hour, in UTC (the buckets' unit)."""
    return when.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


def clicks_recent_since(*, now: datetime | None = None) -> datetime:
    """Start of the "last 24 hours" window: the current hour and the 23 before it (buckets are
    whole hours, so the window is between 23 and 24 hours long)."""
    return hour_start(now or django_timezone.now()) - 23 * HOUR


def links_with_recent_clicks(queryset: QuerySet[Link], *, since: datetime) -> QuerySet[Link]:
    """`queryset` annotated with `clicks_recent`: clicks since `since` (an hour start).

    A correlated subquery per link: an equality on link and a range on hour, the two leading
    columns of the buckets' (link, hour, node) unique index, so each is a short index range of
    that link's recent rows. A page of the list evaluates it for the links shown; sorting by
    it evaluates it for every link (one index probe each).
    """
    recent = (ClickBucket.objects.filter(link=OuterRef("pk"), hour__gte=since)
              .order_by().values("link").annotate(total=Sum("clicks")).values("total"))
    return queryset.annotate(
        clicks_recent=Coalesce(Subquery(recent, output_field=BigIntegerField()), 0))


@dataclass(frozen=True)
class ClickSeries:
    """Clicks per time slot and replica, for a chart or a CSV.

    slots: the slots' starts (UTC), oldest first, every slot of the range (empty ones too);
    by_node: node label -> clicks per slot, aligned with `slots`.
    """

    slots: list[datetime]
    by_node: dict[str, list[int]]

    def as_chart(self, *, label_format: str) -> dict:
        return {"labels": [s.strftime(label_format) for s in self.slots],
                "series": [{"node": n, "clicks": c} for n, c in self.by_node.items()]}


def link_clicks_series(*, link_id: int, unit: str, slots: int,
                       now: datetime | None = None) -> ClickSeries:
    """The link's clicks per `unit` ("hour" or "day", UTC) over the last `slots` of them,
    the current one included, split by replica. Days are sums of the hourly buckets."""
    if unit not in ("hour", "day"):
        raise ValueError(f"unit must be 'hour' or 'day', not {unit!r}")
    step = HOUR if unit == "hour" else DAY
    last = hour_start(now or django_timezone.now())
    if unit == "day":
        last = last.replace(hour=0)
    first = last - (slots - 1) * step
    rows = (ClickBucket.objects.filter(link_id=link_id, hour__gte=first)
            .annotate(slot=Trunc("hour", unit, tzinfo=timezone.utc))
            .values("slot", "node").annotate(total=Sum("clicks")).order_by("node", "slot"))
    starts = [first + i * step for i in range(slots)]
    index = {s: i for i, s in enumerate(starts)}
    by_node: dict[str, list[int]] = {}
    for row in rows:
        i = index.get(row["slot"])
        if i is not None:
            by_node.setdefault(row["node"], [0] * slots)[i] = row["total"]
    return ClickSeries(slots=starts, by_node=by_node)


def link_clicks_daily_all(*, link_id: int) -> ClickSeries:
    """Every day with clicks of the link (UTC), oldest first, split by replica (the CSV)."""
    rows = (ClickBucket.objects.filter(link_id=link_id)
            .annotate(slot=Trunc("hour", "day", tzinfo=timezone.utc))
            .values("slot", "node").annotate(total=Sum("clicks")).order_by("slot", "node"))
    days: list[datetime] = []
    cells: dict[tuple[datetime, str], int] = {}
    for row in rows:
        if not days or days[-1] != row["slot"]:
            days.append(row["slot"])
        cells[(row["slot"], row["node"])] = row["total"]
    nodes = sorted({n for _, n in cells})
    return ClickSeries(slots=days, by_node={n: [cells.get((d, n), 0) for d in days]
                                            for n in nodes})


def clicks_by_node_since(*, since: datetime) -> dict[str, int]:
    """Clicks charted since `since` (an hour start), per node label, over all links."""
    rows = (ClickBucket.objects.filter(hour__gte=since).order_by().values("node")
            .annotate(total=Sum("clicks")))
    return {r["node"]: r["total"] for r in rows}


def link_clicks_by_node(*, link_id: int) -> dict[str, int]:
    """The link's clicks per node label (sorted by node): its counters (ClickCounter, each under
    the node that last raised it) plus what was folded of ended incarnations (FoldedClicks,
    under the same labels). The values add up to Link.clicks."""
    totals: dict[str, int] = {}
    for model, field in ((ClickCounter, "count"), (FoldedClicks, "clicks")):
        rows = (model.objects.filter(link_id=link_id).order_by().values("node")
                .annotate(total=Sum(field)))
        for row in rows:
            totals[row["node"]] = totals.get(row["node"], 0) + row["total"]
    return dict(sorted(totals.items()))


@dataclass(frozen=True)
class ClickKinds:
    """Clicks by kind: `total` every click, `bot` those whose User-Agent was a crawler's, a
    link-preview bot's or a mail scanner's (the replicas' redirects/bots.py), `human` the rest.
    Clicks counted before the replicas told bots apart are human ones."""

    total: int
    human: int
    bot: int

    def as_dict(self) -> dict[str, int]:
        return {"total": self.total, "human": self.human, "bot": self.bot}


@dataclass(frozen=True)
class LinkClicks:
    """A link's clicks by kind (ClickKinds), in all and per node label (sorted by node; the
    nodes' values add up to the link's)."""

    clicks: ClickKinds
    by_node: dict[str, ClickKinds]

    def as_dict(self) -> dict:
        """The API's shape: {"total", "human", "bot", "by_replica": {node: {"total", "human",
        "bot"}}}."""
        return {**self.clicks.as_dict(),
                "by_replica": {n: k.as_dict() for n, k in self.by_node.items()}}


def link_clicks_get(*, link: Link) -> LinkClicks:
    """The link's human and bot clicks, in all (from the link's own totals, kept by
    consume_clicks) and per node label (its counters plus what was folded of ended incarnations,
    as link_clicks_by_node): what the API shows for a link. Two small queries, on the link's
    rows of the counters' and folded clicks' (link, ...) unique indexes."""
    sums: dict[str, list[int]] = {}
    for model, field in ((ClickCounter, "count"), (FoldedClicks, "clicks")):
        rows = (model.objects.filter(link_id=link.pk).order_by().values("node")
                .annotate(total=Sum(field), bots=Sum("bots")))
        for row in rows:
            held = sums.setdefault(row["node"], [0, 0])
            held[0] += row["total"]
            held[1] += row["bots"]
    return LinkClicks(
        clicks=ClickKinds(total=link.clicks, human=link.clicks - link.bot_clicks,
                          bot=link.bot_clicks),
        by_node={n: ClickKinds(total=t, human=t - b, bot=b) for n, (t, b) in sorted(sums.items())})


def _legacy_host(longurl: str) -> str | None:
    """The comparable host of a stored longurl, also for links stored before longurls had one
    definition (a Unicode host, say); None if there is none to find."""
    try:
        return longurls.host_of(longurl)
    except longurls.LongurlError:
        pass
    try:
        return longurls.host_normalize(longurl)
    except (longurls.LongurlError, ValueError):
        return None


def links_to_hosts(*, hosts: Iterable[str]) -> Iterator[Link]:
    """Enabled links whose host is one of `hosts` (comparable form) or under one of them.

    Links keep no host column, so this reads every link whose text contains one of the hosts
    (in A-labels or Unicode) and checks each one's host exactly: a scan of the links table, for
    an operator's action, not for requests.
    """
    hosts = list(hosts)
    if not hosts:
        return
    needles = Q()
    for host in hosts:
        needles |= Q(longurl__icontains=host)
        display = longurls.host_display(host)
        if display != host:
            needles |= Q(longurl__icontains=display)
    wanted = set(hosts)
    for link in Link.objects.filter(needles, disabled_at__isnull=True).iterator(chunk_size=2000):
        host = _legacy_host(link.longurl)
        if host is not None and wanted.intersection(longurls.host_suffixes(host)):
            yield link


# --- the JSON API's reads (links/api/) ---------------------------------------------------------

LINK_STATES = ("active", "disabled", "expired")
# The host of a stored longurl, as PostgreSQL's substring() finds it: after the scheme's "://"
# (a stored longurl has no user info: topics/longurls.py refuses it), up to a port, path, query
# or fragment; an IPv6 literal whole, brackets included.
_HOST_PATTERN = r"^[A-Za-z][A-Za-z0-9+.-]*://(\[[^]]*\]|[^/:?#]*)"


def link_state(link: Link, *, now: datetime) -> str:
    """active (replicas redirect), disabled (taken down: 404; whatever its expiry) or expired
    (past expires_at: 410)."""
    if link.disabled_at is not None:
        return "disabled"
    if link.expires_at is not None and link.expires_at <= now:
        return "expired"
    return "active"


def links_page(*, before_id: int | None = None, limit: int, state: str | None = None,
               created_after: datetime | None = None, created_before: datetime | None = None,
               host: str | None = None, now: datetime | None = None) -> list[Link]:
    """Up to `limit` links, newest first (by id, the order they are created in), with ids below
    `before_id` (the cursor: links created meanwhile have larger ids, so paging is stable under
    inserts), filtered by state (LINK_STATES), created_at (after <= created < before) and target
    host (comparable form, longurls.host_normalize; case-insensitive, as hosts are). Each page
    walks the primary key backwards; a filter that matches few links reads more rows for a page,
    as the admin's search does."""
    now = now or django_timezone.now()
    qs = Link.objects.order_by("-id")
    if before_id is not None:
        qs = qs.filter(id__lt=before_id)
    if state == "disabled":
        qs = qs.filter(disabled_at__isnull=False)
    elif state == "expired":
        qs = qs.filter(disabled_at__isnull=True, expires_at__lte=now)
    elif state == "active":
        qs = qs.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now), disabled_at__isnull=True)
    elif state is not None:
        raise ValueError(f"state must be one of {LINK_STATES}, not {state!r}")
    if created_after is not None:
        qs = qs.filter(created_at__gte=created_after)
    if created_before is not None:
        qs = qs.filter(created_at__lt=created_before)
    if host is not None:
        # A stored host keeps the case it was sent in, and may end with the root's dot.
        qs = qs.annotate(target_host=Lower(Func(F("longurl"), Value(_HOST_PATTERN),
                                                function="substring", output_field=TextField()))
                         ).filter(target_host__in=[host, host + "."])
    return list(qs[:limit])


def link_get_by_tinyurl(*, tinyurl: str) -> Link | None:
    return Link.objects.filter(tinyurl=tinyurl).first()
