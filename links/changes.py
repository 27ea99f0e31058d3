"""Changes of an existing link's state (take down, put back, a new target, an expiry, a
password): link_update, the one path of every change, which commits a new state version and
then publishes it (links/publishing.py). links.services re-exports it with KEEP; the admin, the
API and the takedown commands call it from there."""

from __future__ import annotations

import enum
from datetime import datetime

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from links import longurl_locks, passwords, selectors, validation
from links.models import Link
from links.publishing import link_publish
from topics.links import VERSION_MAX

# The partial unique indexes of generated links' longurls (links/models.py, migration 0019):
# one public link per longurl, one protected link per longurl and password hash.
LONGURL_PUBLIC_UNIQUE = "links_link_longurl_public"
LONGURL_PROTECTED_UNIQUE = "links_link_longurl_protected"


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
        acceptable); ValidationError if this link is generated and another generated link of the
        new longurl has the same password, or none as this one (links/passwords.py: a longurl
        has one public generated link and one per password; aliases may share it). Either way
        nothing is changed or published.
    expires_at: an aware datetime after which replicas answer 410 Gone; None: never.
    password: a new password (its salted hash replaces the link's: cookies given for the old one
        end), "" to remove it, None (default) to leave it; PasswordInvalid (links/passwords.py)
        for one that cannot be, and nothing is changed. Setting one counts as a change, except
        on a generated link that already has it (the same hash: links/passwords.py). A generated link's password decides which of its longurl's generated links it is:
        ValidationError with the code "password_conflict" when another generated link of the
        longurl already has the new password, or (removing it) none.
    Returns the link as committed (`link` is refreshed too). Raises LinkPublishError if Kafka
    did not acknowledge: the change is committed, and the outbox relay sends it later, so it
    always reaches the replicas.
    """
    if isinstance(expires_at, datetime) and timezone.is_naive(expires_at):
        raise ValueError("expires_at must be timezone-aware")
    if longurl is not KEEP:
        longurl = validation.longurl_check(longurl)
    hashed: str | None | _Keep = KEEP
    if password is not None and passwords.password_checked(password, empty_ok=True):
        # Hashed before the row is locked: scrypt's 0.18 s of CPU holds no lock. A generated
        # link's hash is salted from its longurl (links/passwords.py), the new one if it changes.
        hashed = _link_password_hash(link, password, longurl)
    elif password is not None:
        hashed = None
    with transaction.atomic(durable=True):
        if disabled is True:
            # Before the row's lock: a create of a new link of this longurl that has read no
            # takedown yet commits first, one that has not read yet sees this one
            # (links/longurl_locks.py).
            longurl_locks.longurl_lock(bytes(link.longurl_sha256))
        row = Link.objects.select_for_update().get(pk=link.pk)
        if (isinstance(hashed, str) and not row.alias
                and row.longurl_sha256 != link.longurl_sha256 and longurl is KEEP):
            # The target changed since `link` was read: the salt follows the row's longurl.
            hashed = _link_password_hash(row, password, KEEP)  # type: ignore[arg-type]
        changed = []
        if disabled is not KEEP and (row.disabled_at is not None) != disabled:
            row.disabled_at = timezone.now() if disabled else None
            changed.append("disabled_at")
        if longurl is not KEEP and longurl != row.longurl:
            row.longurl, row.longurl_sha256 = longurl, selectors.longurl_digest(longurl)
            changed += ["longurl", "longurl_sha256"]
        if hashed is not KEEP and hashed != row.password_hash:
            row.password_hash = hashed
            changed.append("password_hash")
        if (not row.alias and "longurl" in changed and row.password_hash is not None
                and "password_hash" not in changed):
            # Its hash is salted from the longurl it leaves (links/passwords.py): kept, a
            # create of the new longurl with that password would not find it, and a second
            # link with one password could follow. Without the password it cannot be salted
            # again.
            raise ValidationError(PASSWORD_REQUIRED, code="password_required")
        if not row.alias and ("longurl" in changed or "password_hash" in changed):
            _generated_unique_check(row, longurl_changed="longurl" in changed)
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
            try:
                row.save(update_fields=[*changed, "state_version", "state_changed_at",
                                        "published_at"])
            except IntegrityError as exc:
                # The check above reads committed rows only: another request's create of the
                # same longurl, not committed then, makes the UPDATE wait on its entry in the
                # unique index and fail once it commits. The same refusal as the check's (the
                # transaction rolls back: nothing changed), not an unexplained error.
                constraint = getattr(getattr(exc.__cause__, "diag", None), "constraint_name", None)
                if constraint in (LONGURL_PUBLIC_UNIQUE, LONGURL_PROTECTED_UNIQUE):
                    raise _generated_conflict(
                        None, longurl_changed="longurl" in changed,
                        protected=constraint == LONGURL_PROTECTED_UNIQUE) from exc
                raise
    # Committed (durable: this is the outermost transaction). Publish only now, so a replica
    # never holds a state the master could still roll back.
    link.refresh_from_db()
    if changed or row.published_at is None:
        link_publish(link=row)
        link.published_at = row.published_at
    return row


PASSWORD_REQUIRED = ("a password-protected link moves to another longurl only with its "
                     "password given again (or removed): its hash is salted from its longurl")


def link_change_refusal(*, link: Link, longurl: str | _Keep = KEEP,
                        password: str | None = None) -> ValidationError | None:
    """What link_update would refuse of these changes of a generated link's longurl (stored
    form) and/or password (None: unchanged, "": removed) for "same longurl, same tinyurl"
    (links/passwords.py), read from committed rows; None if nothing. For a form to show before
    anything is saved; link_update checks again under the row's lock. Hashes a new password
    (about 0.18 s)."""
    if link.alias or (longurl is KEEP and password is None):
        return None
    moved = longurl is not KEEP and longurl != link.longurl
    if moved and password is None and link.password_hash is not None:
        return ValidationError(PASSWORD_REQUIRED, code="password_required")
    digest = (selectors.longurl_digest(longurl) if moved  # type: ignore[arg-type]
              else bytes(link.longurl_sha256))
    hashed = (link.password_hash if password is None
              else _link_password_hash(link, password, longurl) if password else None)
    probe = Link(pk=link.pk, alias=False, longurl_sha256=digest, password_hash=hashed)
    try:
        _generated_unique_check(probe, longurl_changed=moved)
    except ValidationError as exc:
        return exc
    return None


def _link_password_hash(link: Link, password: str, longurl: str | _Keep) -> str:
    """The hash link_update stores for `password` on `link`: salted from the (new) longurl for a
    generated link, randomly for an alias (links/passwords.py)."""
    if link.alias:
        return passwords.password_hash(password)
    digest = (bytes(link.longurl_sha256) if longurl is KEEP
              else selectors.longurl_digest(longurl))  # type: ignore[arg-type]
    return passwords.password_hash(password, digest=digest)


def _generated_unique_check(row: Link, *, longurl_changed: bool) -> None:
    """Raise link_update's ValidationError if another generated link of row's (new) longurl has
    row's (new) password, or none as row: the unique indexes' rule, checked first to name the
    other link. Reads committed rows; a concurrent one is caught by the index itself."""
    # password_hash=None is IS NULL: the public link's index predicate.
    other = Link.objects.filter(longurl_sha256=row.longurl_sha256, alias=False,
                                password_hash=row.password_hash).exclude(pk=row.pk).first()
    if other is not None:
        raise _generated_conflict(other.tinyurl, longurl_changed=longurl_changed,
                                  protected=row.password_hash is not None)


def _generated_conflict(tinyurl: str | None, *, longurl_changed: bool,
                        protected: bool) -> ValidationError:
    """link_update's refusal of a second public link of a longurl ("another link already has
    this longurl", as ever), or of a second generated link with one password."""
    name = "another link" if tinyurl is None else f"link {tinyurl}"
    if longurl_changed and not protected:
        return ValidationError(f"{name} already has this longurl (a longurl has one tinyurl)",
                               code="conflict")
    return ValidationError(
        f"{name} of this longurl already " + ("has this password" if protected
                                              else "redirects without a password")
        + ": a longurl has one generated link without a password, and one per password",
        code="password_conflict")
