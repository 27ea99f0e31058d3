"""The one longurl definition (topics/longurls.py) and the master's rules of
links.validation that need no database, as pure functions: each rule with inputs that break it,
and properties over generated URLs: whatever /create accepts, every replica serves as it is, a
browser's URL parser (ada, the WHATWG parser of Node.js) and Python's urllib go to the same host
and port as the user meant."""

from __future__ import annotations

import http.client
import ipaddress
import os
import re
import string
import subprocess
import sys
import urllib.request
from urllib.parse import unquote, urlsplit

import ada_url
import pytest
from django.core.exceptions import ValidationError
from django.test import override_settings
from django.utils.encoding import iri_to_uri
from hypothesis import HealthCheck, assume, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from links.validation import longurl_rules_check
from testkit import ROOT
from topics import longurls
from topics.longurls import (
    LongurlError,
    host_normalize,
    host_suffixes,
    longurl_normalize,
    longurl_problem,
)

# (what it is, the input, its stored form: what /create returns and replicas send)
ACCEPTED = [
    ("idn host", "https://bücher.example/x", "https://xn--bcher-kva.example/x"),
    ("idn host, unicode path, query and fragment", "https://пример.рф/путь?q=значение#раздел",
     "https://xn--e1afmkfd.xn--p1ai/%D0%BF%D1%83%D1%82%D1%8C?q=%D0%B7%D0%BD%D0%B0%D1%87%D0%B5"
     "%D0%BD%D0%B8%D0%B5#%D1%80%D0%B0%D0%B7%D0%B4%D0%B5%D0%BB"),
    ("idn host in upper case", "https://BÜCHER.example/X", "https://xn--bcher-kva.example/X"),
    ("an A-label as given", "https://xn--bcher-kva.example/x", None),
    ("upper-case scheme and host stay", "HTTPS://EXAMPLE.ORG/Path", None),
    ("full-width letters (UTS #46 mapping)", "https://ｅｘａｍｐｌｅ.org/", "https://example.org/"),
    ("ideographic full stop (UTS #46 mapping)", "https://bücher。example/",
     "https://xn--bcher-kva.example/"),
    ("sharp s, non-transitional like browsers", "https://faß.example/",
     "https://xn--fa-hia.example/"),
    ("characters RFC 3986 does not allow", 'https://example.org/a|b^c{d}e`f"g<h>i',
     "https://example.org/a%7Cb%5Ec%7Bd%7De%60f%22g%3Ch%3Ei"),
    ("brackets in the query stay", "https://example.org/?a[]=1&a[]=2", None),
    ("percent-encodings stay", "https://example.org/%7Euser/%e2%9c%93?q=%2F#%20", None),
    ("emoji in the path", "https://example.org/😀", "https://example.org/%F0%9F%98%80"),
    ("IPv6 literal with a port", "http://[2606:4700:4700::1111]:8080/x", None),
    ("IPv6 literal in upper case", "http://[2606:4700:4700::ABCD]/", None),
    ("IPv4 address", "http://93.184.215.14/x", None),
    ("a port", "https://example.org:8443/x", None),
    ("the default port", "https://example.org:443/x", None),
    ("an empty port (RFC 3986 §3.2.3)", "https://example.org:/x", None),
    ("a final dot", "https://example.org./x", None),
    ("an underscore in a label", "https://my_host.example.org/", None),
    ("hyphens in the 3rd and 4th place", "https://r3---sn-abc.googlevideo.com/v", None),
    ("a query and no path", "https://example.org?q=1", None),
    ("no path at all", "https://example.org", None),
    ("@ and : in the path", "https://example.org/@user:name", None),
    ("dot segments stay", "https://example.org/a/../b/./c", None),
]

# (what it is, the input, the rule's code, a fragment of the message)
REFUSED = [
    ("userinfo", "https://user:secret@example.org/", "userinfo", "RFC 9110"),
    ("userinfo that looks like a host", "https://bank.example@evil.example/", "userinfo",
     "RFC 9110"),
    ("empty userinfo", "https://@example.org/", "userinfo", "user name"),
    ("percent-encoded host", "https://%65vil.example/", "host", "percent-encoded"),
    ("backslash before @", "https://example.org\\@evil.example/", "backslash", "backslash"),
    ("backslash in the path", "https://example.org/a\\b", "backslash", "backslash"),
    ("one slash", "https:/example.org/", "form", "https://host"),
    ("three slashes", "https:///example.org/", "form", "https://host"),
    ("no slashes", "https:example.org", "form", "https://host"),
    ("no host", "https://", "host", "no host"),
    ("no host, a port", "https://:80/", "host", "no host"),
    ("hexadecimal IPv4", "http://0x7f.1/", "host", "IPv4"),
    ("integer IPv4", "http://2130706433/", "host", "IPv4"),
    ("short IPv4", "http://127.1/", "host", "IPv4"),
    ("octal IPv4", "http://0177.0.0.1/", "host", "IPv4"),
    ("IPv4 with a final dot", "http://93.184.215.14./", "host", "IPv4"),
    ("a name ending in a number", "https://example.123/", "host", "ends in a number"),
    ("empty label", "https://a..example/", "host", "not a valid host name"),
    ("leading dot", "https://.example.org/", "host", "not a valid host name"),
    ("label of 64 characters", f"https://{'a' * 64}.example/", "host", "not a valid host name"),
    ("host of 254 characters", f"https://{'a.' * 126}ab/", "host", "not a valid host name"),
    ("forbidden character in the host", "https://exa!mple.org/", "host", "not a valid host name"),
    ("emoji host (not IDNA 2008)", "https://💩.la/", "idna", "IDNA 2008"),
    ("symbol in the host", "https://a☃b.example/", "idna", "IDNA 2008"),
    ("invalid A-label", "https://xn--zz.example/", "idna", "A-label"),
    ("A-label of a disallowed character", "https://xn--ls8h.la/", "idna", "A-label"),
    ("IPvFuture literal", "http://[v1.fe]/", "host", "IPvFuture"),
    ("IPv6 zone id", "http://[fe80::1%25eth0]/", "host", "zone id"),
    ("not an IPv6 address", "http://[1:2:3]/", "invalid", "not a valid URL"),
    ("a bad port (SMTP)", "https://example.org:25/", "port", "refuse"),
    ("a bad port (IRC)", "http://example.org:6667/", "port", "refuse"),
    ("port 0", "http://example.org:0/", "port", "refuse"),
    ("port out of range", "http://example.org:65536/", "port", "65535"),
    ("a port that is not a number", "http://example.org:8o/", "port", "65535"),
    ("a lone %", "https://example.org/100%", "percent", "%25"),
    ("% and one hex digit", "https://example.org/?q=%A", "percent", "%25"),
    ("% in the fragment", "https://example.org/#%zz", "percent", "%25"),
    ("space", "https://example.org/a b", "whitespace", "whitespace"),
    ("tab", "https://example.org/a\tb", "whitespace", "whitespace"),
    ("no-break space", "https://example.org/a\u00a0b", "whitespace", "whitespace"),
    ("C1 control", "https://example.org/\u0085", "whitespace", "control"),
    ("CR LF (header splitting)", "https://example.org/\r\nSet-Cookie: a=b", "whitespace",
     "control"),
    ("lone surrogate", "https://example.org/\ud800", "encoding", "surrogate"),
    ("ftp", "ftp://example.org/", "scheme", "http"),
    ("javascript", "javascript:alert(1)", "scheme", "http"),
    ("relative", "/just/a/path", "scheme", "http"),
    ("empty", "", "empty", "empty"),
]

PRIVATE = [
    "http://127.0.0.1/", "http://10.1.2.3/", "http://192.168.1.1/admin", "http://172.16.0.1/",
    "http://169.254.169.254/latest/meta-data/", "http://0.0.0.0/", "http://100.64.0.1/",
    "http://[::1]/", "http://[fe80::1]/", "http://[fd00::1]/", "http://[::ffff:127.0.0.1]/",
    "http://[2001:db8::1]/", "http://192.0.2.1/", "http://localhost:8000/", "http://LOCALHOST./",
    "http://api.localhost/",
    # IPv6 forms that carry a loopback or private IPv4 address (tested over their space below).
    "http://[64:ff9b::7f00:1]/", "http://[64:ff9b:1::a00:1]/", "http://[2002:7f00:1::]/",
    "http://[::127.0.0.1]/", "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",
]


@pytest.mark.parametrize("name,given,stored", ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_accepted_longurls_are_stored_in_the_form_they_are_sent(name, given, stored):
    stored = stored or given
    assert longurl_validate(given) == stored
    assert longurl_problem(stored) is None
    assert longurl_validate(stored) == stored  # a fixed point
    assert iri_to_uri(stored) == stored  # what Django's HttpResponseRedirect puts in Location


@pytest.mark.parametrize("name,given,code,fragment", REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_longurls_say_why(name, given, code, fragment):
    with pytest.raises(ValidationError) as caught:
        longurl_validate(given)
    assert caught.value.error_list[0].code == code
    assert fragment in caught.value.messages[0]
    # ... and a replica would not serve it either.
    assert longurl_problem(given) is not None


@pytest.mark.parametrize("given", PRIVATE)
def test_hosts_that_lead_each_clicker_to_their_own_network_are_refused(given):
    with pytest.raises(ValidationError) as caught:
        longurl_validate(given)
    assert caught.value.error_list[0].code in ("private_host", "own_host")
    # Servable, though: only the master's policy refuses them.
    assert longurl_problem(longurl_normalize(given)) is None


def test_private_hosts_are_allowed_when_the_setting_says_so():
    with override_settings(SHORTENER_ALLOW_PRIVATE_TARGETS=True, SHORTENER_PUBLIC_HOSTS=[]):
        assert longurl_validate("http://10.1.2.3:8080/wiki") == "http://10.1.2.3:8080/wiki"
        assert longurl_validate("http://[fd00::1]/") == "http://[fd00::1]/"


# IPv6 forms that embed an IPv4 address the packet goes to: the IPv6 address from the IPv4 one.
EMBEDDING = {
    "nat64": lambda v4, low: (0x0064_FF9B << 96) | v4,                     # RFC 6052 §2.1
    "6to4": lambda v4, low: (0x2002 << 112) | (v4 << 80) | low,            # RFC 3056 §2
    "ipv4-compatible": lambda v4, low: v4,                                 # RFC 4291 §2.5.5.1
    "ipv4-translated": lambda v4, low: (0xFFFF << 48) | v4,                # RFC 2765 §2.1
    "ipv4-mapped": lambda v4, low: (0xFFFF << 32) | v4,                    # RFC 4291 §2.5.5.2
    # Teredo (RFC 4380 §4): 2001:0:<server>:<flags>:<port>:<client>, port and client inverted
    # bit by bit; the other end at a global address (65.54.227.120, 8.8.8.8).
    "teredo client": lambda v4, low: (0x2001_0000_4136_E378 << 64) | ((low & 0xFFFF) << 32)
    | (v4 ^ 0xFFFF_FFFF),
    "teredo server": lambda v4, low: (0x2001 << 112) | (v4 << 64) | (0x0808_0808 ^ 0xFFFF_FFFF),
}

NOT_GLOBAL_V4 = [ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "240.0.0.0/4", "255.255.255.255/32")]
# Drawn from the ranges IANA lists as not globally reachable, kept where Python agrees (its
# is_global is the rule: e.g. 192.0.0.8 is global for Python 3.11.7).
not_global_v4 = st.sampled_from(NOT_GLOBAL_V4).flatmap(
    lambda net: st.integers(int(net.network_address), int(net.broadcast_address))).filter(
    lambda n: not ipaddress.IPv4Address(n).is_global)
global_v4 = st.integers(0, 2**32 - 1).filter(lambda n: ipaddress.IPv4Address(n).is_global)
spelling = st.sampled_from([lambda a: a.compressed, lambda a: a.exploded,
                            lambda a: a.compressed.upper()])


def _private_refusal(url: str) -> str:
    with override_settings(SHORTENER_PUBLIC_HOSTS=[], SHORTENER_ALLOW_PRIVATE_TARGETS=False):
        with pytest.raises(ValidationError) as caught:
            longurl_validate(url)
    assert caught.value.error_list[0].code == "private_host"
    return caught.value.messages[0]


@hsettings(max_examples=300, deadline=None)
@given(form=st.sampled_from(sorted(EMBEDDING)), v4=not_global_v4,
       low=st.integers(0, 2**80 - 1), spell=spelling)
@example(form="nat64", v4=0x7F00_0001, low=0, spell=lambda a: a.compressed)
def test_an_ipv6_address_carrying_a_private_ipv4_address_is_refused_as_that_address(
        form, v4, low, spell):
    """Refused with the code and the message of a private address, however the literal is
    written (compressed, in full, upper case)."""
    address = ipaddress.IPv6Address(EMBEDDING[form](v4, low))
    message = _private_refusal(f"http://[{spell(address)}]:8080/x")
    assert message == _private_refusal(f"http://{ipaddress.IPv4Address(v4)}/").replace(
        str(ipaddress.IPv4Address(v4)), address.compressed)


@hsettings(max_examples=300, deadline=None)
@given(form=st.sampled_from(["nat64", "6to4", "ipv4-compatible", "ipv4-translated",
                             "ipv4-mapped"]),
       v4=global_v4, low=st.integers(0, 2**80 - 1))
def test_an_ipv6_address_carrying_a_global_ipv4_address_is_accepted(form, v4, low):
    url = f"http://[{ipaddress.IPv6Address(EMBEDDING[form](v4, low))}]/x"
    with override_settings(SHORTENER_PUBLIC_HOSTS=[], SHORTENER_ALLOW_PRIVATE_TARGETS=False):
        assert longurl_validate(url) == url


@hsettings(max_examples=100, deadline=None)
@given(v4=st.integers(0, 2**32 - 1), low=st.integers(0, 2**80 - 1))
def test_the_nat64_local_use_prefix_is_refused_whatever_it_carries(v4, low):
    """64:ff9b:1::/48 (RFC 8215): each network places the IPv4 address after its own prefix
    length, and the whole prefix is not globally reachable."""
    address = ipaddress.IPv6Address((0x0064_FF9B_0001 << 80) | (low ^ v4))
    _private_refusal(f"http://[{address}]/")


def test_an_ipv6_literal_with_a_zone_id_is_refused_before_its_address_is_judged():
    with pytest.raises(ValidationError) as caught:
        longurl_validate("http://[64:ff9b::7f00:1%25eth0]/")
    assert caught.value.error_list[0].code == "host"
    _private_refusal("http://[64:ff9b::127.0.0.1]/")  # the dotted-quad spelling


@pytest.mark.parametrize("public,given,own", [
    (["sho.rt"], "https://sho.rt/abcDEF1", True),
    (["sho.rt"], "https://SHO.RT.:8443/abcDEF1", True),
    (["sho.rt"], "https://www.sho.rt/abcDEF1", False),  # "sho.rt": that host only
    ([".sho.rt"], "https://www.sho.rt/abcDEF1", True),  # ".sho.rt": and its subdomains
    ([".sho.rt"], "https://sho.rt/abcDEF1", True),
    (["bücher.example"], "https://xn--bcher-kva.example/x", True),
    (["*", "sho.rt"], "https://example.org/", False),
    (["203.0.113.7"], "http://203.0.113.7:8001/abcDEF1", True),
])
def test_the_services_own_hosts_are_refused(public, given, own):
    with override_settings(SHORTENER_PUBLIC_HOSTS=public, SHORTENER_ALLOW_PRIVATE_TARGETS=True):
        if own:
            with pytest.raises(ValidationError) as caught:
                longurl_validate(given)
            assert caught.value.error_list[0].code == "own_host"
        else:
            longurl_validate(given)


def test_public_hosts_default_to_the_hosts_the_server_answers_to():
    def public_hosts(**env: str) -> str:
        code = "from django.conf import settings; print(settings.SHORTENER_PUBLIC_HOSTS)"
        return subprocess.run(
            [sys.executable, "-c", f"import django; django.setup(); {code}"], cwd=ROOT,
            env={**os.environ, "DJANGO_SETTINGS_MODULE": "shortener_project.settings", **env},
            capture_output=True, text=True, check=True).stdout.strip()

    assert public_hosts(DJANGO_ALLOWED_HOSTS="sho.rt,.go.example,*") == "['sho.rt', '.go.example']"
    explicit = public_hosts(DJANGO_ALLOWED_HOSTS="sho.rt",
                            SHORTENER_PUBLIC_HOSTS="a.example,b.example")
    assert explicit == "['a.example', 'b.example']"


def test_length_is_measured_on_the_stored_form_and_the_message_says_so():
    from django.conf import settings

    limit = settings.SHORTENER_MAX_URL_LENGTH
    base = "https://example.org/"
    assert len(longurl_validate(base + "a" * (limit - len(base)))) == limit
    with pytest.raises(ValidationError) as caught:
        longurl_validate(base + "a" * (limit - len(base) + 1))
    assert caught.value.messages[0] == (
        f"longurl is longer than {limit} characters in the form it is stored and redirected to: "
        f"{limit + 1} (IDNA host, non-ASCII characters percent-encoded), {limit + 1} as given")
    # 720 characters given, 8,420 stored: each emoji is 12 characters percent-encoded.
    with pytest.raises(ValidationError) as caught:
        longurl_validate(base + "😀" * 700)
    assert caught.value.messages[0].endswith(f": {len(base) + 12 * 700} (IDNA host, non-ASCII "
                                             f"characters percent-encoded), 720 as given")
    # ... and a longurl of fewer characters as given than stored is judged on the stored form.
    assert len(longurl_validate(base + "é" * ((limit - len(base)) // 6))) <= limit
    assert longurl_problem("https://example.org/" + "a" * longurls.SERVABLE_MAX_LENGTH) \
        == f"longer than {longurls.SERVABLE_MAX_LENGTH} characters"


def test_a_replica_refuses_what_is_not_in_its_stored_form():
    # A record written by hand or by an older master: Unicode where it is sent encoded.
    assert "not in the form it is sent in" in longurl_problem("https://bücher.example/x")
    assert "not in the form it is sent in" in longurl_problem("https://example.org/ü")
    assert longurl_problem(None) == "not a string"


@pytest.mark.parametrize("spelling", [
    "evil.example", "EVIL.Example", "evil.example.", "evil.example:443", "https://evil.example/",
    "http://EVIL.EXAMPLE.:80/path?q", " evil.example ",
])
def test_host_normalize_gives_one_form_for_every_spelling(spelling):
    assert host_normalize(spelling) == "evil.example"


def test_host_normalize_idn_and_addresses():
    assert host_normalize("Bücher.Example.") == "xn--bcher-kva.example"
    assert host_normalize("XN--BCHER-KVA.example") == "xn--bcher-kva.example"
    assert host_normalize("2001:DB8:0::1") == "2001:db8::1"
    assert host_normalize("[2001:db8::1]:443") == "2001:db8::1"
    with pytest.raises(LongurlError):
        host_normalize("not a host")
    assert host_suffixes("a.b.evil.example") == ["a.b.evil.example", "b.evil.example",
                                                 "evil.example", "example"]
    assert host_suffixes("2001:db8::1") == ["2001:db8::1"]


# --- properties over generated URLs -----------------------------------------------------------

def _mixed_case(text: str) -> st.SearchStrategy[str]:
    return st.tuples(*[st.sampled_from(sorted({c, c.upper()})) for c in text]).map("".join)


_schemes = st.sampled_from(["http", "https"]).flatmap(_mixed_case)
_ascii_label = st.from_regex(r"[a-zA-Z0-9][a-zA-Z0-9_-]{0,20}", fullmatch=True)
_letters = "abcdefghijklmnopqrstuvwxyz" "äöüßéñçøåæ" "абвгдежзийклмнопрстуфхцчшщыэюя" \
           "αβγδεζηθικλμνξοπρστυφχψω" "日本語中文한국어" "ÄÖÜÉ"
_idn_label = st.text(alphabet=_letters, min_size=1, max_size=12)
_tld = st.from_regex(r"[a-zA-Z]{2,6}", fullmatch=True)
_domain = st.builds(
    lambda labels, tld, dot: ".".join(labels + [tld]) + ("." if dot else ""),
    st.lists(st.one_of(_ascii_label, _idn_label), min_size=1, max_size=4), _tld, st.booleans())
_global_v4 = st.ip_addresses(v=4).filter(lambda a: a.is_global).map(str)
_v6 = st.ip_addresses(v=6).map(lambda a: f"[{a}]").flatmap(_mixed_case)
_hosts = st.one_of(_domain, _domain, _domain, _global_v4, _v6)
_ports = st.one_of(st.none(), st.integers(1, 65535).map(str), st.just(""))
_pct = st.from_regex(r"%[0-9A-Fa-f]{2}", fullmatch=True)
_safe_ascii = st.text(alphabet=string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@[]",
                      max_size=30)
_unicode = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)),
                   max_size=20)
_piece = st.one_of(_safe_ascii, _safe_ascii, _pct, _unicode, st.sampled_from('"<>^`{|}%#?'))
_tail = st.lists(st.lists(_piece, max_size=6).map("".join), max_size=8).map("/".join).map(
    lambda path: "/" + path)
_long_tail = st.integers(0, 9000).map(lambda n: "/" + "x" * n)


@st.composite
def urls(draw) -> str:
    scheme, host, port = draw(_schemes), draw(_hosts), draw(_ports)
    tail = draw(st.one_of(_tail, _tail, _tail, _long_tail, st.just("")))
    return f"{scheme}://{host}" + (f":{port}" if port is not None else "") + tail


def _same_host(a: str, b: str) -> bool:
    a, b = (h.strip("[]").rstrip(".").lower() for h in (a, b))
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a == b


def _accepted(url: str) -> str | None:
    try:
        return longurl_validate(url)
    except ValidationError:
        return None


PROPERTY = hsettings(max_examples=400, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(urls())
@example("https://bücher.example/x")
@example("HTTPS://EXAMPLE.ORG:443/%7e?a[]=1#x")
@example("http://[2606:4700:4700::ABCD]:8080/ü")
def test_whatever_is_accepted_is_servable_as_it_is_and_a_fixed_point(url):
    stored = _accepted(url)
    if stored is None:
        return
    assert stored.isascii()
    assert longurl_problem(stored) is None
    assert longurl_validate(stored) == stored
    assert iri_to_uri(stored) == stored


@PROPERTY
@given(urls())
@example("https://faß.example/ß")
@example("https://ｅｘａｍｐｌｅ.org/a|b")
def test_browsers_and_python_go_where_the_user_meant(url):
    stored = _accepted(url)
    assume(stored is not None)
    host = longurls.host_of(stored)
    scheme = stored.split(":", 1)[0].lower()
    default = {"http": 80, "https": 443}[scheme]
    port = urlsplit(stored).port or default

    # A browser (the WHATWG URL Standard, as Node.js implements it) reads the stored form with
    # the same host and port, and reads it as the same URL as what the user typed.
    browser = ada_url.parse_url(stored)
    assert _same_host(browser["hostname"], host)
    assert (int(browser["port"]) if browser["port"] else default) == port
    assert unquote(ada_url.parse_url(url)["href"]) == unquote(browser["href"])

    # Python's urllib and http.client: the same host, and a request line they will send.
    request = urllib.request.Request(stored)
    assert _same_host(urlsplit(stored).hostname, host)
    connection_class = {"http": http.client.HTTPConnection,
                        "https": http.client.HTTPSConnection}[scheme]
    connection = connection_class(request.host)
    assert connection.port == port
    connection.putrequest("GET", request.selector or "/")  # validates; sends nothing


_anything = st.one_of(urls(), st.text(max_size=200), urls().map(lambda u: _accepted(u) or u))


@hsettings(max_examples=600, deadline=None)
@given(_anything)
def test_the_fast_path_agrees_with_the_full_definition(value):
    full = longurls._problem_of_form(value) if len(value) <= longurls.SERVABLE_MAX_LENGTH \
        else "too long"
    assert (longurl_problem(value) is None) == (full is None)


# The fast path's tail as first written: any of the plain characters or a percent-encoding,
# one at a time. longurls writes it as runs of plain characters between percent-encodings.
_TAIL_AS_ALTERNATION = re.compile(
    r"(?:[/?#](?:[A-Za-z0-9._~!$&'()*+,;=:@/?#\[\]-]|%[0-9A-Fa-f]{2})*)?")
_TAILS = st.text(alphabet=st.sampled_from("aZ9/?#%%%fF0g:@[]-._~ \n\u00e9"), max_size=30)


@hsettings(max_examples=600, deadline=None)
@given(_TAILS)
def test_the_fast_paths_tail_matches_what_the_alternation_matches(tail):
    value = "https://example.com/" + tail
    assert (longurls._SERVABLE_FAST_RE.fullmatch(value) is None) == (
        _TAIL_AS_ALTERNATION.fullmatch("/" + tail) is None)


@hsettings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_anything, _TAILS.map(lambda t: "https://example.com/" + t)),
                max_size=8))
def test_a_list_found_servable_as_a_whole_is_servable_one_by_one(values):
    if longurls.all_servable(values):
        assert all(longurl_problem(value) is None for value in values)


def test_typical_longurls_are_found_servable_as_a_whole():
    typical = [f"https://example.com/bench/{i}?utm=x" for i in range(1000)] + [
        "http://a.example/%7Euser/#top", "https://sub.a-b_c.example./p?q=1&r=%20"]
    assert longurls.all_servable(typical) and longurls.all_servable([])
    # Each of these makes the whole list fall back to one check each (still servable).
    for odd in ["https://a.example:8443/", "https://xn--bcher-kva.example/",
                "https://example.com/" + "a" * 300]:
        assert not longurls.all_servable([*typical, odd]) and longurl_problem(odd) is None
    # A value with a line break would read as two: never servable as a whole.
    assert not longurls.all_servable(["https://a.example/\nhttps://b.example/"])


@hsettings(max_examples=600, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_either_a_stored_form_or_a_longurl_error(value):
    try:
        stored = longurl_normalize(value)
    except LongurlError as exc:
        assert exc.code and str(exc)
        return
    assert longurl_normalize(stored) == stored


def longurl_validate(value: object) -> str:
    """The stored form by the master's rules that need no database (links.validation)."""
    return longurl_rules_check(value)[0]
