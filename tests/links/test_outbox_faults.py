"""the master's outbox with Kafka away from the master, then back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import pytest
import requests
from django.conf import settings

from testkit import ROOT, wait_until
from testkit import processes
from testkit.processes import MasterWeb


def db_url(name):
    return processes.test_database_url(name)

DEAD_KAFKA = "127.0.0.1:1"


def manage(args, *, kafka=None, log=None, **env):
    return subprocess.Popen(
        [sys.executable, "manage.py", *args], cwd=ROOT,
        env={**os.environ, "SHORTENER_ROLE": "master", "SHORTENER_USER": settings.SHORTENER_USER,
             "DATABASE_URL": db_url("outbox_faults_" + args[0]),
             "DATABASE_CONN_MAX_AGE": "0", "SHORTENER_PUBLISH_TIMEOUT": "1",
             **({"KAFKA_BOOTSTRAP_SERVERS": kafka} if kafka else {}), **env},
        stdout=log or subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


SHELL_UPDATE = """
import sys
from datetime import datetime, timezone
from links.models import Link
from links import services
import os
action, tinyurl = os.environ["BREAKER_ACTION"], os.environ["BREAKER_TINYURL"]
link = Link.objects.get(tinyurl=tinyurl)
try:
    if action == "down":
        services.link_update(link=link, disabled=True)
    else:
        services.link_update(link=link, longurl="https://example.com/changed/" + tinyurl)
except Exception as exc:
    print("update failed:", repr(exc))
print("done")
"""


def update_with_kafka_down(action: str, tinyurl: str) -> str:
    proc = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", SHELL_UPDATE],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "SHORTENER_ROLE": "master", "SHORTENER_USER": settings.SHORTENER_USER,
             "DATABASE_URL": db_url("outbox_faults_update"), "DATABASE_CONN_MAX_AGE": "0",
             "SHORTENER_PUBLISH_TIMEOUT": "1", "KAFKA_BOOTSTRAP_SERVERS": DEAD_KAFKA,
             "BREAKER_ACTION": action, "BREAKER_TINYURL": tinyurl})
    return proc.stdout + proc.stderr


@pytest.fixture
def dead_kafka_master(transactional_db, kafka_topics, test_data_dir):
    web = MasterWeb(test_data_dir, workers=1, KAFKA_BOOTSTRAP_SERVERS=DEAD_KAFKA,
                    SHORTENER_PUBLISH_TIMEOUT="1")
    yield web
    web.close()


def test_links_made_and_changed_while_kafka_is_away_all_reach_the_replica(
        dead_kafka_master, replica_factory, test_data_dir):
    from links.models import Link, PendingLink

    replica = replica_factory()
    tag = uuid.uuid4().hex[:8]
    http = requests.Session()
    single = {}
    for i in range(3):
        longurl = f"https://example.com/{tag}/single/{i}"
        r = http.put(f"{dead_kafka_master.url}/create", json={"longurl": longurl}, timeout=60)
        assert r.status_code == 503, r.text
        single[Link.objects.get(longurl=longurl).tinyurl] = longurl
    items = [{"longurl": f"https://example.com/{tag}/bulk/{i}"} for i in range(50)]
    r = http.put(f"{dead_kafka_master.url}/create/bulk", json=items, timeout=120)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert all(res.get("status") == 503 for res in results), results[:3]
    bulk = {Link.objects.get(longurl=i["longurl"]).tinyurl: i["longurl"] for i in items}
    expected = {**single, **bulk}
    assert not Link.objects.filter(tinyurl__in=expected, published_at__isnull=False).exists()
    assert PendingLink.objects.filter(link__tinyurl__in=list(expected)).count() == len(expected)

    # Changed and taken down in the admin's code path while Kafka is still away.
    down, changed = list(bulk)[:2]
    assert "done" in update_with_kafka_down("down", down)
    assert "done" in update_with_kafka_down("change", changed)
    expected[changed] = "https://example.com/changed/" + changed
    expected[down] = None

    relay_log = open(test_data_dir / f"relay-{tag}.log", "w")
    relay = manage(["republish_links", "--pending", "--follow", "--interval", "0.5"],
                   log=relay_log)
    try:
        def served() -> bool:
            for tinyurl, longurl in expected.items():
                if replica.target(tinyurl) != longurl:
                    return False
            return True
        wait_until(served, timeout=90, what="every link as the master holds it")
        for tinyurl, longurl in list(expected.items())[:10] + [(down, None), (changed, expected[changed])]:
            resp = replica.get(tinyurl)
            if longurl is None:
                assert resp.status_code == 404
            else:
                assert resp.status_code == 302 and resp.headers["Location"] == longurl
        wait_until(lambda: not Link.objects.filter(tinyurl__in=list(expected),
                                                   published_at__isnull=True).exists(),
                   timeout=30, what="every link marked published")
    finally:
        relay.send_signal(signal.SIGTERM)
        relay.wait(timeout=30)


def test_the_relay_killed_mid_send_then_run_again_delivers_everything(
        transactional_db, kafka_topics, replica_factory, test_data_dir):
    from datetime import timedelta

    from django.utils import timezone

    from links.models import Link
    from links.selectors import longurl_digest
    from links.services import tinyurl_generate

    tag = uuid.uuid4().hex[:8]
    rows = []
    for i in range(20_000):
        longurl = f"https://example.com/{tag}/{i}"
        rows.append(Link(tinyurl=tinyurl_generate(), longurl=longurl,
                         longurl_sha256=longurl_digest(longurl)))
    Link.objects.bulk_create(rows, batch_size=5000)
    Link.objects.filter(longurl__startswith=f"https://example.com/{tag}/").update(
        created_at=timezone.now() - timedelta(minutes=5))
    expected = {r.tinyurl: r.longurl for r in rows}
    replica = replica_factory()
    log = open(test_data_dir / f"relay-kill-{tag}.log", "w")
    relay = manage(["republish_links", "--pending", "--follow", "--interval", "0.5"], log=log)
    wait_until(lambda: Link.objects.filter(published_at__isnull=False,
                                           longurl__startswith=f"https://example.com/{tag}/"
                                           ).exists(),
               timeout=60, interval=0.01, what="the relay's first marks")
    relay.send_signal(signal.SIGKILL)
    relay.wait(timeout=10)
    relay = manage(["republish_links", "--pending", "--follow", "--interval", "0.5"], log=log)
    try:
        wait_until(lambda: not Link.objects.filter(published_at__isnull=True,
                                                   longurl__startswith=f"https://example.com/{tag}/"
                                                   ).exists(),
                   timeout=120, what="every link marked")
        wait_until(lambda: replica.has_all(expected), timeout=60, what="every link served")
    finally:
        relay.send_signal(signal.SIGTERM)
        relay.wait(timeout=30)
