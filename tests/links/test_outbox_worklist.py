"""The outbox's worklist (links.models.PendingLink, migration 0014): every link whose published_at
is NULL has a row there, whoever wrote it, so the relay finds it without an index on links_link;
the published mark deletes the rows of the links it marks, and is a HOT update."""

from __future__ import annotations

import pytest
from django.db import DatabaseError, connection, transaction

from links import publishing, selectors, services
from links.models import Link, PendingLink
from links.services import CreateItem
from testkit import topic_records
from topics.links import links_topic


def _pending() -> set[int]:
    return set(PendingLink.objects.values_list("link_id", flat=True))


def _unpublished() -> set[int]:
    return set(Link.objects.filter(published_at__isnull=True).values_list("pk", flat=True))


def test_a_link_whose_mark_failed_is_found_and_sent_by_the_relay(transactional_db, monkeypatch):
    """Kafka acknowledged the links, but the mark never committed (PostgreSQL failed, the
    process died): they are still on the worklist, and the relay sends and marks them."""

    def mark_fails(sent):
        raise DatabaseError("the mark was lost")

    monkeypatch.setattr(publishing, "_links_mark_published", mark_fails)
    with pytest.raises(DatabaseError):
        services.links_create_many(
            [CreateItem(longurl=f"https://example.com/unmarked/{i}") for i in range(5)])
    monkeypatch.undo()
    lost = set(Link.objects.values_list("pk", flat=True))
    assert len(lost) == 5 and _unpublished() == lost == _pending()
    assert {link.pk for link in selectors.links_unpublished()} == lost
    assert publishing.links_publish_pending() == (5, 0)
    assert not _unpublished() and not _pending()
    assert not list(selectors.links_unpublished())
    # Each was sent twice (the first ack's record, then the relay's): the kept offset is the
    # relay's, after the first.
    records = {r.key.decode(): r.offset for r in topic_records(links_topic())}  # the last
    for link in Link.objects.all():
        assert link.published_offset == records[link.tinyurl]


def test_every_writer_that_clears_the_mark_puts_the_link_on_the_worklist(transactional_db):
    links = [o.link for o in services.links_create_many(
        [CreateItem(longurl=f"https://example.com/cleared/{i}") for i in range(4)])]
    assert not _pending() and not _unpublished()
    # link_update (a takedown) clears the mark in its own transaction: PostgreSQL's trigger adds
    # the row, and the update's own publication takes it away again.
    services.link_set_disabled(link=links[0], disabled=True)
    assert not _pending()
    # Raw SQL and the ORM (the audit's own way) alike, without a publication after them.
    with connection.cursor() as cursor:
        cursor.execute("UPDATE links_link SET published_at = NULL WHERE id = %s", [links[1].pk])
    Link.objects.filter(pk=links[2].pk).update(published_at=None)
    assert _pending() == _unpublished() == {links[1].pk, links[2].pk}
    # An update that leaves published_at alone (consume_clicks' totals) adds nothing.
    Link.objects.filter(pk=links[3].pk).update(clicks=7)
    assert _pending() == {links[1].pk, links[2].pk}
    assert {link.pk for link in selectors.links_unpublished()} == {links[1].pk, links[2].pk}
    assert publishing.links_publish_pending() == (2, 0)
    assert not _pending() and not _unpublished()


def test_a_mark_of_an_older_version_keeps_the_link_on_the_worklist(transactional_db):
    """A send that raced a change of the link marks nothing: the link stays for the relay."""
    link = services.link_create(longurl="https://example.com/raced").link
    row = Link.objects.get(pk=link.pk)
    Link.objects.filter(pk=link.pk).update(state_version=row.state_version + 1, published_at=None)
    publishing._links_mark_published([(link.pk, row.state_version, 0, 10**9)])
    assert _pending() == _unpublished() == {link.pk}


def test_stale_worklist_rows_are_dropped_by_the_relay(transactional_db):
    """Rows of links published by another writer, or deleted by hand, do not pile up."""
    links = [o.link for o in services.links_create_many(
        [CreateItem(longurl=f"https://example.com/stale/{i}") for i in range(3)])]
    Link.objects.filter(pk__in=[link.pk for link in links]).update(published_at=None)
    assert len(_pending()) == 3
    with connection.cursor() as cursor:
        cursor.execute("UPDATE links_link SET published_at = now() WHERE id = %s", [links[0].pk])
        cursor.execute("DELETE FROM links_link WHERE id = %s", [links[1].pk])
    assert [link.pk for link in selectors.links_unpublished()] == [links[2].pk]
    assert _pending() == {links[2].pk}


def test_links_inserted_published_are_not_on_the_worklist(transactional_db):
    """The insert trigger adds only the unpublished rows of a statement (a restore, a bench that
    loads published links, the ORM)."""
    from django.utils import timezone

    Link.objects.create(tinyurl="pUBL001", longurl="https://example.com/p/1",
                        longurl_sha256=b"\x01" * 32, published_at=timezone.now())
    unpublished = Link.objects.create(tinyurl="pUBL002", longurl="https://example.com/p/2",
                                      longurl_sha256=b"\x02" * 32)
    assert _pending() == {unpublished.pk}


def test_the_published_mark_is_a_hot_update(transactional_db):
    """The mark changes no indexed column, and a new page keeps room for it (fillfactor 50):
    PostgreSQL writes no index entry for it. This transaction's own counters tell. Not every
    one: the marked version is 20 bytes longer (the published columns set), so the last rows of
    a full page may not find room (175 of 200 were HOT here, 92 % in bench/bulk.py's rows)."""
    links = Link.objects.bulk_create(
        [Link(tinyurl=f"hOT{i:04d}", longurl=f"https://example.com/hot/{i}",
              longurl_sha256=i.to_bytes(32, "big")) for i in range(200)])
    assert _pending() == {link.pk for link in links}
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_get_xact_tuples_updated('links_link'::regclass), "
                       "pg_stat_get_xact_tuples_hot_updated('links_link'::regclass)")
        before = cursor.fetchone()
        publishing._links_mark_published(
            [(link.pk, 1, 0, n) for n, link in enumerate(links)])
        cursor.execute("SELECT pg_stat_get_xact_tuples_updated('links_link'::regclass), "
                       "pg_stat_get_xact_tuples_hot_updated('links_link'::regclass)")
        after = cursor.fetchone()
    assert after[0] - before[0] == 200
    assert after[1] - before[1] >= 160, (before, after)
    assert not _pending() and not _unpublished()


def test_the_admins_unpublished_filter_reads_the_worklist(transactional_db, admin_client):
    links = [o.link for o in services.links_create_many(
        [CreateItem(longurl=f"https://example.com/admin-filter/{i}") for i in range(3)])]
    Link.objects.filter(pk=links[1].pk).update(published_at=None)
    page = admin_client.get("/admin/links/link/", {"published_at__isempty": "1"})
    assert page.status_code == 200
    shown = {link.tinyurl for link in links if link.tinyurl in page.content.decode()}
    assert shown == {links[1].tinyurl}
    page = admin_client.get("/admin/links/link/", {"published_at__isempty": "0"})
    shown = {link.tinyurl for link in links if link.tinyurl in page.content.decode()}
    assert shown == {links[0].tinyurl, links[2].tinyurl}
