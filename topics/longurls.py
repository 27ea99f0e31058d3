"""What a longurl is: the one definition used by the master when it accepts a link (/create)
and by every replica when it applies the link's record. Whatever the master accepts, every
replica serves; a record that fails here on a replica is a bug or a newer schema, never a
quiet 404 (it is logged with its offset and counted).

The principle: whatever is accepted, a browser, curl and Python's standard library can follow
from the `Location` a replica sends, to the place the user meant; whatever they could not
follow, or could be misled by, is refused with a message that says what is wrong.

The stored form. /create stores, returns and publishes a longurl in the form it is sent in
(`longurl_normalize`): an internationalized host becomes its IDNA A-label ("punycode"),
characters that may not appear in a URI are percent-encoded (UTF-8), and everything else stays
byte for byte as given (no case folding of scheme or host, no port or path normalization). That
form is a fixed point of Django's `iri_to_uri`, which `HttpResponseRedirect` applies to build
`Location`, so a replica's `Location` is exactly the stored string.

The rules, each with its source:

1. Only `http` and `https`, in the form `scheme://host...` (RFC 9110 §4.2.1, §4.2.2). Browsers
   read `https:/host` and `https:///host` as `https://host`, Python as a URL without a host
   (WHATWG URL Standard, "special authority ignore slashes state"), so those are refused.
2. No whitespace or control characters (C0, DEL, C1) anywhere: RFC 3986 §2 has no place for
   them, browsers silently strip some of them (WHATWG URL Standard, basic URL parser step 2-3),
   and in a header they would split it. No lone UTF-16 surrogates (not Unicode characters, no
   UTF-8 form).
3. No backslash: browsers read `\\` as `/` in http(s) URLs (WHATWG URL Standard, "path start
   state"), Python and curl do not, so `https://a.example\\@b.example/` goes to a different
   host depending on the client.
4. No userinfo (`user:password@`): deprecated in http(s) URLs (RFC 9110 §4.2.4) and the classic
   way to make a link look like another site (`https://bank.example@evil.example/`).
5. The host is one of:
   - an IPv6 literal `[...]` that Python's `ipaddress` accepts (RFC 3986 §3.2.2); no zone id
     (RFC 6874 is not supported by browsers) and no IPvFuture literal;
   - an IPv4 address in dotted-decimal form. Any other host whose last label is a number is
     refused: browsers read `0x7f.1` or `2130706433` as an IPv4 address (WHATWG URL Standard,
     "ends in a number checker" and IPv4 parser), which no other client does;
   - a domain name. A non-ASCII one is converted with the `idna` package (IDNA 2008, RFC 5891,
     after UTS #46 mapping, non-transitional as browsers do since 2023); what it refuses is
     refused (e.g. emoji and symbol labels, which IDNA 2008 disallows although some browsers
     still map them). ASCII labels are letters, digits, `-` and `_` (underscore: not a
     host-name character under RFC 1123 §2.1, but resolved and followed by browsers, curl and
     Python, and found in real links), 1 to 63 characters each, at most 253 in all with an
     optional final dot (RFC 1035 §2.3.4); a label starting `xn--` must be a valid A-label
     (RFC 5890 §2.3.2.1). No `%` in the host: browsers decode percent-encoding there (WHATWG
     URL Standard, host parser step 4), Python and curl send it as it is.
6. The port, if any, is decimal digits, at most 65535, and not one that browsers refuse to
   connect to (the Fetch Standard's "bad port" list, §2.9 "port blocking"; port 0 included).
7. In the path, query and fragment every `%` starts a percent-encoding `%XX` (RFC 3986 §2.1):
   a lone `%` is read differently by different servers and clients. Non-ASCII characters and
   the ASCII characters RFC 3986 does not allow (`"`, `<`, `>`, `^`, the backtick, `{`, `|`,
   `}`) are percent-encoded as UTF-8 (RFC 3987 §3.1, as Django's `iri_to_uri` does).
8. The stored form is at most `SERVABLE_MAX_LENGTH` characters: Django's redirect refuses longer
   targets (`django.utils.http.MAX_URL_REDIRECT_LENGTH`, 16,384). /create applies the smaller
   `SHORTENER_MAX_URL_LENGTH` (links/validation.py), also to the stored form, so that what is
   accepted is what is sent.

Policy that is the master's alone (its own hosts, private addresses, the host blocklist) lives
in links/: a replica serves whatever record the master published, as long as it is servable.

Pure functions, no Django models: the replica imports this without a database.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from urllib.parse import quote, urlsplit

import idna
from django.utils.http import MAX_URL_REDIRECT_LENGTH

# Django's HttpResponseRedirect refuses a longer target (DisallowedRedirect); Python's
# http.client reads header lines of up to 65,536 bytes, so it is never the limit here.
SERVABLE_MAX_LENGTH = MAX_URL_REDIRECT_LENGTH

# The Fetch Standard's bad ports (https://fetch.spec.whatwg.org/#port-blocking): browsers refuse
# to connect to them, so a redirect there is a dead end in every browser.
BAD_PORTS = frozenset({
    0, 1, 7, 9, 11, 13, 15, 17, 19, 20, 21, 22, 23, 25, 37, 42, 43, 53, 69, 77, 79, 87, 95, 101,
    102, 103, 104, 109, 110, 111, 113, 115, 117, 119, 123, 135, 137, 139, 143, 161, 179, 389,
    427, 465, 512, 513, 514, 515, 526, 530, 531, 532, 540, 548, 554, 556, 563, 587, 601, 636,
    989, 990, 993, 995, 1719, 1720, 1723, 2049, 3659, 4045, 4190, 5060, 5061, 6000, 6566, 6665,
    6666, 6667, 6668, 6669, 6679, 6697, 10080,
})

# The characters Django's iri_to_uri leaves as they are (RFC 3986 reserved and unreserved, and
# "%"); quote() adds letters, digits and "_.-~". Everything else is percent-encoded as UTF-8.
_URI_SAFE = "/#%[]=:;$&()+,!?*@'~"
_BAD_PERCENT_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_LABEL_RE = re.compile(r"[A-Za-z0-9_-]{1,63}")
# WHATWG URL Standard, "ends in a number checker": the last label is decimal digits, or 0x/0X
# followed by hexadecimal digits (possibly none).
_NUMERIC_LABEL_RE = re.compile(r"[0-9]+|0[xX][0-9A-Fa-f]*")
HOST_MAX_LENGTH = 253  # RFC 1035 §2.3.4: 255 octets on the wire, 253 characters as text


class LongurlError(ValueError):
    """A longurl that cannot be accepted. `code` names the rule (a short, fixed word, used as a
    metric label); str() is the message for the user."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


_ASCII_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")


def _is_control_or_space(c: str) -> bool:
    o = ord(c)
    return o < 0x21 or 0x7F <= o < 0xA0 or c.isspace()


def longurl_normalize(value: str) -> str:
    """The stored form of `value` (see the module docstring); LongurlError if it is not
    acceptable. The stored form is ASCII and a fixed point: normalizing it again returns it.

    The length limit is not applied here (the caller knows its limit); see longurl_problem.
    """
    return longurl_split(value)[0]


def longurl_split(value: str) -> tuple[str, str]:
    """(the stored form of `value`, its host in the form used for comparisons: see host_of);
    LongurlError if `value` is not acceptable."""
    if not value:
        raise LongurlError("empty", "longurl is empty")
    if value.isascii():
        # The same two checks for the common case, in C: no surrogate is ASCII, and the ASCII
        # characters _is_control_or_space accepts are exactly these (bulk creates and a
        # replica's catch-up check every longurl; the loops below cost 18 us for a 119-character
        # one, this 0.6 us).
        if _ASCII_CONTROL_OR_SPACE.search(value):
            raise LongurlError("whitespace", "longurl contains whitespace or control characters")
    else:
        if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
            raise LongurlError("encoding", "longurl contains a lone UTF-16 surrogate, which is "
                                           "not a Unicode character")
        if any(_is_control_or_space(c) for c in value):
            raise LongurlError("whitespace", "longurl contains whitespace or control characters")
    scheme, colon, rest = value.partition(":")
    if not colon or scheme.lower() not in ("http", "https"):
        raise LongurlError("scheme", "longurl must be an absolute http:// or https:// URL")
    if not rest.startswith("//") or rest.startswith("///"):
        raise LongurlError("form", f"longurl must have the form {scheme}://host/...: browsers "
                                   "and other clients read a missing or extra slash differently")
    if "\\" in value:
        raise LongurlError("backslash", "longurl contains a backslash, which browsers read as "
                                        "'/' and other clients do not; write %5C instead")
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        raise LongurlError("invalid", f"longurl is not a valid URL: {exc}") from None
    netloc = parts.netloc
    if "@" in netloc:
        raise LongurlError("userinfo", "longurl contains a user name or password ('...@' before "
                           "the host): deprecated in http(s) URLs (RFC 9110 §4.2.4) and a common "
                           "way to disguise where a link goes")
    if not netloc:
        raise LongurlError("host", "longurl is not a valid URL: it has no host")

    # host[:port], or [IPv6][:port]
    if netloc.startswith("["):
        end = netloc.find("]")
        host, after = netloc[:end + 1], netloc[end + 1:]
        if after and not after.startswith(":"):
            raise LongurlError("host", f"longurl is not a valid URL: {netloc!r} is not a host")
        port = after[1:] if after else None
        stored_host = _ipv6_literal_check(host)
    else:
        host, colon, port_text = netloc.partition(":")
        port = port_text if colon else None
        stored_host = _host_check(host)
    if port:  # "" (a colon and nothing after it) is allowed by RFC 3986 §3.2.3: the default
        if not (port.isascii() and port.isdigit()) or int(port) > 65535:
            raise LongurlError("port", f"longurl's port {port[:20]!r} is not a number from 1 "
                                       "to 65535")
        if int(port) in BAD_PORTS:
            raise LongurlError("port", f"longurl's port {int(port)} is one that browsers refuse "
                                       "to connect to (Fetch Standard, bad ports)")

    tail = value[len(scheme) + 3 + len(netloc):]  # path, query and fragment, as given
    bad = _BAD_PERCENT_RE.search(tail)
    if bad:
        raise LongurlError("percent", "longurl contains a '%' that does not start a "
                                      "percent-encoding (%XX); write a literal % as %25")
    stored = (f"{scheme}://{stored_host}" + (f":{port}" if port is not None else "")
              + quote(tail, safe=_URI_SAFE))
    return stored, _comparable(stored_host)


def _ipv6_literal_check(host: str) -> str:
    inner = host[1:-1]
    if inner[:1] in ("v", "V"):
        raise LongurlError("host", "longurl's host is an IPvFuture literal, which browsers do "
                                   "not support")
    if "%" in inner:
        raise LongurlError("host", "longurl's host is an IPv6 literal with a zone id, which "
                                   "browsers do not support")
    try:
        ipaddress.IPv6Address(inner)
    except ValueError:
        raise LongurlError("host", f"longurl's host {host[:60]!r} is not an IPv6 address") \
            from None
    return host


def _host_check(host: str) -> str:
    """The host as it is sent (ASCII; as given if it was ASCII), or LongurlError."""
    if not host:
        raise LongurlError("host", "longurl is not a valid URL: it has no host")
    if "%" in host:
        raise LongurlError("host", "longurl's host is percent-encoded: browsers decode it, "
                                   "other clients do not; write the host as it is")
    if len(host) > HOST_MAX_LENGTH + 1:
        raise LongurlError("host", f"longurl's host is longer than {HOST_MAX_LENGTH} "
                                   "characters")
    if not host.isascii():
        host = _idna_to_ascii(host)
    name = host[:-1] if host.endswith(".") else host
    if not name or len(name) > HOST_MAX_LENGTH:
        raise LongurlError("host", f"longurl's host {host[:60]!r} is not a valid host name")
    labels = name.split(".")
    if _NUMERIC_LABEL_RE.fullmatch(labels[-1]):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise LongurlError("host", f"longurl's host {host[:60]!r} ends in a number but is "
                                       "not an IPv4 address in dotted-decimal form: browsers "
                                       "read it as an IP address, other clients as a name") \
                from None
        return host
    for label in labels:
        if not _LABEL_RE.fullmatch(label):
            raise LongurlError("host", f"longurl's host {host[:60]!r} is not a valid host name "
                                       "(labels of 1 to 63 letters, digits, '-' or '_')")
        if label[:4].lower() == "xn--":
            _alabel_check(label)
    return host


# The idna package is pure Python (~0.1 ms a host); hosts repeat (many links to one site, and
# a replica checks every record), so results are kept, per process, for the most recent ones.
@functools.lru_cache(maxsize=4096)
def _idna_to_ascii(host: str) -> str:
    try:
        # UTS #46 mapping (case, width, Unicode dots), then IDNA 2008's rules per label.
        return idna.encode(host, uts46=True, transitional=False).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise LongurlError("idna", f"longurl's host is not a valid internationalized "
                                   f"domain name (IDNA 2008, UTS #46): {exc}") from None


@functools.lru_cache(maxsize=4096)
def _alabel_check(label: str) -> None:
    try:
        ulabel = idna.decode(label.lower())
        valid = idna.encode(ulabel).decode("ascii") == label.lower()
    except (idna.IDNAError, UnicodeError):
        valid = False
    if not valid:
        raise LongurlError("idna", f"longurl's host label {label!r} is not a valid IDNA "
                                   "A-label (punycode)")


# The common case in one expression, for replicas applying records by the tens of thousands
# a second: http(s), an ASCII host whose last label starts with a letter, "-" or "_" (so it
# cannot end in a number), no A-label, and a path, query and fragment of characters RFC 3986
# allows, with valid percent-encodings. A match is servable if its port is allowed; anything
# else takes the full path (longurl_normalize). The tests check that both agree.
# The tail is written as runs of plain characters between percent-encodings,
# `plain*(?:%XX plain*)*`, the same strings as `(?:plain|%XX)*` (a plain character is never
# "%", so there is one way to match): re then takes a run in one step instead of trying the
# alternation at every character, 0.86 -> 0.38 us for a typical longurl.
_TAIL_PLAIN = r"[A-Za-z0-9._~!$&'()*+,;=:@/?#\[\]-]*"
_SERVABLE_FAST_RE = re.compile(
    r"[Hh][Tt][Tt][Pp][Ss]?://"
    r"(?P<host>(?:[A-Za-z0-9_-]{1,63}\.)*[A-Za-z_-][A-Za-z0-9_-]{0,62}\.?)"
    r"(?::(?P<port>[0-9]{0,5}))?"
    rf"(?:[/?#]{_TAIL_PLAIN}(?:%[0-9A-Fa-f]{{2}}{_TAIL_PLAIN})*)?"
)


def longurl_problem(value: str) -> str | None:
    """None if `value` can be served as a redirect target as it is; else what is wrong with it.

    `value` is the longurl exactly as stored and as it goes into a replica's Location header:
    it must be in its stored form (longurl_normalize(value) == value) and at most
    SERVABLE_MAX_LENGTH characters. Whatever /create accepted passes.
    """
    if not isinstance(value, str):
        return "not a string"
    if len(value) > SERVABLE_MAX_LENGTH:
        return f"longer than {SERVABLE_MAX_LENGTH} characters"
    fast = _SERVABLE_FAST_RE.fullmatch(value)
    if fast is not None:
        host, port = fast["host"], fast["port"]
        if (len(host.rstrip(".")) <= HOST_MAX_LENGTH and "xn--" not in host.lower()
                and (not port or int(port) not in BAD_PORTS and int(port) <= 65535)):
            return None
    return _problem_of_form(value)


# A whole batch of longurls in one match: _SERVABLE_FAST_RE without the port (rare; the port
# needs a check of its value), for each longurl, one per line ("\n" is in none of the classes,
# so a line is one longurl). A replica checks its records' longurls with it by the thousand.
_SERVABLE_LINE = _SERVABLE_FAST_RE.pattern.replace(r"(?::(?P<port>[0-9]{0,5}))?", "").replace(
    "(?P<host>", "(?:")
assert "(?P<" not in _SERVABLE_LINE  # both replaced: a line has no port and no named group
_SERVABLE_LINES_RE = re.compile(f"(?:{_SERVABLE_LINE}\n)*{_SERVABLE_LINE}")
# "http://" and HOST_MAX_LENGTH: a longurl no longer than this has a host short enough.
_SHORT_ENOUGH = len("http://") + HOST_MAX_LENGTH


def all_servable(values: list[str]) -> bool:
    """True only if longurl_problem(value) is None for every value (an empty list included);
    False says nothing about any one value: ask longurl_problem then. One regular expression
    over the whole list instead of one call each: about a third of the time per longurl."""
    if not values:
        return True
    joined = "\n".join(values)
    # Each value on its own line (a "\n" inside one would make two lines), no value longer
    # than _SHORT_ENOUGH, so no host longer than HOST_MAX_LENGTH; no A-label anywhere.
    return (joined.count("\n") == len(values) - 1
            and max(map(len, values)) <= _SHORT_ENOUGH
            and "xn--" not in joined.lower()
            and _SERVABLE_LINES_RE.fullmatch(joined) is not None)


def _problem_of_form(value: str) -> str | None:
    """longurl_problem without the fast path (and without the length limit)."""
    try:
        stored = longurl_normalize(value)
    except LongurlError as exc:
        return str(exc)
    if stored != value:
        return f"not in the form it is sent in (that would be {stored[:100]!r})"
    return None


def host_of(stored: str) -> str:
    """The host of a stored longurl in the form used for comparisons: lower case, without a
    final dot; an IPv6 literal without brackets, compressed. Raises LongurlError if `stored`
    is not acceptable."""
    return longurl_split(stored)[1]


def may_be_ip(host: str) -> bool:
    """Whether ipaddress.ip_address could take `host` (brackets stripped): an IPv6 address has
    a ':', an IPv4 one (Python takes dotted decimal only) nothing but ASCII digits and dots.
    Anything else it refuses, through two exceptions that cost 3.7 us: a name skips the parse."""
    return ":" in host or (host.isascii() and host.replace(".", "").isdigit())


def _comparable(host: str) -> str:
    host = host.lower().rstrip(".")
    if not may_be_ip(host.strip("[]")):
        return host
    try:
        return ipaddress.ip_address(host.strip("[]")).compressed
    except ValueError:
        return host


def host_normalize(text: str) -> str:
    """A host in the form used for comparisons (see host_of), from any spelling: Unicode or
    A-labels, any case, with or without a final dot or a port, or a whole URL. LongurlError if
    it is not a valid host. Used for the blocklist and the service's own hosts."""
    text = text.strip()
    try:
        return ipaddress.ip_address(text.strip("[]")).compressed
    except ValueError:
        pass
    if "://" not in text:
        text = f"http://{text}"
    try:
        netloc = urlsplit(text).netloc
    except ValueError as exc:
        raise LongurlError("host", f"not a valid host: {exc}") from None
    netloc = netloc.rpartition("@")[2]
    if netloc.startswith("["):
        host = _ipv6_literal_check(netloc[:netloc.find("]") + 1])
    else:
        host = _host_check(netloc.partition(":")[0])
    return _comparable(host)


def host_suffixes(host: str) -> list[str]:
    """`host` (comparable form) and every domain it is under, longest first:
    "a.b.example" -> ["a.b.example", "b.example", "example"]. An IP address has only itself."""
    try:
        ipaddress.ip_address(host)
        return [host]
    except ValueError:
        pass
    labels = host.split(".")
    return [".".join(labels[i:]) for i in range(len(labels))]


def host_display(host: str) -> str:
    """A comparable host in Unicode for people (A-labels decoded), for messages and the admin."""
    try:
        return idna.decode(host)
    except (idna.IDNAError, UnicodeError):
        return host
