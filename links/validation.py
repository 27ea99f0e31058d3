"""What the master accepts as a link's target: the one check every way a longurl enters calls.

`longurl_check` is the entry point: PUT /create, the admin's change form and any import go
through links.services.link_create / link_update, which call it, so no path can skip a rule
(tests/links/test_one_validation.py reads the code to show there is no other path). In order:
  * the one longurl definition that replicas also apply (topics/longurls.py: scheme,
    host, port, percent-encoding, IDNA), giving the stored form;
  * its length in that stored form, not as given (SHORTENER_MAX_URL_LENGTH);
  * the service's own public hosts (SHORTENER_PUBLIC_HOSTS): a short link to a short link;
  * unless SHORTENER_ALLOW_PRIVATE_TARGETS, hosts that lead each clicker to their own machine
    or network, IPv6 addresses that carry such an IPv4 address included (NAT64, 6to4, Teredo);
  * the operators' blocklist (links.protection.host_blocked), the host and every domain above it.
Every refusal is a LongurlRefused whose code names the rule; /create counts it in
shortener_create_refused_total{reason=code}.
"""

from __future__ import annotations

import ipaddress
import logging

from django.conf import settings
from django.core.exceptions import ValidationError

from links import protection
from topics import longurls

logger = logging.getLogger(__name__)


class LongurlRefused(ValidationError):
    """A longurl the master does not accept. `code` names the rule (a metric label: one of
    longurls.LongurlError's codes, "type", "too_long", "own_host", "private_host",
    "blocked_host"); `message` says what is wrong, for the user. A django ValidationError, so a
    form shows the message on its field as it is."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message, code=code)


_own_cache: tuple[tuple[str, ...], frozenset[str], tuple[str, ...]] | None = None


def _own_hosts() -> tuple[frozenset[str], tuple[str, ...]]:
    """(exact hosts, domains whose subdomains count too), from SHORTENER_PUBLIC_HOSTS in
    ALLOWED_HOSTS syntax; cached per value of the setting."""
    global _own_cache
    entries = tuple(settings.SHORTENER_PUBLIC_HOSTS)
    cached = _own_cache
    if cached is None or cached[0] != entries:
        exact: set[str] = set()
        domains: list[str] = []
        for entry in entries:
            if not entry or entry == "*":
                continue
            try:
                host = longurls.host_normalize(entry.lstrip("."))
            except longurls.LongurlError:
                logger.warning("SHORTENER_PUBLIC_HOSTS: %r is not a host; ignored", entry)
                continue
            exact.add(host)
            if entry.startswith("."):
                domains.append(host)
        cached = _own_cache = (entries, frozenset(exact), tuple(domains))
    return cached[1], cached[2]


def _host_is_own(host: str) -> bool:
    """Whether `host` (comparable form, longurls.host_of) is one of the service's own public
    hosts (SHORTENER_PUBLIC_HOSTS)."""
    exact, domains = _own_hosts()
    return host in exact or any(host.endswith(f".{d}") for d in domains)


# IPv6 forms whose last 32 bits are an IPv4 address that the packet is delivered to, by a
# translator or tunnel on the clicker's side (or the clicker's own stack).
_IPV4_IN_LOW_BITS = (
    ipaddress.IPv6Network("64:ff9b::/96"),      # NAT64's well-known prefix (RFC 6052 §2.1)
    ipaddress.IPv6Network("::/96"),             # IPv4-compatible, deprecated (RFC 4291 §2.5.5.1)
    ipaddress.IPv6Network("::ffff:0:0:0/96"),   # SIIT's IPv4-translated (RFC 2765 §2.1)
)
# NAT64's local-use prefix (RFC 8215): within it each network places the IPv4 address where its
# own prefix length says (RFC 6052 §2.2), and IANA lists it as not globally reachable; Python
# says so only from 3.12.4 / 3.11.10 (3.11.7 calls it global), so it is named here.
_NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")


def _ipv6_is_private(address: ipaddress.IPv6Address) -> bool:
    """Whether an IPv6 address is not globally reachable itself, or carries an IPv4 address
    that is not: IPv4-mapped (RFC 4291 §2.5.5.2: judged by its IPv4 address alone), NAT64
    (RFC 6052 well-known prefix; RFC 8215 local-use prefix, all of it), 6to4 (RFC 3056 §2),
    Teredo (RFC 4380 §4: its server and its client), IPv4-compatible and IPv4-translated."""
    mapped = address.ipv4_mapped
    if mapped is not None:
        return not mapped.is_global
    if not address.is_global or address in _NAT64_LOCAL_USE:
        return True
    embedded = [address.sixtofour, *(address.teredo or ())]
    if any(address in network for network in _IPV4_IN_LOW_BITS):
        embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF))
    return any(v4 is not None and not v4.is_global for v4 in embedded)


def _host_is_private(host: str) -> bool:
    """Whether `host` (comparable form: an IPv6 address without brackets, compressed; never a
    zone id, which longurls refuses) leads to the clicker's own machine or network: an IP
    address that is not globally reachable (Python's ipaddress `is_global`: loopback, private,
    link-local, shared, documentation and reserved ranges, after the IANA registries), an IPv6
    address that carries such an IPv4 address (_ipv6_is_private), or a "localhost" name
    (RFC 6761 §6.3: always the loopback)."""
    try:
        if not longurls.may_be_ip(host):
            raise ValueError(host)  # a name: the same answer, without ip_address's cost
        address = ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost" or host.endswith(".localhost")
    if isinstance(address, ipaddress.IPv6Address):
        return _ipv6_is_private(address)
    return not address.is_global


def longurl_rules_check(value: object) -> tuple[str, str]:
    """The checks of longurl_check that need no database (all but the blocklist): returns
    (stored form, comparable host); raises LongurlRefused. Only longurl_check calls it; it is
    public so that the rules can be tested as a pure function."""
    if not isinstance(value, str):
        raise LongurlRefused(f"longurl must be a string, not {type(value).__name__}",
                             code="type")
    try:
        stored, host = longurls.longurl_split(value)
    except longurls.LongurlError as exc:
        raise LongurlRefused(str(exc), code=exc.code) from None
    limit = settings.SHORTENER_MAX_URL_LENGTH
    if len(stored) > limit:
        # On the stored form, which every redirect sends: a non-ASCII character counts as its
        # percent-encoding (e.g. 6 for "é"), an internationalized host as its A-labels.
        raise LongurlRefused(
            f"longurl is longer than {limit} characters in the form it is stored and redirected "
            f"to: {len(stored)} (IDNA host, non-ASCII characters percent-encoded), "
            f"{len(value)} as given", code="too_long")
    if _host_is_own(host):
        raise LongurlRefused(
            f"longurl points at this service itself ({longurls.host_display(host)}): a short "
            "link to a short link", code="own_host")
    if not settings.SHORTENER_ALLOW_PRIVATE_TARGETS and _host_is_private(host):
        raise LongurlRefused(
            f"longurl points at {longurls.host_display(host)}, a local or private address: "
            "every clicker would reach their own machine or network, not yours",
            code="private_host")
    return stored, host


def longurl_check(value: object) -> str:
    """The stored form of an acceptable longurl (IDNA host, percent-encoded as it is sent);
    raises LongurlRefused (code and message: see the module's docstring) otherwise.

    Reads the blocklist (links.protection: this process's copy, reloaded from PostgreSQL every
    SHORTENER_BLOCKLIST_CACHE_SECONDS), so it may raise django.db.DatabaseError when PostgreSQL
    is unreachable. A stored form is a fixed point: checking it again gives it back.
    """
    stored, host = longurl_rules_check(value)
    blocked = protection.host_blocked(host)
    if blocked is not None:
        raise LongurlRefused(
            f"links to {longurls.host_display(blocked)} and its subdomains are not accepted "
            "here (blocked by the operators)", code="blocked_host")
    return stored
