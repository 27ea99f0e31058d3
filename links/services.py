"""Writes of the master: creating links (links_create_many and its callers), taking them down
in bulk; each is published to the links topic after its commit (links/publishing.py). Changes
of one existing link are links/changes.py's link_update, re-exported here."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from links import inserts, longurl_locks, passwords, publishing, selectors, tinyurls, validation
from links.models import BlockedHost, Link
# Changes of an existing link live in links/changes.py; callers reach them from here.
from links.changes import KEEP, link_change_refusal, link_update  # noqa: F401
from links.publishing import LinkPublishError
# Made in links/tinyurls.py; imported from here by tests, benches and older callers.
from links.tinyurls import tinyurl_generate, tinyurls_generate  # noqa: F401


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

    password: the link is password-protected (its salted hash is stored and published, never
    the password; links/passwords.py): without an alias, the longurl's generated link with this
    password, made if there is none (a retry gets the same tinyurl; another password, another
    link; a create without a password never gets it). PasswordInvalid (400) for one that cannot
    be, PasswordConflict (409) when the alias already names a link without that password.
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
    "same longurl, same tinyurl": they never get an alias' link, and get the longurl's public
    link without a password, its generated link with that password with one (links/passwords.py;
    for the same longurl and password in one call, one link). A longurl one of whose links was
    taken down gets no new alias or protected link (LinkDisabled).

    Every link is committed durably before any of its records is sent (a replica never holds a
    link the master could still lose), and a LinkCreated is returned only for a link Kafka has
    acknowledged. Raises django.db.DatabaseError when PostgreSQL fails: then no item's answer is
    known, and a retry is safe (a longurl never gets a second link). ValueError for a naive
    expires_at (a programming error, not input).
    """
    outcomes: list[CreateOutcome | None] = [None] * len(items)
    # (stored longurl, password or None) -> the items asking for its generated link, in order.
    wanted: dict[tuple[str, str | None], list[int]] = {}
    aliased: dict[str, tuple[str, list[int]]] = {}  # alias -> (stored longurl, its items)
    for index, item in enumerate(items):
        if item.expires_at is not None and timezone.is_naive(item.expires_at):
            raise ValueError("expires_at must be timezone-aware")
        try:
            if item.password is not None:
                passwords.password_checked(item.password)
            stored = validation.longurl_check(item.longurl)
            if item.alias is None:
                # One key per password as hashed (NFKC: topics/passwords.py), so "café" in two
                # Unicode forms is one link.
                wanted.setdefault((stored, passwords.password_key(item.password)),
                                  []).append(index)
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
               for longurl in (*(key[0] for key in wanted),
                               *(held[0] for held in aliased.values()))}
    # The hashes of the passwords asked for, made before the transaction (scrypt's 0.18 s of CPU
    # holds no lock): a generated link's, salted from its longurl, is also how it is found again
    # (links/passwords.py); an alias' is made only for a new link, below.
    hashes: dict[tuple[str, str | None], str | None] = {
        key: None if key[1] is None else passwords.password_hash(key[1],
                                                                 digest=digests[key[0]])
        for key in wanted}
    fresh: dict[tuple[str, str | None], tuple[Link, bool]] = {}

    def own_links(keys: Iterable[tuple[str, str | None]]) -> dict[tuple[str, str | None], Link]:
        """The existing generated links of these keys: public by digest, protected by hash."""
        keys = list(keys)
        public = selectors.links_by_digest(digests[key[0]] for key in keys if key[1] is None)
        protected = selectors.links_protected_by_hash(
            (digests[key[0]], hashes[key]) for key in keys  # type: ignore[misc]
            if key[1] is not None)
        links = {key: public.get(digests[key[0]]) if key[1] is None
                 else protected.get((digests[key[0]], hashes[key]))  # type: ignore[arg-type]
                 for key in keys}
        return {key: link for key, link in links.items() if link is not None}

    # From INSERT_FIRST_MIN longurls on (a bulk call, an import: nearly all new), the INSERT finds
    # the existing links itself (links_insert reads what it did not insert): a new link is spared
    # a read, 2.6 µs of PostgreSQL (measured); an existing one costs 9 instead of 2 (a retry pays).
    found = own_links(wanted) if wanted and len(wanted) < INSERT_FIRST_MIN else {}
    missing = [key for key in wanted if key not in found]
    of_alias: dict[str, tuple[Link, bool] | tinyurls.AliasTaken] = {}
    alias_hashes = {alias: passwords.password_hash(items[held[1][0]].password)  # type: ignore
                    for alias, held in aliased.items()
                    if items[held[1][0]].password is not None}
    if missing or aliased:
        # durable: the outermost transaction, so that "committed" below really means committed
        # (not released into an enclosing transaction that could still roll back): publishing
        # starts only after it.
        with transaction.atomic(durable=True):
            # A longurl one of whose links an admin took down gets no new link (public,
            # protected or alias): else a takedown would be undone by asking for the target
            # again, under another alias or password. Read under the longurls' locks, inside
            # this transaction, so that a takedown cannot commit between the read and the
            # INSERT (links/longurl_locks.py). A link of the call's own that exists (a retry)
            # is still answered: it is no new link.
            newcomers = {digests[key[0]] for key in missing}
            newcomers |= {digests[longurl] for longurl, _ in aliased.values()}
            longurl_locks.longurls_lock_shared(newcomers)
            down = selectors.links_taken_down_by_digest(newcomers) if newcomers else {}
            held = [key for key in missing if digests[key[0]] in down]
            if held:
                found |= own_links(held)  # the insert-first path has not read them
                for key in held:
                    if key not in found:
                        for index in wanted.pop(key):
                            outcomes[index] = LinkDisabled(down[digests[key[0]]])
                missing = [key for key in missing if key not in held]
            held_aliases = {alias for alias, (longurl, _) in aliased.items()
                            if digests[longurl] in down}
            if held_aliases:
                existing = set(Link.objects.filter(tinyurl__in=held_aliases)
                               .values_list("tinyurl", flat=True))
                for alias in held_aliases - existing:
                    longurl, indices = aliased.pop(alias)
                    for index in indices:
                        outcomes[index] = LinkDisabled(down[digests[longurl]])
            if missing:
                inserted = inserts.links_insert(
                    [(key[0], digests[key[0]], items[wanted[key][0]].expires_at, hashes[key])
                     for key in missing])
                fresh = {key: inserted[key[0], hashes[key]] for key in missing}
            if aliased:
                of_alias = inserts.aliases_insert(
                    [(alias, longurl, digests[longurl], items[indices[0]].expires_at)
                     for alias, (longurl, indices) in aliased.items()])
            # In the links' own transaction: no record of a new alias ever goes out without its
            # hash (a replica would redirect it without the form). A generated link's hash is
            # in its INSERT.
            for alias, hashed in alias_hashes.items():
                got = of_alias.get(alias)  # None: refused above
                if got is not None and not isinstance(got, Exception) and got[1]:
                    Link.objects.filter(id=got[0].id).update(password_hash=hashed)
                    got[0].password_hash = hashed
    # Each group of items gets one link (or one refusal): per longurl, then per alias.
    groups: list[tuple[tuple[Link, bool] | Exception, list[int]]] = [
        (fresh.get(key) or (found[key], False), indices) for key, indices in wanted.items()]
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
        elif not got[1] and got[0].alias and not passwords.existing_link_ok(
                items[indices[0]].password, got[0].password_hash):
            # A generated link was found by its password's hash: only an alias can differ.
            outcome = passwords.PasswordConflict(got[0].tinyurl)
        else:
            outcome = LinkCreated(link=got[0], created=got[1])
        outcomes[indices[0]] = outcome
        for later in indices[1:]:
            if not isinstance(outcome, LinkCreated):
                outcomes[later] = outcome
            elif (items[later].password is not None
                  and passwords.password_key(items[later].password)
                  != passwords.password_key(items[indices[0]].password)):
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
