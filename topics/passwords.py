"""A link's password, as the master stores it and every replica checks it: a salted scrypt hash
(hashlib.scrypt, Python's standard library over OpenSSL), carried in the link's record
(LinkRecord.password_hash) and in the replica's link value. The password itself is never
stored, published or logged.

Why scrypt from the standard library rather than argon2-cffi: OWASP's Password Storage Cheat
Sheet accepts both (Argon2id first, scrypt "where Argon2id is not available"); scrypt needs no
new dependency on the master nor on any replica, and the replica checks a password in a thread
(hashlib releases the GIL while it hashes).

The hash's text: `scrypt$<log2 n>$<r>$<p>$<salt>$<key>`, salt and key in unpadded base64url.
No "|" (the replica's value separates its fields with it) and no whitespace. The parameters
travel with the hash, so they can be raised later without touching older links.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import unicodedata

# OWASP Password Storage Cheat Sheet (scrypt): "a minimum CPU/memory cost parameter of (2^17),
# a minimum block size of 8 (1024 bytes), and a parallelization parameter of 1", or one of the
# equivalent settings it lists; this is its "N=2^14 (16 MiB), r=8 (1024 bytes), p=5": the same
# work as 2^17 with 16 MiB of memory a check instead of 128, which matters on a replica that may
# check several at once.
LOG2_N = 14
R = 8
P = 5
SALT_BYTES = 16
KEY_BYTES = 32
# A replica reads the parameters from the hash: bounded, so that a record (forged, or from a
# future master) cannot make one check take unbounded memory or time. 128 * r * n bytes.
LOG2_N_MAX = 17
R_MAX = 16
P_MAX = 16
_MAXMEM = 129 * R_MAX * (1 << LOG2_N_MAX)

# The hash's shape with the parameters' bounds above (log2 n 1-17, r and p 1-16), as
# LinkRecord's pattern: records holding any other text are refused (reason "range").
HASH_PATTERN = (r"^scrypt\$(?:[1-9]|1[0-7])\$(?:[1-9]|1[0-6])\$(?:[1-9]|1[0-6])"
                r"\$[A-Za-z0-9_-]{16,64}\$[A-Za-z0-9_-]{16,128}$")
_HASH_RE = re.compile(HASH_PATTERN)

# A password: 1-128 characters (a passphrase fits; a longer text is no password anyone types
# into a form, and scrypt's cost grows with its length).
PASSWORD_MAX_LENGTH = 128


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def password_hash_make(password: str, salt: bytes | None = None) -> str:
    """The hash text of `password` with `salt` (SALT_BYTES bytes; None: a new random one).
    ValueError for an empty password or one longer than PASSWORD_MAX_LENGTH (the message never
    holds the password), or a salt of another length."""
    if not isinstance(password, str) or not 1 <= len(password) <= PASSWORD_MAX_LENGTH:
        raise ValueError(f"a password is 1 to {PASSWORD_MAX_LENGTH} characters")
    if salt is None:
        salt = secrets.token_bytes(SALT_BYTES)
    elif len(salt) != SALT_BYTES:
        raise ValueError(f"a salt is {SALT_BYTES} bytes")
    key = hashlib.scrypt(password_normal(password).encode(), salt=salt, n=1 << LOG2_N, r=R,
                         p=P,
                         maxmem=_MAXMEM, dklen=KEY_BYTES)
    return f"scrypt${LOG2_N}${R}${P}${_b64(salt)}${_b64(key)}"


def password_hash_ok(text: str) -> bool:
    """Whether `text` has the hash's shape and parameters within the bounds (HASH_PATTERN)."""
    return _HASH_RE.match(text) is not None


def password_check(password: str, hashed: str) -> bool:
    """Whether `password` is the one `hashed` was made from; False for a malformed hash or an
    over-long password. CPU-bound (about 0.18 s measured on a 2-core machine): an async caller
    runs it in a thread."""
    if len(password) > PASSWORD_MAX_LENGTH or not password_hash_ok(hashed):
        return False
    _, log2_n, r, p, salt, key = hashed.split("$")
    expected = _unb64(key)

    def matches(text: str) -> bool:
        got = hashlib.scrypt(text.encode(), salt=_unb64(salt), n=1 << int(log2_n), r=int(r),
                             p=int(p), maxmem=_MAXMEM, dklen=len(expected))
        return hmac.compare_digest(got, expected)

    normal = password_normal(password)
    # The text as typed too, when it is not in normal form and the normal form failed: a hash
    # made before passwords were normalised (a second check only for such input).
    return matches(normal) or (normal != password and matches(password))


def password_normal(password: str) -> str:
    """The form of a password that is hashed and checked: Unicode NFKC. NIST SP 800-63B
    §5.1.1.2: verifiers SHOULD apply the Normalization Process for Stabilized Strings with NFKC
    or NFKD, so that "café" typed on one system (U+00E9) and pasted from another (e + U+0301)
    is one password, as it is to its user."""
    return unicodedata.normalize("NFKC", password)
