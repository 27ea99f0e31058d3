"""Issue 16's examples 1, 2, 3 and the audit half of 4, on running processes: one record that the
code before the record types let through to a KeyError or an OverflowError stopped a consumer
for good (a compacted topic keeps the record, every restart reads it again). Each record is now
rejected, or used, by its type, and the process keeps doing its work."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from links import services
from links.models import Link
from testkit import ROOT, tinyurl_new, topic_records, wait_until
from testkit import test_database_url as database_url
from topics.clicks import click_report_encode, clicks_topic
from topics.links import link_record_encode, links_topic, producer_get
from topics.replicas import replica_status_encode, replicas_topic

NOW = datetime.now(timezone.utc)


def newest_json(tinyurl: str) -> dict:
    """The link's newest record in the links topic, read as plain JSON (independent of the
    decoder under test)."""
    return json.loads([r.value for r in topic_records(links_topic())
                       if r.key == tinyurl.encode()][-1])


def produce(topic: str, key: bytes, value: bytes | None) -> int:
    return producer_get().send(topic, key=key, value=value).get(timeout=10).offset


@pytest.mark.slow
def test_example_1_a_links_record_without_expires_at_stops_no_replica(master, replica_factory):
    replica = replica_factory()
    wait_until(lambda: "caught up" in replica.consumer_output(), timeout=30, what="catch-up")
    rejected_before = replica.stats().get("rejected", 0)
    poison = tinyurl_new()
    record = json.loads(link_record_encode(tinyurl=poison, version=1, created_at=NOW,
                                           longurl="https://example.com/no-expiry")[1])
    del record["expires_at"]  # schema 2 requires it (null: never)
    offset = produce(links_topic(), poison.encode(), json.dumps(record).encode())

    longurl = "https://example.com/created-after-the-poison"
    tinyurl = master.create(longurl)
    wait_until(lambda: replica.target(tinyurl) == longurl or not replica.consumer_alive(),
               timeout=30, what="the link created after the record")
    assert replica.consumer_alive(), replica.consumer_output()[-3000:]
    response = replica.get(tinyurl)
    assert (response.status_code, response.headers["Location"]) == (302, longurl)
    assert replica.get(poison).status_code == 404
    assert replica.stats()["rejected"] == rejected_before + 1
    # Logged once the batch's reply from Redis is read: at the next batch or idle poll, which
    # may be a poll after the link is served (redirects/links_writes.py).
    wait_until(lambda: (f"rejected record topic={links_topic()} partition=0 offset={offset} "
                        "reason=missing") in replica.consumer_output(), timeout=10,
               what="the rejected record's log line")


@pytest.mark.slow
def test_example_2_a_report_from_year_one_stops_no_click_count(clicks_consumer):
    link = services.link_create(longurl="https://example.com/clicks-year-one").link
    # Valid RFC 3339, but 23:00 UTC on 31 December of year 0: no datetime holds it in UTC.
    report = json.loads(click_report_encode(tinyurl=link.tinyurl, node="n1", incarnation="old",
                                            count=5, reported_at=NOW)[1])
    report["reported_at"] = "0001-01-01T00:00:00+01:00"
    produce(clicks_topic(), f"old:{link.tinyurl}".encode(), json.dumps(report).encode())
    later_key, later_value = click_report_encode(tinyurl=link.tinyurl, node="n1",
                                                 incarnation="later", count=7, reported_at=NOW)
    produce(clicks_topic(), later_key, later_value)
    # Both counted: the first report's count is valid, its clicks are charted in this hour.
    wait_until(lambda: Link.objects.get(pk=link.pk).clicks == 12 or not clicks_consumer.alive(),
               timeout=30, what="both reports counted")
    assert clicks_consumer.alive(), clicks_consumer.output()[-3000:]
    assert Link.objects.get(pk=link.pk).clicks == 12
    from links.models import ClickBucket

    buckets = list(ClickBucket.objects.filter(link=link))
    assert sum(b.clicks for b in buckets) == 12
    assert min(b.hour for b in buckets) > NOW - timedelta(days=1)


@pytest.mark.slow
def test_example_3_a_status_without_links_end_leaves_the_replicas_page_up(admin_client):
    key, value = replica_status_encode(
        node="bad-status", links_position=1, links_end=1, ready=True, reason="",
        incarnation=None, redirects=None, version="v", reported_at=NOW)
    status = json.loads(value)
    del status["links_end"]
    produce(replicas_topic(), key, json.dumps(status).encode())
    good = f"good-{tinyurl_new()}"
    produce(replicas_topic(), *replica_status_encode(
        node=good, links_position=3, links_end=4, ready=True, reason="", incarnation=None,
        redirects=None, version="v", reported_at=NOW))
    for _ in range(2):  # and again: a lasting 500 before
        response = admin_client.get("/admin/links/replica/")
        assert response.status_code == 200
        page = response.content.decode()
        assert f'data-node="{good}" data-state="ready"' in page
        assert 'data-node="bad-status"' not in page
        assert re.search(r'id="replicas-rejected">\d+\s+record\(s\)', page)


@pytest.mark.slow
def test_example_4_a_disabled_record_without_longurl_leaves_the_audit_running(
        transactional_db, test_data_dir):
    """The outbox process (`republish_links --pending --follow`) reads the links topic; a
    disabled record without its longurl field killed its audit thread (KeyError), after which no
    out-of-date record was ever sent again."""
    taken_down = services.link_create(longurl="https://example.com/audit-no-longurl").link
    services.link_update(link=taken_down, disabled=True)
    victim = services.link_create(longurl="https://example.com/audit-after").link
    v1 = link_record_encode(tinyurl=victim.tinyurl, version=1, longurl=victim.longurl,
                            created_at=victim.created_at)
    services.link_update(link=victim, disabled=True)

    relay_log = test_data_dir / f"relay-{tinyurl_new()}.log"
    relay = subprocess.Popen(
        [sys.executable, "manage.py", "republish_links", "--pending", "--follow",
         "--interval", "0.2"], cwd=ROOT,
        env={**os.environ, "SHORTENER_ROLE": "master",
             "DATABASE_URL": database_url("test_records_relay")},
        stdout=open(relay_log, "ab"), stderr=subprocess.STDOUT)
    try:
        record = json.loads(link_record_encode(tinyurl=taken_down.tinyurl, version=2,
                                               longurl=None, disabled=True,
                                               created_at=taken_down.created_at)[1])
        del record["longurl"]  # a disabled link carries none: absent says so as null does
        produce(links_topic(), taken_down.tinyurl.encode(), json.dumps(record).encode())
        produce(links_topic(), *v1)  # then a stale copy of another link, after its takedown
        wait_until(lambda: newest_json(victim.tinyurl)["version"] == 2
                   and Link.objects.get(pk=victim.pk).published_at is not None, timeout=60,
                   what="the relay to send the current state after the stale copy")
        assert newest_json(victim.tinyurl)["state"] == "disabled"
        assert "Traceback" not in relay_log.read_text()
        assert relay.poll() is None
    finally:
        relay.send_signal(signal.SIGTERM)
        assert relay.wait(30) == 0, relay_log.read_text()[-3000:]
