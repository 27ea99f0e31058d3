"""Safe links through the real API: every row of the table of inputs (IDN hosts, userinfo, the
service's own hosts, 8,192 emoji raw or escaped) and each case of the principle, against the
master on a live server; the accepted ones redirected by a real replica with `Location` equal
to the stored form, which browsers' and Python's parsers read as the same place."""

from __future__ import annotations

import http.client
import json
import subprocess
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import ada_url
import pytest
from django.conf import settings
from django.test import override_settings
from prometheus_client import REGISTRY

from links.models import Link
from testkit import wait_until
from tests.links.test_longurls import ACCEPTED, PRIVATE, REFUSED, _same_host
from topics import longurls

LIMIT = settings.SHORTENER_MAX_URL_LENGTH


def refused_count(reason: str) -> float:
    return REGISTRY.get_sample_value("shortener_create_refused_total", {"reason": reason}) or 0.0


@pytest.mark.parametrize("name,given,stored", ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_accepted_longurls_come_back_in_their_stored_form(master, name, given, stored):
    response = master.put({"longurl": given})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["longurl"] == (stored or given)
    assert Link.objects.get(tinyurl=body["tinyurl"]).longurl == body["longurl"]
    # The stored form is the same link.
    assert master.create(body["longurl"]) == body["tinyurl"]


@pytest.mark.parametrize("name,given,code,fragment", REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_longurls_are_a_400_that_says_why_and_stores_nothing(master, name, given, code,
                                                                     fragment):
    before = refused_count(code)
    response = master.put({"longurl": given})
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]
    assert refused_count(code) == before + 1
    assert not Link.objects.exists()


@pytest.mark.parametrize("given", PRIVATE)
def test_private_and_loopback_targets_are_refused(master, given):
    response = master.put({"longurl": given})
    assert response.status_code == 400, response.text
    assert not Link.objects.exists()


def test_links_to_the_service_itself_are_refused(master, replica_factory):
    # The hosts the master and a replica answer to: DJANGO_ALLOWED_HOSTS' defaults, from which
    # SHORTENER_PUBLIC_HOSTS' default comes.
    replica = replica_factory()
    for longurl in (f"{replica.url}/abcDEF1", f"{master.url}/create", "http://LOCALHOST.:8001/x",
                    "http://[::1]:8002/abcDEF1"):
        response = master.put({"longurl": longurl})
        assert response.status_code == 400, longurl
        assert "this service itself" in response.json()["error"]
    with override_settings(SHORTENER_PUBLIC_HOSTS=[".sho.rt"]):
        response = master.put({"longurl": "https://www.SHO.RT./abcDEF1"})
        assert response.status_code == 400
        assert "this service itself" in response.json()["error"]
    assert not Link.objects.exists()


def _emoji_body(count: int, *, escaped: bool) -> bytes:
    return json.dumps({"longurl": "https://example.org/" + "😀" * count},
                      ensure_ascii=escaped).encode()


def test_the_length_limit_is_the_same_answer_whatever_the_json_escaping(master, transactional_db):
    raw, escaped = _emoji_body(8192, escaped=False), _emoji_body(8192, escaped=True)
    assert len(escaped) > 3 * len(raw) - 100  # 12 bytes an emoji against 4
    answers = [master.put(body, headers={"Content-Type": "application/json"})
               for body in (raw, escaped)]
    assert [a.status_code for a in answers] == [400, 400]
    assert answers[0].json() == answers[1].json()
    assert f"longer than {LIMIT} characters in the form it is stored" in answers[0].json()["error"]
    assert not Link.objects.exists()


def test_a_longurl_at_the_limit_is_accepted_in_the_most_verbose_escaping(master, transactional_db):
    base = "https://example.org/?q="
    longurl = base + "a" * (LIMIT - len(base))
    # Every character as a \\u00XX escape: 6 bytes each.
    body = ('{"longurl": "' + "".join(f"\\u{ord(c):04x}" for c in longurl) + '"}').encode()
    response = master.put(body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text[:200]
    assert response.json()["longurl"] == longurl


def test_a_lone_surrogate_escape_is_refused(master, transactional_db):
    response = master.put(b'{"longurl": "https://example.org/\\ud800"}')
    assert response.status_code == 400
    assert "surrogate" in response.json()["error"]


class _RedirectCapture(urllib.request.HTTPRedirectHandler):
    """Python's own redirect handling, stopped before it connects to the target."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.followed = super().redirect_request(req, fp, code, msg, headers, newurl)
        return None  # urllib raises HTTPError(302) instead of following


def test_every_accepted_row_redirects_to_its_stored_form_on_a_real_replica(master,
                                                                          replica_factory):
    """Needs the replica side of record schema 2 (versioned records)."""
    replica = replica_factory()
    links = {}
    for _, given, stored in ACCEPTED:
        response = master.put({"longurl": given})
        assert response.status_code == 200, response.text
        links[response.json()["tinyurl"]] = stored or given
    wait_until(lambda: all(replica.get(t).status_code == 302 for t in links), timeout=30,
               what="the replica to serve every link")

    port = urlsplit(replica.url).port
    for tinyurl, stored in links.items():
        # The header as sent, read by http.client (its header-line limits included).
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", f"/{tinyurl}")
        answer = connection.getresponse()
        assert answer.status == 302
        assert answer.getheader("Location") == stored
        connection.close()

        # urllib follows it to the stored URL, on the same host and port.
        capture = _RedirectCapture()
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.build_opener(capture).open(f"{replica.url}/{tinyurl}", timeout=10)
        followed = capture.followed
        assert followed is not None, "urllib refused to follow"
        stored_parts, parts = urlsplit(stored), urlsplit(followed.full_url)
        # The same URL; urllib adds the "/" of an empty path (RFC 9110 §4.2.3: the same).
        assert parts._replace(path=parts.path or "/") == \
            stored_parts._replace(path=stored_parts.path or "/")

        # A browser's parser (WHATWG URL, ada) reads the same host.
        browser = ada_url.parse_url(answer.getheader("Location"))
        assert _same_host(browser["hostname"], longurls.host_of(stored))

        # curl: the URL it would follow.
        curl = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{redirect_url}",
                               f"{replica.url}/{tinyurl}"], capture_output=True, text=True,
                              timeout=10)
        assert urlsplit(curl.stdout).hostname == stored_parts.hostname


def test_refusals_are_counted_by_reason_on_metrics(master, transactional_db):
    before = refused_count("userinfo")
    master.put({"longurl": "https://bank.example@evil.example/"})
    text = master.http.get(f"{master.url}/metrics", timeout=10).text
    assert 'shortener_create_refused_total{reason="userinfo"}' in text
    assert refused_count("userinfo") == before + 1
