"""A record whose content the apply cannot use stops neither a replica's consume_links nor the
master's links audit (topics/loop.py). The records are the issue's examples,
which the decoder of the time let through to the apply: a schema-2 links record without
expires_at, and a disabled one without longurl. The typed decoder now refuses the first
(reason "missing") before the apply sees it; the loop's isolation of a record the apply
itself refuses is shown by tests/test_consuming.py and tests/links/test_consumer_faults.py."""

from __future__ import annotations

import json

from links import services
from testkit import link_produce, sample, scrape, tinyurl_new, wait_until
from tests.links.test_audit import audited_to_end, relay  # noqa: F401
from topics.links import links_topic, producer_get


def record(tinyurl: str, **fields) -> bytes:
    return json.dumps({"schema": 2, "tinyurl": tinyurl, "version": 1,
                       "created_at": "2026-01-01T00:00:00+00:00", **fields}).encode()


def test_a_links_record_the_apply_cannot_use_does_not_stop_a_replica(replica_factory):
    replica = replica_factory()
    wait_until(lambda: "caught up" in replica.consumer_output(), timeout=30, what="catch-up")
    bad = tinyurl_new()
    offset = producer_get().send(
        links_topic(), key=bad.encode(),
        value=record(bad, state="active", longurl="https://example.com/no-expiry")
    ).get(timeout=10).offset
    after = tinyurl_new()
    link_produce(after, 1, "https://example.com/after-bad")
    wait_until(lambda: replica.target(after) == "https://example.com/after-bad"
               or not replica.consumer_alive(), timeout=30, what="the link after the bad one")
    assert replica.consumer_alive(), replica.consumer_output()[-2000:]
    assert replica.get(after).status_code == 302
    # Logged and counted once the batch's reply from Redis is read: at the next batch or idle
    # poll, which may be a poll after the link is served (redirects/links_writes.py).
    wait_until(lambda: f"rejected record topic={links_topic()} partition=0 offset={offset}"
               in replica.consumer_output(), timeout=10, what="the rejected record's log line")
    # At least this one: the replica reads the session's whole links topic, where another test
    # may have left a record missing a field too (the log line above pins this one's offset).
    assert sample(scrape(f"http://127.0.0.1:{replica.consumer_metrics_port}/metrics"),
                  "shortener_records_rejected_total", topic=links_topic(),
                  reason="missing") >= 1
    assert replica.stats()["rejected"] >= 1


def test_a_disabled_record_without_longurl_does_not_stop_the_audit(relay):  # noqa: F811
    link = services.link_create(longurl="https://example.com/audit-no-longurl").link
    producer_get().send(links_topic(), key=link.tinyurl.encode(),
                            value=record(link.tinyurl, state="disabled", expires_at=None)
                            ).get(timeout=10)
    later = services.link_create(longurl="https://example.com/audit-later").link
    assert later.published_at is not None
    wait_until(audited_to_end, timeout=30, what="the audit past the record")
