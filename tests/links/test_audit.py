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

from links import publishing, services
from links.audit import links_audit_loop_make
from links.models import ConsumerPosition, Link
from testkit import link_records, topic_end, wait_until
from topics.links import LinkRecord, link_record_encode, links_topic, producer_get


@pytest.fixture
def relay(transactional_db):
    """The audit loop of `republish_links --pending --follow`, in a thread of this process."""
    from django.db import connection

    def run() -> None:
        try:
            links_audit_loop_make(stop=stop).run()
        finally:
            connection.close()  # the thread's own session, before the test database is reset

    stop = threading.Event()
    thread = threading.Thread(target=run)
    thread.start()
    yield
    stop.set()
    thread.join(30)


def audited_to_end() -> bool:
    end = topic_end(links_topic())
    return ConsumerPosition.objects.filter(topic=links_topic(), next_offset=end).exists()


def produce(key: bytes, value: bytes | None) -> None:
    producer_get().send(links_topic(), key=key, value=value).get(timeout=10)


def audit_and_resend() -> None:
    wait_until(audited_to_end, timeout=30, what="the audit to reach the end of the topic")
    publishing.links_publish_pending()


def newest(tinyurl: str) -> LinkRecord | bytes | None:
    return link_records(links_topic(), tinyurl)[-1]


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

    from testkit import ROOT, test_database_url

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


# --- the race between a change and the audit, made deterministic ------------------------------
# The audit thread fetches a batch, then reads the rows. A change of the link committed and
# published between the two is no fault of the topic: its record lands after the one audited.
# These tests call the audit's batch function with a batch fetched before the change.


def _records_of(tinyurl: str) -> list:
    from testkit import topic_records

    return [r for r in topic_records(links_topic()) if r.key == tinyurl.encode()]


def _audit(records: list):
    from links.audit import links_audit_batch

    partition = records[0].partition
    position = ConsumerPosition.objects.filter(topic=links_topic(),
                                               partition=partition).first()
    return links_audit_batch(topic=links_topic(), partition=partition, records=records,
                             expected_position=position.next_offset if position else None)


def test_a_change_between_the_send_and_the_audit_is_no_fault(transactional_db):
    """The race behind test_current_records_change_nothing's rare failure: the audit holds the
    link's version-1 record, then the link changes (version 2, published after it), then the
    audit reads the row. The topic's newest record of the link is version 2: nothing is marked."""
    link = services.link_create(longurl="https://example.com/audit-race").link
    fetched = _records_of(link.tinyurl)  # the batch, as the audit thread fetched it
    assert [r.offset for r in fetched] and json.loads(fetched[-1].value)["version"] == 1
    services.link_update(link=link, expires_at=datetime(2030, 1, 1, tzinfo=dt_timezone.utc))
    assert Link.objects.get(pk=link.pk).published_at is not None

    result = _audit(fetched)  # the audit reads the row only now
    assert (result.current, result.resend, result.rebased) == (1, 0, 0)
    row = Link.objects.get(pk=link.pk)
    assert row.published_at is not None and row.state_version == 2


def test_a_stale_copy_after_the_newest_state_is_still_found(transactional_db):
    """The audit's job stays: the same older record, landing after the newest state's."""
    link = services.link_create(longurl="https://example.com/audit-race-stale").link
    v1 = link_record_encode(tinyurl=link.tinyurl, version=1, longurl=link.longurl,
                            created_at=link.created_at)
    services.link_update(link=link, expires_at=datetime(2030, 1, 1, tzinfo=dt_timezone.utc))
    produce(*v1)
    fetched = _records_of(link.tinyurl)
    assert json.loads(fetched[-1].value)["version"] == 1

    result = _audit(fetched)
    assert (result.current, result.resend, result.rebased) == (0, 1, 0)
    assert Link.objects.get(pk=link.pk).published_at is None
    publishing.links_publish_pending()
    assert newest(link.tinyurl).version == 2


def test_an_older_record_while_the_newest_is_pending_changes_nothing(transactional_db):
    """The link changed and its new state is not acknowledged yet (the outbox will send it, after
    every record already in the topic): the older record needs no mark of its own."""
    link = services.link_create(longurl="https://example.com/audit-race-pending").link
    fetched = _records_of(link.tinyurl)
    Link.objects.filter(pk=link.pk).update(state_version=2, published_at=None,
                                           expires_at=datetime(2030, 1, 1, tzinfo=dt_timezone.utc))
    result = _audit(fetched)
    assert (result.current, result.resend, result.rebased) == (0, 1, 0)
    row = Link.objects.get(pk=link.pk)
    assert (row.state_version, row.published_at) == (2, None)


def test_the_mark_keeps_where_kafka_put_the_current_state(transactional_db):
    link = services.link_create(longurl="https://example.com/audit-offset").link
    services.link_update(link=link, disabled=True)
    row = Link.objects.get(pk=link.pk)
    last = _records_of(link.tinyurl)[-1]
    assert (row.published_partition, row.published_offset) == (last.partition, last.offset)
    assert json.loads(last.value)["version"] == row.state_version == 2


def test_a_tombstone_the_current_state_follows_changes_nothing(transactional_db):
    link = services.link_create(longurl="https://example.com/audit-tombstone-before").link
    produce(link.tinyurl.encode(), None)
    fetched = _records_of(link.tinyurl)  # version 1, then the tombstone
    services.link_update(link=link, disabled=True)  # version 2, after the tombstone
    assert _audit(fetched).current == 1
    assert Link.objects.get(pk=link.pk).published_at is not None


def test_an_older_record_is_sent_again_when_where_the_current_state_is_is_unknown(
        transactional_db):
    """Links published before the offset was kept: the audit sends their current state again,
    as it always did (a duplicate at worst)."""
    link = services.link_create(longurl="https://example.com/audit-offset-unknown").link
    fetched = _records_of(link.tinyurl)
    services.link_update(link=link, disabled=True)
    Link.objects.filter(pk=link.pk).update(published_partition=None, published_offset=None)
    assert _audit(fetched).resend == 1
    assert Link.objects.get(pk=link.pk).published_at is None


def test_sending_the_current_state_again_moves_the_kept_offset(transactional_db):
    """republish_links sends every link again (after a topic was recreated, its offsets start
    over): the kept offset is the newest acknowledged one, so the audit compares with where the
    current state now is."""
    link = services.link_create(longurl="https://example.com/audit-offset-moves").link
    first = Link.objects.get(pk=link.pk)
    assert publishing.links_publish(links=[first]) == (1, 0)
    row = Link.objects.get(pk=link.pk)
    last = _records_of(link.tinyurl)[-1]
    assert row.published_offset == last.offset > first.published_offset
    assert row.published_at == first.published_at  # still the first acknowledgement's time
