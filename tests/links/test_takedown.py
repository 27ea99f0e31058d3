"""Taking a link down from the admin reaches every replica; putting it back works too."""

from __future__ import annotations

from links.models import Link
from tests.support import wait_until


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


def test_a_stale_send_never_marks_a_newer_state_published(transactional_db):
    from links import services

    link = services.link_create(longurl="https://example.com/stale").link
    services.link_set_disabled(link=link, disabled=True)
    # A send of the older state (version 1) acknowledged late must not mark version 2.
    Link.objects.filter(pk=link.pk).update(published_at=None)
    services._links_mark_published([(link.pk, 1)])
    assert Link.objects.get(pk=link.pk).published_at is None
    assert services.links_publish_pending() == (1, 0)  # the outbox sends the current state
    assert Link.objects.get(pk=link.pk).published_at is not None
