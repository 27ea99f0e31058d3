"""Abuse protection of PUT /create: the host blocklist (its rows and this process's copy), API
keys and the rate limit's client identity. (The limiter itself is links/ratelimit.py; what a
longurl is, topics/longurls.py; what the master accepts as a target, with the
blocklist among its checks, links/validation.py; taking down the links to blocked hosts,
links/services.py.)"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import secrets
import threading
import time

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from links.models import ApiKey, BlockedHost
from topics import longurls

logger = logging.getLogger(__name__)

# --- the host blocklist -----------------------------------------------------------------------

_blocklist_lock = threading.Lock()
_blocklist: tuple[float, frozenset[str]] | None = None


def blocklist_cache_clear() -> None:
    """Forget this process's copy of the blocklist (the admin calls it after a change; other
    processes see the change within SHORTENER_BLOCKLIST_CACHE_SECONDS)."""
    global _blocklist
    _blocklist = None


def _blocked_hosts() -> frozenset[str]:
    # The whole blocklist in memory, reloaded every SHORTENER_BLOCKLIST_CACHE_SECONDS: a
    # /create then costs no query for it, and a check is a set lookup per label of the host.
    # An operator's list is small (hosts typed into the admin); a huge feed would want a
    # query per /create on the unique index instead.
    global _blocklist
    now = time.monotonic()
    cached = _blocklist
    if cached is None or now - cached[0] >= settings.SHORTENER_BLOCKLIST_CACHE_SECONDS:
        with _blocklist_lock:
            cached = (now, frozenset(BlockedHost.objects.values_list("host", flat=True)))
            _blocklist = cached
    return cached[1]


def host_blocked(host: str) -> str | None:
    """The blocklist entry that covers `host` (comparable form): the host itself or a domain
    it is under; None if it is not blocked."""
    blocked = _blocked_hosts()
    if not blocked:
        return None
    for candidate in longurls.host_suffixes(host):
        if candidate in blocked:
            return candidate
    return None


def blocked_host_add(*, host: str, reason: str = "") -> BlockedHost:
    """Block `host` (any spelling: longurls.host_normalize) and its subdomains. Idempotent.
    Raises longurls.LongurlError if `host` is not a host."""
    normalized = longurls.host_normalize(host)
    blocked, _ = BlockedHost.objects.get_or_create(host=normalized, defaults={"reason": reason})
    blocklist_cache_clear()
    return blocked


# --- API keys ---------------------------------------------------------------------------------

TOKEN_PREFIX = "sk_"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def api_key_create(*, name: str) -> tuple[ApiKey, str]:
    """A new key and its token ("sk_" + 43 URL-safe characters: 256 bits from the OS's
    CSPRNG). Only the token's sha256 is stored: show the token now, it cannot be shown again."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey.objects.create(name=name, prefix=token[:10], digest=_digest(token))
    return key, token


def api_key_revoke(*, key: ApiKey) -> None:
    """Revoke `key`: /create answers 403 to it from the next request on. Idempotent."""
    with transaction.atomic():
        ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    key.refresh_from_db()


class AuthMissing(Exception):
    """No usable credentials (answer 401 with WWW-Authenticate)."""


class AuthRefused(Exception):
    """Credentials that are not a valid key: unknown or revoked (answer 403)."""


def create_authenticate(*, authorization: str | None) -> ApiKey | None:
    """The API key of a /create request, from its Authorization header.

    With SHORTENER_CREATE_AUTH=key a key is required: AuthMissing without a Bearer token. In
    both modes a key that is sent is checked (a client that sends one expects it to count):
    AuthRefused if it is unknown or revoked. Returns None in open mode without a header.
    The lookup is by the token's sha256 on a unique index: its timing says nothing about the
    token (the hash's preimage).
    """
    if not authorization:
        if settings.SHORTENER_CREATE_AUTH == "key":
            raise AuthMissing("an API key is required: send 'Authorization: Bearer <key>'")
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    # Authentication schemes are case-insensitive (RFC 9110 §11.1); Bearer is RFC 6750's.
    if scheme.lower() != "bearer" or not token:
        raise AuthMissing("the Authorization header must be 'Bearer <key>'")
    key = ApiKey.objects.filter(digest=_digest(token)).first()
    if key is None:
        raise AuthRefused("unknown API key")
    if key.revoked_at is not None:
        raise AuthRefused("this API key was revoked")
    return key


# --- the rate limit's client ------------------------------------------------------------------


def client_identity(*, request: HttpRequest, key: ApiKey | None) -> str:
    """Who a /create counts against: its API key, else its address. An IPv6 address counts by
    its /64, the smallest block a single subscriber is usually given (RFC 6177), so a client
    cannot escape the limit by changing its interface identifier.

    The address is REMOTE_ADDR, or with SHORTENER_TRUSTED_PROXIES=n the n-th entry of
    X-Forwarded-For from the right (the one the outermost trusted proxy saw).
    """
    return client_identity_of(remote_addr=request.META.get("REMOTE_ADDR", ""),
                              forwarded_for=request.META.get("HTTP_X_FORWARDED_FOR", ""), key=key)


def client_identity_of(*, remote_addr: str, forwarded_for: str, key: ApiKey | None) -> str:
    """client_identity from the connection's address and the X-Forwarded-For header's value
    ("" if none; several fields joined by ","), for a caller without a Django request."""
    if key is not None:
        return f"key:{key.pk}"
    address = remote_addr
    proxies = settings.SHORTENER_TRUSTED_PROXIES
    if proxies > 0:
        forwarded = [a.strip() for a in forwarded_for.split(",") if a.strip()]
        if len(forwarded) >= proxies:
            address = forwarded[-proxies]
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"addr:{address[:64]}"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is None:
            return f"net:{ipaddress.IPv6Network((ip, 64), strict=False)}"
        ip = ip.ipv4_mapped
    return f"addr:{ip}"
