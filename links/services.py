"""Writes of the master: creating links and changing their state; each change is then published
to the links topic after its commit (links/publishing.py)."""

from __future__ import annotations

import enum
import logging
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from django.core.exceptions import ValidationError
from django.db import DEFAULT_DB_ALIAS, connection, transaction
from django.db.models import signals
from django.db.models.base import ModelState
from django.utils import timezone

from links import publishing, selectors, validation
from links.models import BlockedHost, Link
from links.publishing import LinkPublishError, link_publish
from topics.links import VERSION_MAX
from topics.records import RESERVED_TINYURLS, TINYURL_ALPHABET, TINYURL_LENGTH

logger = logging.getLogger(__name__)

# 62^7 = 3.5e12 codes: at a billion links a random code collides with probability 3e-4, so a
# handful of attempts always finds a free one.
TINYURL_ATTEMPTS = 8
# links_create_many inserts before it reads from this many longurls on; /create's batches (at
# most 256, links/batching.py) read first, so an existing longurl there writes nothing.
INSERT_FIRST_MIN = 1000


def tinyurl_generate() -> str:
    # Random, from the OS's CSPRNG: a code says nothing about the ones issued before it.
    while True:
        code = "".join(secrets.choice(TINYURL_ALPHABET) for _ in range(TINYURL_LENGTH))
        if code not in RESERVED_TINYURLS:
            return code


# A random byte below 248 (4 x 62) taken modulo 62 is uniform over the alphabet; the 8 bytes
# above are dropped (rejection sampling, as secrets.choice does), so each character of a code
# is as uniform and unpredictable as tinyurl_generate's.
_BYTE_TO_CHAR = bytes(TINYURL_ALPHABET[b % len(TINYURL_ALPHABET)].encode()[0] for b in range(256))
_BYTES_DROPPED = bytes(range(len(TINYURL_ALPHABET) * (256 // len(TINYURL_ALPHABET)), 256))


def tinyurls_generate(n: int) -> list[str]:
    """`n` codes as tinyurl_generate makes them (the OS's CSPRNG, every character uniform), in
    one pass over random bytes: a batch of 10,000 in 1.3 ms instead of 79."""
    codes: list[str] = []
    while len(codes) < n:
        # 3 % of the bytes are dropped on average: ask for a little more than needed.
        raw = secrets.token_bytes((n - len(codes)) * TINYURL_LENGTH * 17 // 16 + 16)
        chars = raw.translate(_BYTE_TO_CHAR, _BYTES_DROPPED).decode("ascii")
        for start in range(0, len(chars) - TINYURL_LENGTH + 1, TINYURL_LENGTH):
            code = chars[start:start + TINYURL_LENGTH]
            if code not in RESERVED_TINYURLS:
                codes.append(code)
                if len(codes) == n:
                    break
    return codes


@dataclass(frozen=True)
class LinkCreated:
    link: Link
    created: bool


@dataclass(frozen=True)
class CreateItem:
    """One link asked for: the longurl as the client sent it (any JSON value: it is checked by
    links.validation.longurl_check) and an optional expiry (an aware datetime, checked by
    expires_at_parse) for a link created now."""

    longurl: object
    expires_at: datetime | None = None


# What links_create_many answers for one item: the link, or why not.
CreateOutcome = LinkCreated | Exception


def link_create(*, longurl: str, expires_at: datetime | None = None) -> LinkCreated:
    """The link for `longurl`, created if new, and published to the links topic.

    `longurl` is checked first (links.validation.longurl_check, the stored form is what is kept
    and compared): LongurlRefused if it is not acceptable, and nothing is written.

    Returns only once Kafka has acknowledged the link (now or earlier), so a tinyurl handed out
    always reaches the replicas. Raises LinkPublishError if Kafka does not answer in time: the
    link is then committed but unpublished, the outbox re-sends it, and a retried /create for
    the same longurl returns the same tinyurl.

    expires_at (aware datetime, checked by expires_at_parse) applies to a link created now. An
    existing link is returned as it is, expiry included: its tinyurl is shared by everyone who
    shortened that longurl, so one caller must not end, or prolong, the others' link. Raises
    LinkDisabled if the existing link was taken down, LinkExpired if it has expired.
    Raises django.db.DatabaseError if PostgreSQL fails (nothing committed, or a link committed
    and then found again by a retry: the call is idempotent).
    """
    outcome = links_create_many([CreateItem(longurl=longurl, expires_at=expires_at)])[0]
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def links_create_many(items: Sequence[CreateItem]) -> list[CreateOutcome]:
    """Create (or find) the links of many longurls at once, sharing every cost: one read of the
    existing links, one INSERT for the new ones, one commit, one Kafka batch and one wait for
    its acknowledgements (acks=all), one UPDATE marking them published. What /create's group
    commit and the bulk API both run.

    Returns one outcome per item, in input order: a LinkCreated (created=True for the item that
    made the link; False for an existing link, and for a later item of the same call naming the
    same longurl, which gets the very same link), or the exception for that item alone:
    LongurlRefused (not acceptable; nothing written for it), LinkDisabled, LinkExpired (as
    link_create), LinkPublishError (committed, not acknowledged: the outbox sends it, a retry
    gets the same tinyurl). An item's refusal never affects the others.

    Every link is committed durably before any of its records is sent (a replica never holds a
    link the master could still lose), and a LinkCreated is returned only for a link Kafka has
    acknowledged. Raises django.db.DatabaseError when PostgreSQL fails: then no item's answer is
    known, and a retry is safe (a longurl never gets a second link). ValueError for a naive
    expires_at (a programming error, not input).
    """
    outcomes: list[CreateOutcome | None] = [None] * len(items)
    wanted: dict[str, list[int]] = {}  # stored longurl -> the items asking for it, in order
    for index, item in enumerate(items):
        if item.expires_at is not None and timezone.is_naive(item.expires_at):
            raise ValueError("expires_at must be timezone-aware")
        try:
            stored = validation.longurl_check(item.longurl)
        except validation.LongurlRefused as exc:
            outcomes[index] = exc
            continue
        wanted.setdefault(stored, []).append(index)
    if not wanted:
        return outcomes  # type: ignore[return-value]

    digests = {longurl: selectors.longurl_digest(longurl) for longurl in wanted}
    fresh: dict[str, tuple[Link, bool]] = {}
    # From INSERT_FIRST_MIN longurls on (a bulk call, an import: nearly all new), the INSERT finds
    # the existing links itself (_links_insert reads what it did not insert): a new link is spared
    # a read, 2.6 µs of PostgreSQL (measured); an existing one costs 9 instead of 2 (a retry pays).
    found = {} if len(wanted) >= INSERT_FIRST_MIN else selectors.links_by_digest(digests.values())
    missing = [longurl for longurl in wanted if digests[longurl] not in found]
    if missing:
        # durable: the outermost transaction, so that "committed" below really means committed
        # (not released into an enclosing transaction that could still roll back): publishing
        # starts only after it.
        with transaction.atomic(durable=True):
            fresh = _links_insert(
                [(longurl, digests[longurl], items[wanted[longurl][0]].expires_at)
                 for longurl in missing])
    now = timezone.now()
    to_publish: list[Link] = []
    link_of: dict[str, tuple[Link, bool]] = {}
    for longurl in wanted:
        link, created = fresh.get(longurl) or (found[digests[longurl]], False)
        link_of[longurl] = (link, created)
        if created or (link.published_at is None and link.disabled_at is None
                       and (link.expires_at is None or link.expires_at > now)):
            # New, or committed earlier and not acknowledged yet: (re)send it now.
            to_publish.append(link)
    # By `id`: the `pk` property looks the key up in the model's options (py-spy: 3 % of a call).
    errors = dict(zip((link.id for link in to_publish), publishing.links_publish_each(to_publish)))
    for longurl, indices in wanted.items():
        link, created = link_of[longurl]
        outcome: CreateOutcome
        if (error := errors.get(link.id)) is not None:
            outcome = error
        elif not created and link.disabled_at is not None:
            outcome = LinkDisabled(link)
        elif not created and link.expires_at is not None and link.expires_at <= now:
            outcome = LinkExpired(link)
        else:
            outcome = LinkCreated(link=link, created=created)
        outcomes[indices[0]] = outcome
        for later in indices[1:]:
            outcomes[later] = (LinkCreated(link=link, created=False)
                               if isinstance(outcome, LinkCreated) else outcome)
    return outcomes  # type: ignore[return-value]


def _links_insert(rows: list[tuple[str, bytes, datetime | None]]) -> dict[str, tuple[Link, bool]]:
    """Insert links for (stored longurl, its digest, expiry) rows that may have none; returns, per
    longurl, its link and whether this call inserted it (False: it existed, or another call won).
    Runs inside the caller's transaction. Raises RuntimeError if a tinyurl cannot be found for
    some row in TINYURL_ATTEMPTS rounds (at most a handful of collisions ever happen).
    ValueError if a longurl holds a newline (a stored longurl never does: links.validation)."""
    # INSERT ... ON CONFLICT DO NOTHING: an existing link, a concurrent insert of the same
    # longurl, or a tinyurl that is already taken, ends as "no row inserted" instead of an error,
    # with no aborted transaction; which it was, the read after it tells. The rows go in the order
    # of their digests: two concurrent batches that share longurls then take the unique index's
    # locks in the same order, so one waits for the other instead of the two deadlocking. The
    # columns Django fills from model defaults (state_version, clicks) have no default in the
    # database, so they are given here. The columns travel as one text each (a newline-separated
    # list of longurls, array literals of tinyurls, hex digests and expiries), not as Python
    # lists, which psycopg2 adapts element by element: 1.6 us a link for the four, against 0.3
    # (measured). A row comes back with its id and tinyurl only: the tinyurl says which row it is
    # (each was drawn for one row), and the rest is what was sent.
    insert_sql = """
        INSERT INTO links_link (tinyurl, longurl, longurl_sha256, expires_at, created_at,
                                state_version, clicks)
        SELECT t.tinyurl, t.longurl, t.digest, t.expires_at, %s, 1, 0
        FROM (SELECT u.tinyurl, u.longurl, decode(u.digest, 'hex') AS digest, u.expires_at
              FROM unnest(%s::varchar[], string_to_array(%s, E'\\n'), %s::text[],
                          %s::timestamptz[]) AS u(tinyurl, longurl, digest, expires_at)) AS t
        ORDER BY t.digest
        ON CONFLICT DO NOTHING
        RETURNING tinyurl, id"""
    result: dict[str, tuple[Link, bool]] = {}
    pending = rows
    plain = _links_plain()
    for _ in range(TINYURL_ATTEMPTS):
        codes = tinyurls_generate(len(pending))
        longurls, now = "\n".join(r[0] for r in pending), timezone.now()
        if longurls.count("\n") != len(pending) - 1:
            raise ValueError("a longurl to insert holds a newline")
        with connection.cursor() as cursor:
            cursor.execute(insert_sql, [
                now, "{" + ",".join(codes) + "}", longurls,
                "{" + ",".join(r[1].hex() for r in pending) + "}",
                "{" + ",".join("NULL" if r[2] is None else r[2].isoformat() for r in pending)
                + "}"])
            inserted = dict(cursor.fetchall())  # id by tinyurl
        left = []
        for (longurl, digest, expires_at), code in zip(pending, codes):
            pk = inserted.get(code)
            if pk is not None:
                result[longurl] = (_link_of_row(
                    plain, id=pk, tinyurl=code, longurl=longurl, longurl_sha256=digest,
                    created_at=now, expires_at=expires_at, state_version=1, clicks=0), True)
            else:
                left.append((longurl, digest, expires_at))
        if left:
            # Not inserted: the longurl has a link (READ COMMITTED: a concurrent call's committed
            # row too), or the tinyurl was taken (the longurl is still missing).
            for link in selectors.links_by_digest(r[1] for r in left).values():
                result[link.longurl] = (link, False)
            left = [r for r in left if r[0] not in result]
        if not left:
            return result
        pending = left
    raise RuntimeError(f"no free tinyurl after {TINYURL_ATTEMPTS} attempts")


_LINK_COLUMNS = tuple(f.attname for f in Link._meta.concrete_fields)
_NULL_ROW = dict.fromkeys(_LINK_COLUMNS)


def _links_plain() -> bool:
    """Whether new Links may skip Model.__init__: no pre_init or post_init receiver for Link."""
    return not (signals.pre_init.has_listeners(Link) or signals.post_init.has_listeners(Link))


def _link_of_row(plain: bool, **values: object) -> Link:
    """The Link of a row just inserted, as the ORM makes one it has read (Model.from_db), the
    columns not given NULL. `plain` (_links_plain()): without Model.__init__, which goes through
    every field and sends pre_init and post_init: 1.4 us a Link instead of from_db's 4.6."""
    if not plain:
        return Link.from_db(DEFAULT_DB_ALIAS, _LINK_COLUMNS, [values.get(n) for n in _LINK_COLUMNS])
    link = Link.__new__(Link)
    link.__dict__.update(_NULL_ROW, **values)
    link._state = ModelState()
    link._state.adding = False
    link._state.db = DEFAULT_DB_ALIAS
    return link


class LinkDisabled(Exception):
    """The longurl's link was taken down; /create does not hand it out again."""

    def __init__(self, link: Link) -> None:
        super().__init__(link.tinyurl)
        self.link = link


class LinkExpired(Exception):
    """The longurl's link has expired; /create does not hand it out again."""

    def __init__(self, link: Link) -> None:
        super().__init__(link.tinyurl)
        self.link = link


# The latest expiry accepted: far enough for any campaign, and well inside what every part
# stores (PostgreSQL timestamptz, milliseconds in the link record, Redis' TTL).
EXPIRES_AT_MAX_YEARS = 100


def expires_at_parse(value: object, *, now: datetime | None = None) -> datetime | None:
    """An expiry from the API: an ISO 8601 date and time WITH its UTC offset ("Z" or "+02:00"),
    strictly in the future, at most EXPIRES_AT_MAX_YEARS ahead; None (JSON null) for none.

    A time without an offset is refused rather than guessed: a client that sends its local
    time would otherwise see its links end hours early or late. Returns an aware datetime in
    UTC. Raises ValidationError saying what is wrong.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(f"expires_at must be an ISO 8601 string, not {type(value).__name__}", code="expires_at")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValidationError("expires_at is not an ISO 8601 date and time "
                              "(e.g. 2030-01-31T18:00:00Z)", code="expires_at") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValidationError("expires_at needs a UTC offset, e.g. 2030-01-31T18:00:00Z or "
                              "2030-01-31T19:00:00+01:00", code="expires_at")
    now = now or timezone.now()
    if parsed <= now:
        raise ValidationError("expires_at must be in the future", code="expires_at")
    if parsed > now + timedelta(days=365 * EXPIRES_AT_MAX_YEARS):
        raise ValidationError(f"expires_at is more than {EXPIRES_AT_MAX_YEARS} years ahead", code="expires_at")
    return parsed.astimezone(dt_timezone.utc)


class _Keep(enum.Enum):
    KEEP = "keep"


# link_update's "leave this as it is" (None means something for expires_at: never expires).
KEEP = _Keep.KEEP


def link_update(
    *,
    link: Link,
    disabled: bool | _Keep = KEEP,
    longurl: str | _Keep = KEEP,
    expires_at: datetime | None | _Keep = KEEP,
) -> Link:
    """Change what replicas must hold for a link, and publish the new state to every replica.

    The one path for every state change of an existing link (take down, put back, a new target,
    an expiry): the changes, a bumped state_version and a cleared outbox mark commit together
    (the row locked meanwhile); then the new state is published and the call waits for it as
    link_publish does. Nothing that equals the current value counts as a change; with no change
    nothing is bumped, and a link still unpublished is sent again.

    disabled: True takes the link down (replicas answer 404), False puts it back.
    longurl: a new target, checked by links.validation.longurl_check (LongurlRefused if it is not
        acceptable); ValidationError if another link already has it (a longurl has one
        tinyurl). Either way nothing is changed or published.
    expires_at: an aware datetime after which replicas answer 410 Gone; None: never.
    Returns the link as committed (`link` is refreshed too). Raises LinkPublishError if Kafka
    did not acknowledge: the change is committed, and the outbox relay sends it later, so it
    always reaches the replicas.
    """
    if isinstance(expires_at, datetime) and timezone.is_naive(expires_at):
        raise ValueError("expires_at must be timezone-aware")
    if longurl is not KEEP:
        longurl = validation.longurl_check(longurl)
    with transaction.atomic(durable=True):
        row = Link.objects.select_for_update().get(pk=link.pk)
        changed = []
        if disabled is not KEEP and (row.disabled_at is not None) != disabled:
            row.disabled_at = timezone.now() if disabled else None
            changed.append("disabled_at")
        if longurl is not KEEP and longurl != row.longurl:
            digest = selectors.longurl_digest(longurl)
            if Link.objects.filter(longurl_sha256=digest).exclude(pk=row.pk).exists():
                raise ValidationError("another link already has this longurl")
            row.longurl, row.longurl_sha256 = longurl, digest
            changed += ["longurl", "longurl_sha256"]
        if expires_at is not KEEP and expires_at != row.expires_at:
            row.expires_at = expires_at
            changed.append("expires_at")
        if changed:
            if row.state_version >= VERSION_MAX:
                # Only a forged record in the links topic gets a link here (the audit raised
                # the version above it): no later state could reach a replica, so the change is
                # refused rather than reported as made. Kafka ACLs on the topic are the remedy.
                raise ValidationError(
                    f"link {row.tinyurl} is at the largest state version ({VERSION_MAX}): no "
                    "change of it can reach the replicas; restrict who may write to the links "
                    "topic (a forged record put it there)")
            row.state_version, row.state_changed_at = row.state_version + 1, timezone.now()
            row.published_at = None
            row.save(update_fields=[*changed, "state_version", "state_changed_at", "published_at"])
    # Committed (durable: this is the outermost transaction). Publish only now, so a replica
    # never holds a state the master could still roll back.
    link.refresh_from_db()
    if changed or row.published_at is None:
        link_publish(link=row)
        link.published_at = row.published_at
    return row


def link_set_disabled(*, link: Link, disabled: bool) -> None:
    """Take a link down (disabled=True) or put it back, on every replica: link_update."""
    link_update(link=link, disabled=disabled)


@dataclass(frozen=True)
class TakedownResult:
    done: int  # taken down, and every replica told (Kafka acknowledged)
    pending: int  # taken down here; the outbox tells the replicas when Kafka is back


def links_take_down_blocked(*, blocked: Iterable[BlockedHost]) -> TakedownResult:
    """Take down every enabled link to a host of `blocked` or its subdomains, through the same
    versioned takedown as the admin's "Take down" (link_set_disabled)."""
    done = pending = 0
    for link in list(selectors.links_to_hosts(hosts=[b.host for b in blocked])):
        try:
            link_set_disabled(link=link, disabled=True)
            done += 1
        except LinkPublishError:
            pending += 1
    logger.info("took down %s link(s) to blocked hosts (%s left for the outbox)", done + pending,
                pending)
    return TakedownResult(done=done, pending=pending)
