"""/healthz and /readyz on both roles."""

from __future__ import annotations

import requests

from testkit import wait_until


def test_master_health_and_readiness(client, db):
    assert client.get("/healthz").json() == {"status": "ok"}
    response = client.get("/readyz")
    assert (response.status_code, response.json()) == (200, {"status": "ready"})


def test_replica_is_not_ready_while_catching_up_and_ready_after(make_links, replica_factory):
    make_links(100_000)
    replica = replica_factory(start=False)
    replica.start_web()
    assert replica.get("healthz").json() == {"status": "ok"}
    not_ready = replica.get("readyz")
    assert not_ready.status_code == 503
    assert "consume_links is not running" in not_ready.json()["reason"]
    replica.start_consumer()
    # Observed not ready while the 100,000 links load...
    wait_until(lambda: (p := replica.position()) is not None and p > 0, timeout=60,
               interval=0.01, what="the catch-up to start")
    during = replica.get("readyz")
    loaded = replica.position()
    # ...and ready once caught up.
    ready = wait_until(lambda: (r := replica.get("readyz")).status_code == 200 and r,
                       timeout=120, interval=0.1, what="readiness")
    assert ready.json()["status"] == "ready"
    assert during.status_code == 503 or loaded >= 100_000, "a mid-catch-up probe must be 503"
    # Redis restarted empty: not ready until rebuilt.
    replica.restart_redis_empty()
    assert replica.get("readyz").status_code == 503
    wait_until(lambda: replica.get("readyz").status_code == 200, timeout=120, what="rebuilt")


def test_replica_readiness_says_so_when_redis_is_down(replica_factory):
    replica = replica_factory()
    wait_until(lambda: replica.get("readyz").status_code == 200, timeout=30, what="ready")
    replica._stop(replica.redis_proc)
    response = replica.get("readyz")
    assert response.status_code == 503
    assert "Redis unavailable" in response.json()["reason"]
    assert replica.get("healthz").status_code == 200  # alive, just not ready
    assert requests.get(f"{replica.url}/Nope123", timeout=10).status_code == 503
