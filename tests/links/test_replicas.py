"""Every replica's state on the master: statuses on <user>-replicas, the admin's replicas page."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import pytest

from testkit import wait_until
from topics.records import MessageError
from topics.replicas import replica_status_decode, replica_status_encode

STATUS = dict(node="10.0.0.7", links_position=41, links_end=42, ready=False,
              reason="consume_links has not caught up with the links topic",
              incarnation="1764000000123456", redirects=17, version="0123456789ab",
              reported_at=datetime(2026, 5, 1, tzinfo=timezone.utc))


def test_status_round_trip_and_bad_statuses():
    key, value = replica_status_encode(**STATUS)
    assert key == b"10.0.0.7"
    status = replica_status_decode(key, value)
    assert {k: getattr(status, k) for k in ("node", "links_position", "links_end", "ready",
                                            "reason", "incarnation", "redirects", "version")} == {
        k: v for k, v in STATUS.items() if k != "reported_at"}
    good = json.loads(value)
    for change in ({"schema": 2}, {"node": "a b"}, {"links_end": -1}, {"redirects": True},
                   {"ready": "yes"}, {"incarnation": "x:y"}, {"version": None}):
        with pytest.raises(MessageError):
            replica_status_decode(key, json.dumps({**good, **change}).encode())
    with pytest.raises(MessageError):
        replica_status_decode(b"another", value)
    assert replica_status_decode(key, None) is None  # a tombstone: the replica is gone
    for raw in (b"not json", b"[]"):
        with pytest.raises(MessageError):
            replica_status_decode(key, raw)
    with pytest.raises(ValueError):
        replica_status_encode(**{**STATUS, "node": "no spaces"})


def replicas_page(client) -> dict[str, str]:
    """node -> the state the page shows."""
    page = client.get("/admin/links/replica/").content.decode()
    return dict(re.findall(r'data-node="([^"]+)" data-state="([^"]+)"', page))


def test_replicas_page_requires_login(client, db):
    response = client.get("/admin/links/replica/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


@pytest.mark.slow
def test_replicas_shown_ready_then_one_missing_within_a_minute_of_stopping(
    admin_client, make_links, replica_factory
):
    links = make_links(3)
    one = replica_factory(reporter=True)
    two = replica_factory(reporter=True)
    ours = lambda: {node: state for node, state in replicas_page(admin_client).items()  # noqa: E731
                    if node in (one.name, two.name)}  # the topic also holds earlier tests' replicas
    wait_until(lambda: ours() == {one.name: "ready", two.name: "ready"},
               timeout=60, interval=0.5, what="both replicas shown ready")
    tinyurl = next(iter(links))
    one.click(tinyurl, 3)
    page = admin_client.get("/admin/links/replica/").content.decode()
    assert "Redirects served" in page and "Lag (records)" in page

    def cells(node: str) -> dict[str, str]:
        html = admin_client.get("/admin/links/replica/").content.decode()
        row = html[html.index(f'data-node="{node}"'):].split("</tr>", 1)[0]
        values = [re.sub(r"<[^>]+>|\s+", " ", c).strip()
                  for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        return dict(zip(["state", "seen", "lag", "position", "clicks", "redirects",
                         "incarnation", "version"], values))

    # Its next status counts the three redirects, and its position is the links topic's end.
    wait_until(lambda: cells(one.name)["redirects"] == "3", timeout=20, interval=0.5,
               what="replica one's redirects in its status")
    shown = cells(one.name)
    assert shown["lag"] == "0" and re.fullmatch(r"[A-Za-z0-9]{16,64}", shown["incarnation"])
    position, end = shown["position"].split(" / ")
    assert int(position) == int(end) >= 3  # every link published so far applied
    assert shown["version"] and shown["version"] != "unknown"

    # Replica two's host goes away: every process killed, no goodbye.
    two.close()
    stopped = datetime.now(timezone.utc)
    # "Within a minute" follows from the rule, shown on the page's own function at chosen
    # instants rather than timed by this test's polling (which a loaded machine stretches):
    # missing exactly SHORTENER_REPLICA_MISSING_SECONDS after the last status, which the
    # replica sent before it stopped.
    from django.conf import settings

    from links.replicas import replicas_view

    missing_after = timedelta(seconds=settings.SHORTENER_REPLICA_MISSING_SECONDS)
    assert missing_after <= timedelta(seconds=60)
    seen = next(r.last_seen for r in replicas_view().replicas if r.node == two.name)
    assert seen <= stopped

    def missing_at(now: datetime) -> bool:
        return next(r.missing for r in replicas_view(now=now).replicas if r.node == two.name)

    assert not missing_at(seen + missing_after)
    assert missing_at(seen + missing_after + timedelta(milliseconds=1))
    wait_until(lambda: ours()[two.name] == "missing", timeout=120, interval=1,
               what="replica two shown missing")
    assert ours()[one.name] == "ready"
