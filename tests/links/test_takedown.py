"""Taking a link down from the admin reaches every replica; putting it back works too; every
state change is a versioned record on the links topic."""

from __future__ import annotations

from datetime import datetime
from datetime import timezone as dt_timezone

import pytest
from django.core.exceptions import ValidationError

from links.models import Link
from testkit import link_records, wait_until
from topics.links import links_topic


def test_take_down_and_put_back_across_two_replicas(master, replica_factory, admin_client):
    r1, r2 = replica_factory(), replica_factory()
    longurl = "https://example.com/to-take-down"
    tinyurl = master.create(longurl)
    for r in (r1, r2):
        wait_until(lambda r=r: r.get(tinyurl).status_code == 302, timeout=20, what="served")
    link = Link.objects.get(tinyurl=tinyurl)

    response = admin_client.post("/admin/links/link/", {
        "action": "take_down", "_selected_action": [link.pk]}, follow=True)
    assert "taken down on every replica" in response.content.decode()
    link.refresh_from_db()
    assert link.disabled_at is not None and link.published_at is not None
    for r in (r1, r2):
        wait_until(lambda r=r: r.get(tinyurl).status_code == 404, timeout=10,
                   what=f"{r.name} to stop redirecting")
    # The same longurl asked for again: not handed out while taken down.
    again = master.put({"longurl": longurl})
    assert again.status_code == 410
    assert "taken down" in again.json()["error"]

    admin_client.post("/admin/links/link/", {"action": "put_back",
                                             "_selected_action": [link.pk]})
    for r in (r1, r2):
        wait_until(lambda r=r: r.get(tinyurl).status_code == 302, timeout=10,
                   what=f"{r.name} to redirect again")
        assert r.get(tinyurl).headers["Location"] == longurl
    assert master.create(longurl) == tinyurl


def test_takedown_and_put_back_publish_versioned_records(transactional_db, admin_client):
    """A takedown is a "disabled" record with a bumped version, never a tombstone (compaction
    keeps it like any newest record); putting back publishes "active" with a higher version."""
    from links import services

    longurl = "https://example.com/versioned-takedown"
    link = services.link_create(longurl=longurl).link
    admin_client.post("/admin/links/link/", {"action": "take_down", "_selected_action": [link.pk]})
    admin_client.post("/admin/links/link/", {"action": "put_back", "_selected_action": [link.pk]})

    records = link_records(links_topic(), link.tinyurl)
    assert None not in records, "no tombstones"
    assert [(r.version, r.state, r.longurl) for r in records] == [
        (1, "active", longurl), (2, "disabled", None), (3, "active", longurl)]
    assert all(r.schema == 2 and r.expires_at is None for r in records)
    link.refresh_from_db()
    assert (link.state_version, link.disabled_at) == (3, None)
    assert link.published_at is not None


def test_a_slow_send_of_an_older_state_never_marks_published(transactional_db):
    """A send of version 1 that Kafka acknowledges after version 2 was committed must not mark
    the link published: the outbox then sends version 2, which lands after it."""
    from links import publishing, services

    link = services.link_create(longurl="https://example.com/stale").link
    stale = Link.objects.get(pk=link.pk)  # read before the takedown: version 1, active
    services.link_update(link=link, disabled=True)
    # As if version 2's ack had been lost: still unpublished.
    Link.objects.filter(pk=link.pk).update(published_at=None)

    publishing.link_publish(link=stale)  # really sent and acknowledged, but an older state
    assert Link.objects.get(pk=link.pk).published_at is None
    assert link_records(links_topic(), link.tinyurl)[-1].version == 1

    assert publishing.links_publish_pending() == (1, 0)  # the outbox sends the current state
    assert Link.objects.get(pk=link.pk).published_at is not None
    newest = link_records(links_topic(), link.tinyurl)[-1]
    assert (newest.version, newest.state) == (2, "disabled")


def test_link_update_publishes_a_new_target_and_expiry(transactional_db):
    from links import services

    link = services.link_create(longurl="https://example.com/before").link
    expires = datetime(2031, 5, 6, 7, 8, 9, tzinfo=dt_timezone.utc)
    services.link_update(link=link, longurl="https://example.com/after", expires_at=expires)
    assert (link.state_version, link.longurl) == (2, "https://example.com/after")
    newest = link_records(links_topic(), link.tinyurl)[-1]
    assert (newest.version, newest.longurl, newest.expires_at) == (
        2, "https://example.com/after", int(expires.timestamp() * 1000))
    # The same values again are no change: nothing bumped, nothing sent.
    end = len(link_records(links_topic(), link.tinyurl))
    services.link_update(link=link, longurl="https://example.com/after", expires_at=expires)
    assert link.state_version == 2
    assert len(link_records(links_topic(), link.tinyurl)) == end
    # The old longurl is free again; /create makes a new link for it.
    assert services.link_create(longurl="https://example.com/before").link.tinyurl != link.tinyurl


def test_link_update_refuses_bad_targets_and_changes_nothing(transactional_db):
    from links import services

    link = services.link_create(longurl="https://example.com/one").link
    services.link_create(longurl="https://example.com/two")
    for bad in ("javascript:alert(1)", "https://example.com/two"):
        with pytest.raises(ValidationError):
            services.link_update(link=link, longurl=bad)
    link.refresh_from_db()
    assert (link.longurl, link.state_version) == ("https://example.com/one", 1)
