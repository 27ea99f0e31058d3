"""The Django admin on the master: behind login, links with their clicks, read-only."""

from __future__ import annotations

import pytest

from links import services
from links.models import ClickCounter, Link


@pytest.fixture
def clicked_link(transactional_db):
    link = services.link_create(longurl="https://example.com/admin/shown").link
    ClickCounter.objects.bulk_create([
        ClickCounter(link=link, node="10.0.0.2", incarnation="a", count=150),
        ClickCounter(link=link, node="10.0.0.3", incarnation="b", count=100),
        ClickCounter(link=link, node="10.0.0.3", incarnation="c", count=20),
    ])
    link.clicks = 270
    link.save(update_fields=["clicks"])
    return link


def test_admin_requires_login(client, clicked_link):
    response = client.get("/admin/links/link/")
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_links_list_shows_totals_and_kafka_state(admin_client, clicked_link):
    response = admin_client.get("/admin/links/link/")
    assert response.status_code == 200
    page = response.content.decode()
    assert clicked_link.tinyurl in page
    assert "https://example.com/admin/shown" in page
    assert ">270<" in page
    assert "Reached Kafka" in page  # the column (Django capitalises the first letter)
    found = admin_client.get("/admin/links/link/", {"q": clicked_link.tinyurl})
    assert clicked_link.tinyurl in found.content.decode()
    missed = admin_client.get("/admin/links/link/", {"q": "nothing-like-this"})
    assert clicked_link.tinyurl not in missed.content.decode()


def test_link_page_shows_the_per_replica_breakdown_and_keeps_the_rest_read_only(
    admin_client, clicked_link
):
    url = f"/admin/links/link/{clicked_link.pk}/change/"
    response = admin_client.get(url)
    assert response.status_code == 200
    page = response.content.decode()
    assert "10.0.0.2: 150, 10.0.0.3: 120" in page
    # Only the target and the expiry are fields; totals, dates and versions are not.
    assert 'name="longurl"' in page and 'name="expires_at_0"' in page
    assert 'name="clicks"' not in page and 'name="tinyurl"' not in page
    admin_client.post(url, {"longurl": clicked_link.longurl, "clicks": 1, "tinyurl": "AAAAAAA"})
    clicked_link.refresh_from_db()
    assert (clicked_link.clicks, clicked_link.state_version) == (270, 1)
    assert clicked_link.tinyurl != "AAAAAAA"
    # The add form makes a link as the bulk API does (an alias if wanted), nothing more.
    add_page = admin_client.get("/admin/links/link/add/").content.decode()
    assert 'name="longurl"' in add_page and 'name="alias"' in add_page
    assert 'name="clicks"' not in add_page and 'name="tinyurl"' not in add_page
    assert admin_client.post(f"/admin/links/link/{clicked_link.pk}/delete/").status_code == 403


def test_staff_without_the_change_right_cannot_edit(client, clicked_link, django_user_model):
    from django.contrib.auth.models import Permission

    staff = django_user_model.objects.create_user("viewer", password="x-long-password-1",
                                                  is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_link"))
    client.force_login(staff)
    url = f"/admin/links/link/{clicked_link.pk}/change/"
    assert 'name="longurl"' not in client.get(url).content.decode()
    assert client.post(url, {"longurl": "https://example.com/other"}).status_code == 403
    clicked_link.refresh_from_db()
    assert clicked_link.longurl == "https://example.com/admin/shown"


@pytest.fixture
def charted_links(transactional_db):
    """Two links with clicks in hourly buckets: `busy` clicked recently, `old` only long ago."""
    from datetime import timedelta

    from django.utils import timezone

    from links.models import ClickBucket
    from links.selectors import hour_start

    now = hour_start(timezone.now())
    busy = services.link_create(longurl="https://example.com/admin/busy").link
    old = services.link_create(longurl="https://example.com/admin/old").link
    ClickBucket.objects.bulk_create([
        ClickBucket(link=busy, node="r1", hour=now, clicks=5),
        ClickBucket(link=busy, node="r2", hour=now - timedelta(hours=3), clicks=7),
        ClickBucket(link=busy, node="r1", hour=now - timedelta(days=2), clicks=11),
        ClickBucket(link=busy, node="r2", hour=now - timedelta(days=40), clicks=13),
        ClickBucket(link=old, node="r1", hour=now - timedelta(days=3), clicks=1000),
    ])
    Link.objects.filter(pk=busy.pk).update(clicks=36)
    Link.objects.filter(pk=old.pk).update(clicks=1000)
    return busy, old, now


def test_links_list_sorts_by_clicks_in_the_last_24_hours(admin_client, charted_links):
    busy, old, _ = charted_links
    page = admin_client.get("/admin/links/link/", {"o": "-5"}).content.decode()  # 5th column
    assert "Clicks, last 24 h" in page
    assert page.index(busy.tinyurl) < page.index(old.tinyurl)
    page = admin_client.get("/admin/links/link/", {"o": "5"}).content.decode()
    assert page.index(old.tinyurl) < page.index(busy.tinyurl)
    # Sorted by all-time clicks instead, the old link comes first.
    page = admin_client.get("/admin/links/link/", {"o": "-4"}).content.decode()
    assert page.index(old.tinyurl) < page.index(busy.tinyurl)
    assert ">12<" in page  # busy's last 24 hours: 5 + 7


def test_link_page_carries_its_charts_data(admin_client, charted_links):
    busy, _, now = charted_links
    response = admin_client.get(f"/admin/links/link/{busy.pk}/change/")
    charts = response.context["clicks_charts"]
    hourly = {s["node"]: s["clicks"] for s in charts["hourly"]["series"]}
    daily = {s["node"]: s["clicks"] for s in charts["daily"]["series"]}
    assert len(charts["hourly"]["labels"]) == 7 * 24 and len(charts["daily"]["labels"]) == 90
    assert hourly["r1"][-1] == 5 and hourly["r2"][-4] == 7
    assert sum(hourly["r1"]) == 16 and sum(hourly["r2"]) == 7  # 40 days ago is off this chart
    assert sum(daily["r1"]) == 16 and sum(daily["r2"]) == 20
    page = response.content.decode()
    assert 'id="clicks-hourly"' in page and "chartjs/chart.umd.min.js" in page
    assert 'id="clicks-hourly-data"' in page


def test_clicks_per_day_as_csv(admin_client, client, charted_links):
    import csv
    import io
    from datetime import timedelta

    busy, _, now = charted_links
    url = f"/admin/links/link/{busy.pk}/clicks.csv"
    assert client.get(url).status_code == 302  # behind login
    response = admin_client.get(url)
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == ["day", "clicks", "r1", "r2"]
    expected: dict[str, list[int]] = {}
    for hours_ago, node, clicks in ((0, 0, 5), (3, 1, 7), (48, 0, 11), (960, 1, 13)):
        day = (now - timedelta(hours=hours_ago)).date().isoformat()
        expected.setdefault(day, [0, 0])[node] += clicks
    assert rows[1:] == [[day, str(sum(c)), *map(str, c)] for day, c in sorted(expected.items())]
