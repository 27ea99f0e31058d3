"""The master's side of password-protected links: what a password may be, its hash
(topics/passwords.py: salted scrypt, the only form stored or published), and which link a
create with a password may get. links.services calls these; the password itself is never
stored, published or logged.

Which link a create gets ("same longurl, same tinyurl" with passwords):
- Without a password and without an alias: the longurl's one public generated link (never a
  protected one: a link handed to anyone who shortens a URL must not answer them a password
  form). A unique index (links/models.py) holds one per longurl.
- With a password and without an alias: the longurl's generated link protected by that very
  password, made if there is none. Such a link's hash is salted from the longurl (generated_salt:
  the same longurl and password always give the same hash), so a retried call finds its link by
  (digest, hash) and gets the same tinyurl; another password makes another link; a unique
  index holds one per longurl and hash.
- With an alias: that alias' link; a create with a password gets an existing one only if it has
  this very password (a retried call), PasswordConflict (409) otherwise, so that a caller never
  believes a link is protected by a password it is not protected by. An alias' hash has a random
  salt (nothing is looked up by it).
To protect an existing link, or to remove its password, change it (links.services.link_update's
`password`): a generated link then moves between the two kinds, and a change that would give a
longurl a second public link, or a second link with one password, is refused (a ValidationError
with the code "password_conflict").
"""

from __future__ import annotations

from django.utils.crypto import salted_hmac

from topics.passwords import (PASSWORD_MAX_LENGTH, SALT_BYTES, password_check,
                              password_hash_make, password_normal)


class PasswordRefused(Exception):
    """A password that cannot be used: `status` (the HTTP status an API answers), `code`,
    `message`. Never holds the password."""

    status = 400
    code = "password_invalid"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PasswordInvalid(PasswordRefused):
    """Not a string of 1 to PASSWORD_MAX_LENGTH characters (400)."""


class PasswordConflict(PasswordRefused):
    """A create with a password found a link that does not have that password (409)."""

    status = 409
    code = "password_conflict"

    def __init__(self, tinyurl: str) -> None:
        super().__init__(
            f"this longurl (or alias) already has a link, {tinyurl}, without this password: a "
            "password applies only to a link the call makes. Choose an alias for a link of its "
            "own, or change that link's password")
        self.tinyurl = tinyurl


def password_checked(password: object, *, empty_ok: bool = False) -> str:
    """The password as given, if it may be one; PasswordInvalid otherwise. empty_ok: "" is
    allowed (link_update's "remove the password")."""
    if not isinstance(password, str) or (password == "" and not empty_ok):
        raise PasswordInvalid(f"a password is a string of 1 to {PASSWORD_MAX_LENGTH} characters")
    if len(password) > PASSWORD_MAX_LENGTH or "\x00" in password:
        raise PasswordInvalid(f"a password is a string of 1 to {PASSWORD_MAX_LENGTH} characters "
                              "(no NUL)")
    if "\r" in password or "\n" in password:
        # A browser's password field strips line breaks from its value (HTML Standard, the
        # input element's value sanitization for type=password): such a link could never be
        # opened from the replica's form.
        raise PasswordInvalid("a password is one line: no line break (CR or LF), which no "
                              "browser's password field can hold")
    try:
        # JSON's "\ud800" decodes to a lone surrogate, which no form can send and which scrypt's
        # input (UTF-8) cannot hold: refused here, not a 500 from the hash (a bulk item's).
        password.encode()
    except UnicodeEncodeError:
        raise PasswordInvalid("a password is valid Unicode text (no lone surrogate)") from None
    return password


def password_key(password: object) -> str | None:
    """What tells two checked passwords apart (None: no password): the text that is hashed,
    Unicode NFKC (topics/passwords.password_normal), so "café" in two Unicode forms is one."""
    return None if password is None else password_normal(password)  # type: ignore[arg-type]


def password_hash(password: str, *, digest: bytes | None = None) -> str:
    """The salted hash to store and publish (about 0.18 s of CPU: topics/passwords.py). digest:
    the longurl's SHA-256 for a generated link (the salt is then generated_salt(digest)); None
    for an alias (a random salt)."""
    return password_hash_make(password, None if digest is None else generated_salt(digest))


def generated_salt(digest: bytes) -> bytes:
    """The salt of a generated link's password hash: SALT_BYTES of HMAC-SHA256 under the
    master's SECRET_KEY (Django's salted_hmac) of the longurl's digest. Deterministic, so that a
    retried create finds its link by the hash; still one salt per longurl, as a salt must be
    (OWASP Password Storage Cheat Sheet: unique per credential; two links of one longurl share a
    hash only when they share the password, which the unique index forbids anyway), and
    unknown without SECRET_KEY, so no table can be computed ahead for a popular longurl. A new
    SECRET_KEY only makes a retry across it create a second link."""
    return salted_hmac("links.passwords.generated_salt", digest,
                       algorithm="sha256").digest()[:SALT_BYTES]


def existing_link_ok(password: str | None, link_hash: str | None) -> bool:
    """Whether a create asking for `password` (None: none) may get an existing link whose hash is
    `link_hash`: without a password, always; with one, only if the link has that password."""
    if password is None:
        return True
    return link_hash is not None and password_check(password, link_hash)
