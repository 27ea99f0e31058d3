"""A link's lifecycle: an expiry (PUT /create, the admin) and a new target (the admin), reaching
every replica as new versions of the link's record."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
from django.conf import settings
from django.contrib.admin.models import LogEntry
from django.core.exceptions import ValidationError

from links import services
from links.models import Link
from testkit import link_produce, topic_end, wait_until
from topics.links import links_topic

DAY_MS = 24 * 3600 * 1000


def iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize("value, message", [
    ("tomorrow", "not an ISO 8601"),
    ("2030-01-31", "needs a UTC offset"),  # a date alone: midnight where?
    ("2030-01-31T18:00:00", "needs a UTC offset"),
    ("2001-01-01T00:00:00Z", "must be in the future"),
    ("2300-01-01T00:00:00Z", "more than 100 years"),
    ("2030-01-31T18:00:00+25:00", "not an ISO 8601"),
    (1893456000, "must be an ISO 8601 string"),
    (True, "must be an ISO 8601 string"),
])
def test_create_refuses_a_bad_expires_at_and_stores_nothing(master, value, message):
    longurl = f"https://example.com/expiry/bad/{abs(hash((value, message)))}"
    response = master.put({"longurl": longurl, "expires_at": value})
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert not Link.objects.filter(longurl=longurl).exists()


def test_expires_at_parse():
    now = datetime(2026, 5, 1, 12, tzinfo=timezone.utc)
    assert services.expires_at_parse(None, now=now) is None
    assert services.expires_at_parse("2026-05-01T14:30:00+02:00", now=now) == datetime(
        2026, 5, 1, 12, 30, tzinfo=timezone.utc)
    assert services.expires_at_parse("2026-05-01T12:00:00.001Z", now=now).microsecond == 1000
    with pytest.raises(ValidationError):
        services.expires_at_parse("2026-05-01T12:00:00Z", now=now)  # now is not the future


def test_create_without_expires_at_answers_as_before(master):
    response = master.put({"longurl": "https://example.com/expiry/none"})
    assert response.status_code == 200 and set(response.json()) == {"longurl", "tinyurl"}
    again = master.put({"longurl": "https://example.com/expiry/none", "expires_at": None})
    assert again.json() == response.json()
    assert Link.objects.get(tinyurl=response.json()["tinyurl"]).expires_at is None


def test_create_with_expires_at_and_an_existing_link_keeps_its_own(master):
    when = (datetime.now(timezone.utc) + timedelta(days=2)).replace(microsecond=0)
    response = master.put({"longurl": "https://example.com/expiry/set",
                           "expires_at": when.isoformat()})
    assert response.status_code == 200
    assert response.json()["expires_at"] == when.isoformat()
    assert Link.objects.get(tinyurl=response.json()["tinyurl"]).expires_at == when
    # The same longurl, another expiry: the one link it has, with its own expiry, unchanged.
    later = master.put({"longurl": "https://example.com/expiry/set",
                        "expires_at": iso(when + timedelta(days=30))})
    assert later.json() == response.json()
    # An existing link without expiry is not given one either.
    plain = master.create("https://example.com/expiry/plain")
    response = master.put({"longurl": "https://example.com/expiry/plain",
                           "expires_at": iso(when)})
    assert response.json() == {"longurl": "https://example.com/expiry/plain", "tinyurl": plain}


@pytest.mark.slow
def test_an_expired_link_is_gone_on_every_replica_and_leaves_redis_by_itself(
    master, replica_factory
):
    replicas = [replica_factory(), replica_factory()]
    # Far enough ahead to see it redirect first, even on a loaded machine.
    expires = datetime.now(timezone.utc) + timedelta(seconds=12)
    response = master.put({"longurl": "https://example.com/expiry/soon",
                           "expires_at": iso(expires)})
    assert response.status_code == 200
    short = response.json()["tinyurl"]
    plain = master.create("https://example.com/expiry/never")
    for replica in replicas:
        wait_until(lambda: replica.target(short) and replica.target(plain), timeout=30,
                   what=f"{replica.name} to hold the links")
        # What makes it end: the replica holds the expiry itself (milliseconds).
        assert replica.link(short)[1] == int(expires.timestamp() * 1000)
        # Not expired yet: a redirect. Asked only while the clock is still well before the
        # expiry; on a loaded machine the replicas may have taken longer than that to start,
        # and the 410 below is then all there is to see.
        if datetime.now(timezone.utc) < expires - timedelta(seconds=1):
            assert replica.get(short).status_code == 302
    for replica in replicas:
        wait_until(lambda: replica.get(short).status_code == 410, timeout=30,
                   what=f"410 on {replica.name}")
        gone = replica.get(short)
        assert gone.json() == {"error": "this link has expired"}
        assert replica.get(plain).status_code == 302
        assert replica.get(plain).headers["Location"] == "https://example.com/expiry/never"
        # The key leaves Redis by itself 30 days after the expiry; the other never does.
        ttl = replica.redis.pttl(f"{settings.SHORTENER_USER}:link:{short}")
        expected = expires.timestamp() * 1000 + 30 * DAY_MS - time.time() * 1000
        assert expected - 60_000 < ttl <= expected + 1000
        assert replica.redis.pttl(f"{settings.SHORTENER_USER}:link:{plain}") == -1
    # /create for the expired link's longurl does not hand it out again.
    again = master.put({"longurl": "https://example.com/expiry/soon"})
    assert again.status_code == 410 and "expired" in again.json()["error"]


def change_form(link: Link, **fields: str) -> dict[str, str]:
    """The admin change form's POST for a link, with its (read-only) inline's management form."""
    return {"longurl": link.longurl, "expires_at_0": "", "expires_at_1": "",
            "click_counters-TOTAL_FORMS": "0", "click_counters-INITIAL_FORMS": "0",
            "click_counters-MIN_NUM_FORMS": "0", "click_counters-MAX_NUM_FORMS": "1000",
            **fields}


@pytest.mark.slow
def test_an_edited_link_redirects_to_its_new_target_everywhere_and_a_stale_record_changes_nothing(
    admin_client, master, replica_factory
):
    tinyurl = master.create("https://example.com/edit/old")
    replicas = [replica_factory(), replica_factory()]
    for replica in replicas:
        wait_until(lambda: replica.target(tinyurl) == "https://example.com/edit/old",
                   timeout=30, what=f"{replica.name} to hold the link")
    link = Link.objects.get(tinyurl=tinyurl)
    url = f"/admin/links/link/{link.pk}/change/"

    # Validated exactly as /create validates: refused, nothing changes.
    for bad in ("ftp://example.com/x", "https://exa mple.com/", "javascript:alert(1)"):
        page = admin_client.post(url, change_form(link, longurl=bad))
        assert page.status_code == 200 and "errorlist" in page.content.decode()
    other = master.create("https://example.com/edit/taken")
    page = admin_client.post(url, change_form(link, longurl="https://example.com/edit/taken"))
    assert f"link {other} already has this longurl" in page.content.decode()
    link.refresh_from_db()
    assert (link.longurl, link.state_version) == ("https://example.com/edit/old", 1)

    response = admin_client.post(url, change_form(link, longurl="https://example.com/edit/new"))
    assert response.status_code == 302, response.content.decode()[-2000:]
    link.refresh_from_db()
    assert (link.longurl, link.state_version) == ("https://example.com/edit/new", 2)
    assert link.published_at is not None
    for replica in replicas:
        wait_until(lambda: replica.target(tinyurl) == "https://example.com/edit/new",
                   timeout=15, what=f"the new target on {replica.name}")
        assert replica.get(tinyurl).headers["Location"] == "https://example.com/edit/new"
    # /create for the new longurl gives the same tinyurl; the old longurl is free again.
    assert master.create("https://example.com/edit/new") == tinyurl
    # The history: who changed what, from what to what.
    entry = LogEntry.objects.filter(object_id=str(link.pk)).latest("action_time")
    assert entry.get_change_message() == (
        "Changed longurl: https://example.com/edit/old -> https://example.com/edit/new "
        "(published as version 2).")
    assert entry.user.username == "admin"

    # A stale copy of the old record (version 1) arrives late: the replicas keep the new one.
    offset = link_produce(tinyurl, 1, "https://example.com/edit/old")
    end = topic_end(links_topic())
    for replica in replicas:
        wait_until(lambda: (replica.position() or 0) >= end > offset, timeout=15,
                   what=f"{replica.name} past the stale record")
        assert replica.target(tinyurl) == "https://example.com/edit/new"
        assert replica.get(tinyurl).headers["Location"] == "https://example.com/edit/new"

    # An expiry set in the admin reaches the replicas the same way: a time already past ends it.
    past = datetime.now(timezone.utc) - timedelta(minutes=1)
    response = admin_client.post(url, change_form(
        link, longurl="https://example.com/edit/new",
        expires_at_0=past.strftime("%Y-%m-%d"), expires_at_1=past.strftime("%H:%M:%S")))
    assert response.status_code == 302
    for replica in replicas:
        wait_until(lambda: replica.get(tinyurl).status_code == 410, timeout=15,
                   what=f"410 on {replica.name} after the admin's expiry")
    assert "expires_at: None -> " in LogEntry.objects.filter(
        object_id=str(link.pk)).latest("action_time").get_change_message()
