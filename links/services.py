"""Writes of the master: creating links and changing their state; each change is then published
to the links topic after its commit (links/publishing.py)."""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from links import inserts, passwords, publishing, selectors, tinyurls, validation
from links.models import BlockedHost, Link
from links.publishing import LinkPublishError, link_publish
# Made in links/tinyurls.py; imported from here by tests, benches and older callers.
from links.tinyurls import tinyurl_generate, tinyurls_generate  # noqa: F401
from topics.links import VERSION_MAX

# The partial unique index of generated links' longurls (links/models.py, migration 0016).
LONGURL_GENERATED_UNIQUE = "links_link_longurl_generated"

logger = logging.getLogger(__name__)

# links_create_many inserts before it reads from this many longurls on; /create's batches (at
# most 256, links/batching.py) read first, so an existing longurl there writes nothing.
INSERT_FIRST_MIN = 1000


@dataclass(frozen=True)
class LinkCreated:
    link: Link
    created: bool


@dataclass(frozen=True)
class CreateItem:
    """One link asked for: the longurl as the client sent it (any JSON value: it is checked by
    links.validation.longurl_check), an optional expiry (an aware datetime, checked by
    expires_at_parse) for a link created now, and an optional alias: the tinyurl the caller
    chooses (any JSON value: checked by links.tinyurls.alias_check; None: a generated one)."""

    longurl: object
    expires_at: datetime | None = None
    alias: object = None
    # A password for the link made (links/passwords.py: PasswordInvalid, PasswordConflict); None:
    # none. Only its hash is kept.
    password: object = None


# What links_create_many answers for one item: the link, or why not.
CreateOutcome = LinkCreated | Exception


def link_create(*, longurl: str, expires_at: datetime | None = None,
                alias: str | None = None, password: str | None = None) -> LinkCreated:
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

    alias: the tinyurl to give the link (links/tinyurls.py has the rules): the link of that
    alias, made now, or found if it already names a link of this longurl (created False; its
    expiry, state and errors as above). Raises AliasInvalid (400: not 3-64 characters of
    [A-Za-z0-9_-]), AliasReserved (409: a path the service answers itself, in any case),
    AliasTaken (409: another longurl's link has it); all subclasses of tinyurls.AliasRefused,
    which carry `status`, `code` and `message`. Nothing is written for a refused alias.

    password: the new link is password-protected (its salted hash is stored and published,
    never the password; links/passwords.py). PasswordInvalid (400) for one that cannot be,
    PasswordConflict (409) when the longurl or alias already has a link without that password.
    """
    outcome = links_create_many([CreateItem(longurl=longurl, expires_at=expires_at,
                                            alias=alias, password=password)])[0]
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

    An item with an alias gets the link of that alias, as link_create says (the same alias
    twice in one call for the same longurl: one link, created for the first; for another
    longurl: AliasTaken for the later item), or its AliasRefused. Items without one follow
    "same longurl, same tinyurl": they never get an alias' link.

    Every link is committed durably before any of its records is sent (a replica never holds a
    link the master could still lose), and a LinkCreated is returned only for a link Kafka has
    acknowledged. Raises django.db.DatabaseError when PostgreSQL fails: then no item's answer is
    known, and a retry is safe (a longurl never gets a second link). ValueError for a naive
    expires_at (a programming error, not input).
    """
    outcomes: list[CreateOutcome | None] = [None] * len(items)
    wanted: dict[str, list[int]] = {}  # stored longurl -> the items asking for it, in order
    aliased: dict[str, tuple[str, list[int]]] = {}  # alias -> (stored longurl, its items)
    for index, item in enumerate(items):
        if item.expires_at is not None and timezone.is_naive(item.expires_at):
            raise ValueError("expires_at must be timezone-aware")
        try:
            if item.password is not None:
                passwords.password_checked(item.password)
            stored = validation.longurl_check(item.longurl)
            if item.alias is None:
                wanted.setdefault(stored, []).append(index)
                continue
            alias = tinyurls.alias_check(item.alias)
        except (validation.LongurlRefused, tinyurls.AliasRefused,
                passwords.PasswordRefused) as exc:
            outcomes[index] = exc
            continue
        held = aliased.setdefault(alias, (stored, []))
        if held[0] == stored:
            held[1].append(index)
        else:
            outcomes[index] = tinyurls.AliasTaken(alias)
    if not wanted and not aliased:
        return outcomes  # type: ignore[return-value]

    digests = {longurl: selectors.longurl_digest(longurl)
               for longurl in (*wanted, *(held[0] for held in aliased.values()))}
    if aliased:
        # A longurl one of whose links an admin took down gets no new alias: else a takedown
        # would be undone by asking for the target again under any alias. (A taken-down alias
        # asked for again is answered LinkDisabled below, as a taken-down generated link is.)
        down = selectors.links_taken_down_by_digest(
            {digests[longurl] for longurl, _ in aliased.values()})
        for alias, (longurl, indices) in list(aliased.items()):
            if (link := down.get(digests[longurl])) is not None and link.tinyurl != alias:
                for index in indices:
                    outcomes[index] = LinkDisabled(link)
                del aliased[alias]
        if not wanted and not aliased:
            return outcomes  # type: ignore[return-value]
    fresh: dict[str, tuple[Link, bool]] = {}
    # From INSERT_FIRST_MIN longurls on (a bulk call, an import: nearly all new), the INSERT finds
    # the existing links itself (links_insert reads what it did not insert): a new link is spared
    # a read, 2.6 µs of PostgreSQL (measured); an existing one costs 9 instead of 2 (a retry pays).
    found = ({} if len(wanted) >= INSERT_FIRST_MIN or not wanted
             else selectors.links_by_digest(digests[longurl] for longurl in wanted))
    missing = [longurl for longurl in wanted if digests[longurl] not in found]
    of_alias: dict[str, tuple[Link, bool] | tinyurls.AliasTaken] = {}
    # The hash of the password of the item that would make each link, made before the
    # transaction (scrypt's 0.18 s of CPU holds no lock): by stored longurl and by alias.
    hashes = {key: passwords.password_hash(items[indices[0]].password)  # type: ignore[arg-type]
              for key, indices in (*((u, i) for u, i in wanted.items() if u in missing),
                                   *((a, held[1]) for a, held in aliased.items()))
              if items[indices[0]].password is not None}
    if missing or aliased:
        # durable: the outermost transaction, so that "committed" below really means committed
        # (not released into an enclosing transaction that could still roll back): publishing
        # starts only after it.
        with transaction.atomic(durable=True):
            if missing:
                fresh = inserts.links_insert(
                    [(longurl, digests[longurl], items[wanted[longurl][0]].expires_at)
                     for longurl in missing])
            if aliased:
                of_alias = inserts.aliases_insert(
                    [(alias, longurl, digests[longurl], items[indices[0]].expires_at)
                     for alias, (longurl, indices) in aliased.items()])
            if hashes:
                # In the links' own transaction: no record of a new link ever goes out without
                # its hash (a replica would redirect it without the form).
                made = [(got[0], hashes[key]) for key, got in (*fresh.items(), *of_alias.items())
                        if key in hashes and not isinstance(got, Exception) and got[1]]
                for link, hashed in made:
                    Link.objects.filter(id=link.id).update(password_hash=hashed)
                    link.password_hash = hashed
    # Each group of items gets one link (or one refusal): per longurl, then per alias.
    groups: list[tuple[tuple[Link, bool] | Exception, list[int]]] = [
        (fresh.get(longurl) or (found[digests[longurl]], False), indices)
        for longurl, indices in wanted.items()]
    groups += [(of_alias[alias], indices) for alias, (_, indices) in aliased.items()]
    now = timezone.now()
    to_publish: list[Link] = []
    for got, _ in groups:
        if isinstance(got, Exception):
            continue
        link, created = got
        if created or (link.published_at is None and link.disabled_at is None
                       and (link.expires_at is None or link.expires_at > now)):
            # New, or committed earlier and not acknowledged yet: (re)send it now.
            to_publish.append(link)
    # By `id`: the `pk` property looks the key up in the model's options (py-spy: 3 % of a call).
    errors = dict(zip((link.id for link in to_publish), publishing.links_publish_each(to_publish)))
    for got, indices in groups:
        outcome: CreateOutcome
        if isinstance(got, Exception):
            outcome = got
        elif (error := errors.get(got[0].id)) is not None:
            outcome = error
        elif not got[1] and got[0].disabled_at is not None:
            outcome = LinkDisabled(got[0])
        elif not got[1] and got[0].expires_at is not None and got[0].expires_at <= now:
            outcome = LinkExpired(got[0])
        elif not got[1] and not passwords.existing_link_ok(items[indices[0]].password,
                                                             got[0].password_hash):
            outcome = passwords.PasswordConflict(got[0].tinyurl)
        else:
            outcome = LinkCreated(link=got[0], created=got[1])
        outcomes[indices[0]] = outcome
        for later in indices[1:]:
            if not isinstance(outcome, LinkCreated):
                outcomes[later] = outcome
            elif (items[later].password is not None
                  and items[later].password != items[indices[0]].password):
                # Another password than the one the link has (or none): as for an existing link.
                outcomes[later] = passwords.PasswordConflict(got[0].tinyurl)
            else:
                outcomes[later] = LinkCreated(link=got[0], created=False)
    return outcomes  # type: ignore[return-value]


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
    password: str | None = None,
) -> Link:
    """Change what replicas must hold for a link, and publish the new state to every replica.

    The one path for every state change of an existing link (take down, put back, a new target,
    an expiry): the changes, a bumped state_version and a cleared outbox mark commit together
    (the row locked meanwhile); then the new state is published and the call waits for it as
    link_publish does. Nothing that equals the current value counts as a change; with no change
    nothing is bumped, and a link still unpublished is sent again.

    disabled: True takes the link down (replicas answer 404), False puts it back.
    longurl: a new target, checked by links.validation.longurl_check (LongurlRefused if it is not
        acceptable); ValidationError if another generated link already has it and this one is
        generated too (a longurl has one generated tinyurl; aliases may share it). Either way
        nothing is changed or published.
    expires_at: an aware datetime after which replicas answer 410 Gone; None: never.
    password: a new password (its salted hash replaces the link's: cookies given for the old one
        end), "" to remove it, None (default) to leave it; PasswordInvalid (links/passwords.py)
        for one that cannot be, and nothing is changed. Setting one always counts as a change.
    Returns the link as committed (`link` is refreshed too). Raises LinkPublishError if Kafka
    did not acknowledge: the change is committed, and the outbox relay sends it later, so it
    always reaches the replicas.
    """
    if isinstance(expires_at, datetime) and timezone.is_naive(expires_at):
        raise ValueError("expires_at must be timezone-aware")
    if longurl is not KEEP:
        longurl = validation.longurl_check(longurl)
    hashed = KEEP
    if password is not None:
        # Hashed before the row is locked: scrypt's 0.18 s of CPU holds no lock.
        hashed = (passwords.password_hash(password) if passwords.password_checked(
            password, empty_ok=True) else None)
    with transaction.atomic(durable=True):
        row = Link.objects.select_for_update().get(pk=link.pk)
        changed = []
        if disabled is not KEEP and (row.disabled_at is not None) != disabled:
            row.disabled_at = timezone.now() if disabled else None
            changed.append("disabled_at")
        if longurl is not KEEP and longurl != row.longurl:
            digest = selectors.longurl_digest(longurl)
            # A longurl has one generated link; an alias may point anywhere (links/tinyurls.py).
            if not row.alias and Link.objects.filter(
                    longurl_sha256=digest, alias=False).exclude(pk=row.pk).exists():
                raise ValidationError("another link already has this longurl")
            row.longurl, row.longurl_sha256 = longurl, digest
            changed += ["longurl", "longurl_sha256"]
        if expires_at is not KEEP and expires_at != row.expires_at:
            row.expires_at = expires_at
            changed.append("expires_at")
        if hashed is not KEEP and hashed != row.password_hash:
            row.password_hash = hashed
            changed.append("password_hash")
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
            try:
                row.save(update_fields=[*changed, "state_version", "state_changed_at",
                                        "published_at"])
            except IntegrityError as exc:
                # The check above reads committed rows only: another request's create of the
                # same longurl, not committed then, makes the UPDATE wait on its entry in the
                # unique index and fail once it commits. The same refusal as the check's (the
                # transaction rolls back: nothing changed), not an unexplained error.
                if getattr(exc.__cause__, "diag", None) is not None and (
                        exc.__cause__.diag.constraint_name == LONGURL_GENERATED_UNIQUE):
                    raise ValidationError("another link already has this longurl") from exc
                raise
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
