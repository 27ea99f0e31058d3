"""The master's side of password-protected links: what a password may be, its hash
(topics/passwords.py: salted scrypt, the only form stored or published), and which link a
create with a password may get. links.services calls these; the password itself is never
stored, published or logged.

A password applies to a link made by the call that gives it: a create with a password that finds
the longurl's (or the alias') existing link gets it only if that link has this very password (a
retried call), and PasswordConflict (409) otherwise, so that a caller never believes a link is
protected by a password it is not protected by. A create without a password gets an existing
link as it is, protected or not (the API shows "protected"). To protect an existing link, change
it (links.services.link_update's `password`).
"""

from __future__ import annotations

from topics.passwords import PASSWORD_MAX_LENGTH, password_check, password_hash_make


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
    try:
        # JSON's "\ud800" decodes to a lone surrogate, which no form can send and which scrypt's
        # input (UTF-8) cannot hold: refused here, not a 500 from the hash (a bulk item's).
        password.encode()
    except UnicodeEncodeError:
        raise PasswordInvalid("a password is valid Unicode text (no lone surrogate)") from None
    return password


def password_hash(password: str) -> str:
    """The salted hash to store and publish (about 0.18 s of CPU: topics/passwords.py)."""
    return password_hash_make(password)


def existing_link_ok(password: str | None, link_hash: str | None) -> bool:
    """Whether a create asking for `password` (None: none) may get an existing link whose hash is
    `link_hash`: without a password, always; with one, only if the link has that password."""
    if password is None:
        return True
    return link_hash is not None and password_check(password, link_hash)
