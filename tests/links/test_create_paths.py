"""PUT /create's two paths answer alike: the lean ASGI path of the deployed master (gunicorn,
runtime/serving.py, links/asgi.py) and Django's view (pytest-django's live server), sent the same
requests, on one database: the same status, headers (their order too; only the server's own
Date and Server differ) and body, byte for byte, and the same metrics labels.
Real PostgreSQL and Kafka."""

from __future__ import annotations

import http.client
import json
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import pytest

from links import services
from links.models import Link
from runtime.metrics import CREATE_REFUSED
from testkit import MasterWeb, sample, scrape

HIST = "shortener_request_duration_seconds"
FUTURE = (datetime.now(timezone.utc) + timedelta(days=30)).replace(microsecond=0).isoformat()
LIMIT_BYTES = 8192 * 12 + 4096  # create_checks.max_body_bytes() at the default URL length

# (name, method, body, extra headers)
CASES = [
    ("get", "GET", None, {}),
    ("delete", "DELETE", b'{"longurl": "https://example.com/x"}', {}),
    ("empty", "PUT", b"", {}),
    ("blank", "PUT", b"  \n ", {}),
    ("broken json", "PUT", b"{", {}),
    ("not utf-8", "PUT", b'{"longurl": "\xff"}', {}),
    ("huge integer", "PUT", b"1" * 5000, {}),
    ("list", "PUT", b"[]", {}),
    ("no longurl", "PUT", b"{}", {}),
    ("longurl not a string", "PUT", b'{"longurl": 7}', {}),
    ("bad scheme", "PUT", b'{"longurl": "ftp://example.com/"}', {}),
    ("private host", "PUT", b'{"longurl": "http://127.0.0.1/"}', {}),
    ("bad expiry", "PUT", b'{"longurl": "https://example.com/e", "expires_at": "soon"}', {}),
    ("naive expiry", "PUT",
     b'{"longurl": "https://example.com/e", "expires_at": "2030-01-01T00:00:00"}', {}),
    ("too large", "PUT", b'{"longurl": "https://example.com/?q=' + b"a" * LIMIT_BYTES + b'"}',
     {}),
    ("not bearer", "PUT", b'{"longurl": "https://example.com/k"}', {"Authorization": "Basic eA=="}),
    ("unknown key", "PUT", b'{"longurl": "https://example.com/k"}',
     {"Authorization": "Bearer sk_unknown"}),
    ("new link", "PUT", b'{"longurl": "https://example.com/new?q=1#f"}', {}),
    ("idn link", "PUT", '{"longurl": "https://b\u00fccher.example/\u00e4"}'.encode(), {}),
    ("with expiry", "PUT",
     json.dumps({"longurl": "https://example.com/expiring", "expires_at": FUTURE}).encode(), {}),
    ("taken down", "PUT", b'{"longurl": "https://example.com/taken-down"}', {}),
    ("expired", "PUT", b'{"longurl": "https://example.com/expired"}', {}),
]
SERVERS_OWN = {"date", "server", "connection"}


def exchange(url: str, method: str, body: bytes | None, headers: dict) -> tuple:
    """(status, [(lowercase name, value)] in order without the server's own, body)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.request(method, "/create", body, headers)
    response = conn.getresponse()
    content = response.read()
    conn.close()
    return (response.status,
            [(n.lower(), v) for n, v in response.getheaders() if n.lower() not in SERVERS_OWN],
            content)


@pytest.fixture
def master_web(transactional_db, kafka_topics, test_data_dir):
    web = MasterWeb(test_data_dir, workers=1)
    yield web
    web.close()


def refused_counts() -> dict[str, float]:
    return {s.labels["reason"]: s.value for metric in CREATE_REFUSED.collect()
            for s in metric.samples if s.name.endswith("_total")}


def test_the_lean_path_answers_as_the_view_does(master, master_web):
    taken_down = services.link_create(longurl="https://example.com/taken-down").link
    services.link_set_disabled(link=taken_down, disabled=True)
    expired = services.link_create(longurl="https://example.com/expired").link
    Link.objects.filter(pk=expired.pk).update(expires_at=datetime(2020, 1, 1, tzinfo=timezone.utc))

    before = refused_counts()
    statuses = {}
    for name, method, body, headers in CASES:
        # The view first: a new link is made there, and the lean path finds it (the same
        # answer: one longurl, one tinyurl).
        view = exchange(master.url, method, body, headers)
        lean = exchange(master_web.url, method, body, headers)
        assert lean == view, name
        statuses[(method, str(view[0]))] = statuses.get((method, str(view[0])), 0) + 1
    assert statuses[("PUT", "200")] == 3 and statuses[("PUT", "410")] == 2

    # The same refusals counted under the same reasons (the view counts in this process).
    view_refused = {reason: n - before.get(reason, 0) for reason, n in refused_counts().items()
                    if n - before.get(reason, 0)}
    samples = scrape(f"{master_web.url}/metrics")
    lean_refused = {dict(labels)["reason"]: value for (metric, labels), value in samples.items()
                    if metric == "shortener_create_refused_total" and value}
    assert lean_refused == view_refused
    for (method, status), n in statuses.items():
        assert sample(samples, f"{HIST}_count", endpoint="create", method=method,
                      status=status) == n, (method, status)


def test_a_host_django_refuses_is_refused_as_before(master_web):
    # Host checking is Django's (ALLOWED_HOSTS): the lean path hands such a request to it.
    status, headers, body = exchange(master_web.url, "PUT", b'{"longurl": "https://e.com/"}',
                                     {"Host": "evil.example"})
    assert status == 400
    assert dict(headers)["content-type"] == "text/html; charset=utf-8"
    assert not Link.objects.exists()


def test_the_rest_is_still_django(master_web):
    for path, status in (("/healthz", 200), ("/readyz", 200), ("/admin/login/", 200),
                         ("/create/", 404)):
        parts = urlsplit(master_web.url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        conn.request("GET", path)
        assert conn.getresponse().status == status, path
        conn.close()
