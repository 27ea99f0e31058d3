"""Propagation end to end on a local cluster: two replicas (their own Redis, consume_links, web
server and report_clicks), the master's services and admin in this process, real PostgreSQL and
Kafka. Create with wait="replicas", and every replica answers 302 at once; the admin shows
"live on 2 of 2 replicas" with times; one replica's consume_links stopped, a change shows
"1 of 2" until it is started again."""

from __future__ import annotations

import statistics
import uuid

import pytest
from django.urls import reverse

from links.models import Link
from links.propagation_wait import (
    follower_get,
    link_create_waiting,
    link_propagation_now,
    link_update_waiting,
)
from links.pruning import replicas_tombstone
from links.replicas import replica_statuses_read
from testkit import wait_until
from topics.links import producer_get


@pytest.fixture
def cluster(replica_factory, transactional_db):
    """Two replicas, the only ones in the replicas topic (earlier tests' are tombstoned), both
    ready in the master's view. Their readiness does not go stale for 10 minutes: a replica
    whose consume_links is stopped stays ready (it still serves its Redis) for the test's span,
    so the master counts it and shows it lacking the new state."""
    replicas_tombstone(list(replica_statuses_read(timeout=10).newest), producer=producer_get())
    replicas = [replica_factory() for _ in range(2)]
    for replica in replicas:
        replica.start_reporter(SHORTENER_READY_STALE_SECONDS="600")
    names = {r.name for r in replicas}

    def both_ready() -> bool:
        newest, _, _ = follower_get().snapshot(timeout=10)
        return newest is not None and {n for n, (s, _) in newest.items() if s.ready} == names
    wait_until(both_ready, timeout=60, what="both replicas ready, and the only ones")
    return replicas


def page(admin_client, link: Link) -> str:
    response = admin_client.get(reverse("admin:links_link_change", args=[link.pk]))
    assert response.status_code == 200
    return response.content.decode()


def test_create_and_wait_then_live_on_2_of_2_and_1_of_2_while_a_replica_stops_consuming(
        cluster, admin_client):
    r1, r2 = cluster
    waits = []
    for i in range(10):
        longurl = f"https://example.com/{uuid.uuid4().hex}/{i}"
        created, outcome = link_create_waiting(longurl=longurl, wait="replicas", timeout=10)
        assert outcome.waited and outcome.propagation.complete, outcome
        assert outcome.propagation.summary() == "live on 2 of 2 replicas"
        waits.append(outcome.seconds)
        # At once, no retry: every replica redirects the link the wait answered for.
        for replica in cluster:
            response = replica.get(created.link.tinyurl)
            assert response.status_code == 302 and response.headers["Location"] == longurl
    print(f"\ncreate-and-wait, 10 links: median {statistics.median(waits) * 1000:.0f} ms, "
          f"max {max(waits) * 1000:.0f} ms")
    link = created.link
    link.refresh_from_db()

    shown = link_propagation_now(link=link)
    assert shown.summary() == "live on 2 of 2 replicas"
    assert all(r.serves and r.seconds is not None and r.exact for r in shown.replicas)
    html = page(admin_client, link)
    assert "live on 2 of 2 replicas" in html
    for r in shown.replicas:
        assert r.node in html and f"{r.seconds:.3f} s" in html

    # r2 stops applying the links topic; the target changes.
    assert r2.stop_consumer() == 0
    new_target = f"{link.longurl}/changed"
    link, outcome = link_update_waiting(link=link, longurl=new_target, wait="replicas",
                                        timeout=1)
    assert outcome.waited and not outcome.propagation.complete
    by_node = {r.node: r for r in outcome.propagation.replicas}
    assert by_node[r1.name].serves and not by_node[r2.name].serves
    assert by_node[r2.name].ready  # still serving redirects, from its Redis: counted
    assert outcome.propagation.summary() == "live on 1 of 2 replicas"
    assert r1.get(link.tinyurl).headers["Location"] == new_target
    assert r2.get(link.tinyurl).headers["Location"] != new_target  # the old target still
    assert "live on 1 of 2 replicas" in page(admin_client, link)
    link.refresh_from_db()
    assert link_propagation_now(link=link).summary() == "live on 1 of 2 replicas"

    r2.start_consumer()
    # Restarted, r2 is not ready until it has caught up (then "of" counts r1 alone, and "1 of
    # 1" is complete): wait for both, serving.
    wait_until(lambda: link_propagation_now(link=link).summary() == "live on 2 of 2 replicas",
               timeout=60, what="r2 ready and serving the change once consume_links runs again")
    shown = link_propagation_now(link=link)
    assert shown.summary() == "live on 2 of 2 replicas"
    assert r2.get(link.tinyurl).headers["Location"] == new_target
    assert "live on 2 of 2 replicas" in page(admin_client, link)
    # The change's times run from the change: r1's within the wait, r2's after its restart.
    by_node = {r.node: r for r in shown.replicas}
    assert by_node[r1.name].seconds < by_node[r2.name].seconds


def test_the_api_creates_and_changes_with_wait_and_shows_propagation(cluster, master):
    """The same through /api/v1/: create with "wait": "replicas" answers 201 once both replicas
    redirect; GET shows "live on 2 of 2" with times; with one replica's consume_links stopped a
    takedown with wait answers 202 with "1 of 2", and the read shows it too."""
    from links import protection
    r1, r2 = cluster
    _, token = protection.api_key_create(name="propagation")
    headers = {"Authorization": f"Bearer {token}"}
    url = f"{master.url}/api/v1"
    longurl = f"https://example.com/{uuid.uuid4().hex}"
    created = master.http.post(f"{url}/links", json={"longurl": longurl, "wait": "replicas",
                                                     "wait_timeout": 10},
                               headers=headers, timeout=30)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["propagation"]["summary"] == "live on 2 of 2 replicas"
    assert body["wait"]["waited"] and body["propagation"]["complete"]
    tinyurl = body["tinyurl"]
    for replica in cluster:  # at once, no retry
        response = replica.get(tinyurl)
        assert response.status_code == 302 and response.headers["Location"] == longurl

    read = master.http.get(f"{url}/links/{tinyurl}", headers=headers, timeout=30).json()
    shown = read["propagation"]
    assert shown["summary"] == "live on 2 of 2 replicas" and shown["complete"]
    assert {r["node"] for r in shown["replicas"]} == {r1.name, r2.name}
    assert all(r["serves"] and r["seconds"] is not None for r in shown["replicas"])

    # Without wait: answered at once, as before, without a propagation.
    plain = master.http.post(f"{url}/links", json={"longurl": f"{longurl}/plain"},
                             headers=headers, timeout=30)
    assert plain.status_code == 201 and plain.json()["propagation"] is None

    assert r2.stop_consumer() == 0
    down = master.http.post(f"{url}/links/{tinyurl}/takedown",
                            params={"wait": "replicas", "wait_timeout": 1},
                            headers=headers, timeout=30)
    assert down.status_code == 202, down.text
    body = down.json()
    assert body["state"] == "disabled" and body["wait"]["waited"]
    by_node = {r["node"]: r for r in body["propagation"]["replicas"]}
    assert by_node[r1.name]["serves"] and not by_node[r2.name]["serves"]
    assert body["propagation"]["summary"] == "live on 1 of 2 replicas"
    assert r1.get(tinyurl).status_code == 404 and r2.get(tinyurl).status_code == 302
    read = master.http.get(f"{url}/links/{tinyurl}", headers=headers, timeout=30).json()
    assert read["propagation"]["summary"] == "live on 1 of 2 replicas"

    r2.start_consumer()
    restored = master.http.post(f"{url}/links/{tinyurl}/restore",
                                params={"wait": "replicas", "wait_timeout": 30},
                                headers=headers, timeout=60)
    assert restored.status_code == 200, restored.text
    # Every READY replica serves it; r2, restarted, counts again once it has caught up.
    assert restored.json()["propagation"]["complete"]

    def both_serve() -> bool:
        read = master.http.get(f"{url}/links/{tinyurl}", headers=headers, timeout=30).json()
        return read["propagation"]["summary"] == "live on 2 of 2 replicas"
    wait_until(both_serve, timeout=60, what="r2 ready again and serving the put-back link")
    assert all(replica.get(tinyurl).status_code == 302 for replica in cluster)
