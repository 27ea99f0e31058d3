"""How links are stored for bulk creates: migration 0013 (fewer indexes on links_link) on a table
that has rows, the readers that needed the indexes still served by one, the insert's columns
sent as texts (links.services._links_insert) stored exactly as they were given, and links that
Kafka did not acknowledge found and sent by the outbox relay, their marks set from texts too."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from links import publishing, selectors, services, validation
from links.models import Link, PendingLink
from links.services import CreateItem, LinkCreated
from testkit import free_port, topic_end
from topics.links import links_topic, producer_reset

BEFORE = [("links", "0012_clickbucket_link_index_dropped")]
BEFORE_WORKLIST = [("links", "0013_link_fewer_indexes")]
# links_link's indexes now: none names published_at (migration 0014), so the mark is HOT; one
# generated link per longurl, aliases apart (migration 0016).
LATEST_INDEXES = ["links_link_pkey", "links_link_tinyurl_key", "links_link_longurl_public",
                  "links_link_longurl_protected", "links_link_created_brin", "links_link_disabled"]


def _indexes() -> dict[str, str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'links_link'")
        return dict(cursor.fetchall())


def _plan(sql: str, params: list) -> str:
    """The plan of `sql` with sequential scans priced out: which index can answer it."""
    with connection.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")
        try:
            cursor.execute("EXPLAIN " + sql, params)
            return "\n".join(row[0] for row in cursor.fetchall())
        finally:
            cursor.execute("RESET enable_seqscan")


def test_migration_0013_keeps_every_row_and_an_index_for_every_reader(transactional_db):
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes()
    executor.migrate(BEFORE)
    try:
        assert any(d.endswith("(tinyurl varchar_pattern_ops)") for d in _indexes().values())
        OldLink = executor.loader.project_state(BEFORE).apps.get_model("links", "Link")
        now = datetime.now(timezone.utc)
        for i, (published, disabled) in enumerate([(True, False), (False, False), (True, True),
                                                   (False, True)]):
            OldLink.objects.create(
                tinyurl=f"mIGR00{i}", longurl=f"https://example.com/migrated/{i}",
                longurl_sha256=bytes([i]) * 32, created_at=now - timedelta(days=i),
                published_at=now if published else None, published_partition=0,
                published_offset=i if published else None,
                disabled_at=now if disabled else None, state_version=i + 1)
        before = sorted(OldLink.objects.values_list(
            "id", "tinyurl", "longurl", "longurl_sha256", "created_at", "published_at",
            "published_offset", "disabled_at", "state_version"))
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(latest)
    after = sorted(Link.objects.values_list(
        "id", "tinyurl", "longurl", "longurl_sha256", "created_at", "published_at",
        "published_offset", "disabled_at", "state_version"))
    assert [(*row[:3], bytes(row[3]), *row[4:]) for row in after] == \
        [(*row[:3], bytes(row[3]), *row[4:]) for row in before]
    indexes = _indexes()
    assert sorted(indexes) == sorted(LATEST_INDEXES)
    # The outbox relay still finds the unacknowledged links (through its worklist since 0014).
    assert sorted(link.tinyurl for link in selectors.links_unpublished()) == \
        ["mIGR001", "mIGR003"]
    # The admin's date filters (a range of created_at) and its "taken down" filter.
    plan = _plan(
        "SELECT id FROM links_link WHERE created_at >= %s AND created_at < %s",
        [datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2026, 2, 1, tzinfo=timezone.utc)])
    assert "links_link_created_brin" in plan, plan
    plan = _plan("SELECT id FROM links_link WHERE disabled_at IS NOT NULL", [])
    assert "links_link_disabled" in plan, plan
    assert sorted(Link.objects.filter(disabled_at__isnull=False)
                  .values_list("tinyurl", flat=True)) == ["mIGR002", "mIGR003"]


def test_migration_0014_puts_every_unpublished_link_on_the_worklist(transactional_db):
    """On a table with links, the unpublished ones (found by the old partial index) are the
    relay's worklist after the migration; the partial index goes, new pages keep half their
    room for the mark (fillfactor 50), and the relay finds through the worklist alone."""
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes()
    executor.migrate(BEFORE_WORKLIST)
    try:
        assert "links_link_unpublished" in _indexes()
        OldLink = executor.loader.project_state(BEFORE_WORKLIST).apps.get_model("links", "Link")
        now = datetime.now(timezone.utc)
        for i in range(6):
            OldLink.objects.create(
                tinyurl=f"wORK00{i}", longurl=f"https://example.com/worklist/{i}",
                longurl_sha256=bytes([i]) * 32, created_at=now,
                published_at=now if i % 3 == 0 else None, state_version=1)
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(latest)
    assert sorted(_indexes()) == sorted(LATEST_INDEXES)
    unpublished = ["wORK001", "wORK002", "wORK004", "wORK005"]
    assert sorted(Link.objects.filter(pk__in=PendingLink.objects.values("link_id"))
                  .values_list("tinyurl", flat=True)) == unpublished
    assert sorted(link.tinyurl for link in selectors.links_unpublished()) == unpublished
    plan = _plan(str(Link.objects.filter(pk__in=PendingLink.objects.values("link_id"),
                                         published_at__isnull=True).values("pk").query), [])
    assert "links_pendinglink_pkey" in plan and "links_link_pkey" in plan, plan
    with connection.cursor() as cursor:
        cursor.execute("SELECT reloptions FROM pg_class WHERE relname = 'links_link'")
        assert cursor.fetchone()[0] == ["fillfactor=50"]
    # The links written after the migration join the worklist by the triggers.
    link = Link.objects.create(tinyurl="wORK010", longurl="https://example.com/worklist/new",
                               longurl_sha256=b"\x10" * 32)
    assert PendingLink.objects.filter(link_id=link.pk).exists()
    assert publishing.links_publish_pending() == (5, 0)
    assert not PendingLink.objects.exists()


# Printable ASCII but what a longurl refuses (space, backslash), and some non-ASCII: the texts
# that carry the insert's columns must keep every one of them as it was, quotes, braces and
# commas included.
_PATH = st.lists(st.sampled_from(
    [chr(c) for c in range(0x21, 0x7f) if chr(c) not in "\\#?%"] + ["é", "ü", "中", "%20"]),
    max_size=40).map("".join)
_EXPIRY = st.one_of(st.none(), st.datetimes(
    min_value=datetime(2031, 1, 1), max_value=datetime(2090, 1, 1),
    timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=5, minutes=30)),
                               timezone(timedelta(hours=-8))])))


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(st.tuples(_PATH, _EXPIRY), min_size=1, max_size=12))
def test_links_inserted_in_a_batch_are_stored_as_given(transactional_db, batch):
    items = [CreateItem(longurl=f"https://example.com/stored/{path}", expires_at=expiry)
             for path, expiry in batch]
    outcomes = services.links_create_many(items)
    for item, outcome in zip(items, outcomes):
        if isinstance(outcome, validation.LongurlRefused):
            continue
        assert isinstance(outcome, LinkCreated), outcome
        row = Link.objects.get(pk=outcome.link.pk)
        assert row.longurl == outcome.link.longurl == validation.longurl_check(item.longurl)
        assert bytes(row.longurl_sha256) == selectors.longurl_digest(row.longurl)
        assert row.tinyurl == outcome.link.tinyurl
        assert row.created_at == outcome.link.created_at
        assert row.published_at is not None and row.published_offset is not None
        if outcome.created:  # the first item of a longurl sets its expiry
            assert row.expires_at == item.expires_at == outcome.link.expires_at


def test_a_batch_kafka_did_not_acknowledge_is_found_and_sent_by_the_outbox(transactional_db):
    published = services.links_create_many(
        [CreateItem(longurl=f"https://example.com/outbox/acked/{i}") for i in range(3)])
    producer_reset()
    try:
        with override_settings(KAFKA_BOOTSTRAP_SERVERS=[f"127.0.0.1:{free_port()}"],
                               SHORTENER_PUBLISH_TIMEOUT=1.0):
            failed = services.links_create_many(
                [CreateItem(longurl=f"https://example.com/outbox/lost/{i}") for i in range(4)])
    finally:
        producer_reset()
    assert all(isinstance(o, publishing.LinkPublishError) for o in failed)
    lost = set(Link.objects.filter(longurl__startswith="https://example.com/outbox/lost/")
               .values_list("pk", flat=True))
    assert {link.pk for link in selectors.links_unpublished()} == lost
    end_before = topic_end(links_topic())
    assert publishing.links_publish_pending() == (4, 0)
    assert not list(selectors.links_unpublished())
    # Each mark carries the offset Kafka gave that link's record, after the earlier ones.
    rows = Link.objects.filter(pk__in=lost)
    assert sorted(rows.values_list("published_offset", flat=True)) == \
        list(range(end_before, end_before + 4))
    assert all(row.published_at is not None and row.published_partition == 0 for row in rows)
    assert all(Link.objects.get(pk=o.link.pk).published_offset < end_before for o in published)
