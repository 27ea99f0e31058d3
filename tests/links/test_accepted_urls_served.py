"""One definition of a longurl on both sides, end to end: every URL that PUT /create accepts is
served by two real replicas (their own Redis, consume_links and web server) as a 302 whose
Location is exactly the longurl /create answered with (its stored form), and everything it
refuses is a 400 with a message. Inputs are generated (hypothesis): mixed-case schemes and
hosts, IDN hosts, IPv6 literals, ports, percent-encodings, non-ASCII and long paths.
"""

from __future__ import annotations

import http.client
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testkit import wait_until
from tests.links.test_longurls import urls
from topics import longurls


def _location(replica, tinyurl: str) -> tuple[int, str | None]:
    # http.client, not requests: the header exactly as sent, with the standard library's limits.
    connection = http.client.HTTPConnection("127.0.0.1", urlsplit(replica.url).port, timeout=10)
    try:
        connection.request("GET", f"/{tinyurl}")
        answer = connection.getresponse()
        answer.read()
        return answer.status, answer.getheader("Location")
    finally:
        connection.close()


@pytest.fixture
def two_replicas(replica_factory):
    # Function-scoped, so shared by the examples of one run of the test (hence the suppressed
    # health check below): starting replicas per example would cost more than the checks.
    return replica_factory(), replica_factory()


# Few examples of many URLs each: every example costs a round of replication to two replicas.
@settings(max_examples=4, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(batch=st.lists(urls(), min_size=15, max_size=30, unique=True))
def test_every_url_create_accepts_redirects_on_two_replicas_to_exactly_that_url(
    master, two_replicas, batch
):
    r1, r2 = two_replicas

    accepted: dict[str, str] = {}
    for url in batch:
        response = master.put({"longurl": url})
        if response.status_code == 400:
            assert response.json()["error"], url  # refused, and says why
            continue
        assert response.status_code == 200, (url, response.status_code, response.text[:200])
        stored = response.json()["longurl"]
        # The stored form is what replicas check and serve: servable as it is.
        assert longurls.longurl_problem(stored) is None, (url, stored)
        accepted[response.json()["tinyurl"]] = stored

    for replica in (r1, r2):
        wait_until(lambda r=replica: all(_location(r, t)[0] == 302 for t in accepted),
                   timeout=60, what=f"{replica.name} to serve every accepted link")
        for tinyurl, stored in accepted.items():
            assert _location(replica, tinyurl) == (302, stored), tinyurl
