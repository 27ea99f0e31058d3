"""The master's audit of its links topic: whatever lands in the topic after a link's current
state (an older copy, a tombstone, a schema-1 record, a version from before a database restore),
the newest record of the link ends up being its current state again, so a replica that reads the
compacted topic from the start later gets the right state."""

from __future__ import annotations

import json
import threading
from datetime import datetime
from datetime import timezone as dt_timezone

import pytest

from links import services
from links.audit import LinksAuditor
from links.models import ConsumerPosition, Link
from shortener_project import bus
from shortener_project.messages import LinkRecord, link_record_encode
from tests.links.kafka_read import link_records
from tests.support import topic_end, wait_until


@pytest.fixture
def relay(transactional_db):
    """The audit loop of `republish_links --pending --follow`, in a thread of this process."""
    from django.db import connection

    def run() -> None:
        try:
            LinksAuditor(stop=stop).run()
        finally:
            connection.close()  # the thread's own session, before the test database is reset

    stop = threading.Event()
    thread = threading.Thread(target=run)
    thread.start()
    yield
    stop.set()
    thread.join(30)


def audited_to_end() -> bool:
    end = topic_end(bus.links_topic())
    return ConsumerPosition.objects.filter(topic=bus.links_topic(), next_offset=end).exists()


def produce(key: bytes, value: bytes | None) -> None:
    bus.producer_get().send(bus.links_topic(), key=key, value=value).get(timeout=10)


def audit_and_resend() -> None:
    wait_until(audited_to_end, timeout=30, what="the audit to reach the end of the topic")
    services.links_publish_pending()


def newest(tinyurl: str) -> LinkRecord | bytes | None:
    return link_records(bus.links_topic(), tinyurl)[-1]


def test_a_stale_copy_after_a_takedown_is_followed_by_the_current_state(relay):
    link = services.link_create(longurl="https://example.com/audit-stale").link
    v1 = link_record_encode(tinyurl=link.tinyurl, version=1, longurl=link.longurl,
                            created_at=link.created_at)
    services.link_update(link=link, disabled=True)
    produce(*v1)  # the link's earlier record, re-produced verbatim after the takedown
    assert newest(link.tinyurl).state == "active"

    audit_and_resend()
    record = newest(link.tinyurl)
    assert (record.version, record.state) == (2, "disabled")
    assert Link.objects.get(pk=link.pk).published_at is not None


@pytest.mark.parametrize("value", [
    None,  # a tombstone: compaction would drop the link from the topic altogether
    b'{"schema":1,"tinyurl":"%s","longurl":"https://example.com/audit-old"}',  # before versions
    b"garbage",
], ids=["tombstone", "schema 1", "garbage"])
def test_a_record_that_is_not_a_current_state_is_followed_by_it(relay, value):
    link = services.link_create(longurl="https://example.com/audit-old").link
    produce(link.tinyurl.encode(), value % link.tinyurl.encode() if value and b"%s" in value
            else value)
    audit_and_resend()
    record = newest(link.tinyurl)
    assert (record.schema, record.version, record.state) == (2, 1, "active")


def test_a_version_from_before_a_database_restore_is_overtaken(relay):
    """The topic holds version 5 (published before the database was restored from a backup
    that says version 1): replicas would ignore the master's version 1, so the audit raises
    the link's version above the topic's and the master's state is sent with it."""
    link = services.link_create(longurl="https://example.com/audit-restored").link
    produce(*link_record_encode(tinyurl=link.tinyurl, version=5, longurl=None, disabled=True,
                                created_at=link.created_at))
    audit_and_resend()
    link.refresh_from_db()
    assert link.state_version == 6
    record = newest(link.tinyurl)
    assert (record.version, record.state, record.longurl) == (6, "active", link.longurl)


def test_current_records_change_nothing(relay):
    links = [services.link_create(longurl=f"https://example.com/audit-ok/{i}").link
             for i in range(20)]
    expires = datetime(2030, 1, 1, tzinfo=dt_timezone.utc)
    services.link_update(link=links[0], expires_at=expires)
    wait_until(audited_to_end, timeout=30, what="the audit to reach the end of the topic")
    assert not Link.objects.filter(published_at__isnull=True).exists()
    assert Link.objects.get(pk=links[0].pk).state_version == 2
    assert newest(links[0].tinyurl).expires_at == int(expires.timestamp() * 1000)


def test_republish_links_replaces_schema_1_records_with_current_states(transactional_db):
    """The upgrade path: `republish_links` sends every link's current state, schema 2."""
    from io import StringIO

    from django.core.management import call_command

    links = [services.link_create(longurl=f"https://example.com/upgrade/{i}").link
             for i in range(5)]
    services.link_update(link=links[0], disabled=True)
    for link in links:  # what a schema-1 master had written
        produce(link.tinyurl.encode(), json.dumps(
            {"schema": 1, "tinyurl": link.tinyurl, "longurl": link.longurl,
             "created_at": link.created_at.isoformat()}).encode())
    out = StringIO()
    call_command("republish_links", stdout=out)
    assert out.getvalue().strip() == "5 sent, 0 failed"
    assert [(newest(l.tinyurl).schema, newest(l.tinyurl).version,
             newest(l.tinyurl).state) for l in links] == [
        (2, 2, "disabled")] + [(2, 1, "active")] * 4


def test_the_outbox_relay_service_audits_the_topic(transactional_db, test_data_dir):
    """`republish_links --pending --follow`, as the shortener-outbox unit runs it: a stale copy
    produced after a takedown is followed by the current state within seconds."""
    import os
    import signal
    import subprocess
    import sys

    from tests.support import ROOT, test_database_url

    link = services.link_create(longurl="https://example.com/relay-stale").link
    v1 = link_record_encode(tinyurl=link.tinyurl, version=1, longurl=link.longurl,
                            created_at=link.created_at)
    services.link_update(link=link, disabled=True)
    log = test_data_dir / "relay.log"
    relay = subprocess.Popen(
        [sys.executable, "manage.py", "republish_links", "--pending", "--follow",
         "--interval", "0.2"], cwd=ROOT,
        env={**os.environ, "SHORTENER_ROLE": "master",
             "DATABASE_URL": test_database_url("test_outbox_relay")},
        stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    try:
        produce(*v1)
        wait_until(lambda: newest(link.tinyurl).version == 2 and
                   Link.objects.get(pk=link.pk).published_at is not None, timeout=60,
                   what="the relay to send the current state after the stale copy")
        assert newest(link.tinyurl).state == "disabled"
    finally:
        relay.send_signal(signal.SIGTERM)
        assert relay.wait(30) == 0, log.read_text()
