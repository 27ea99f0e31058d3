"""The Django admin on the master: behind login, links with their clicks, read-only."""

from __future__ import annotations

import pytest

from links import services
from links.models import ClickCounter


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


def test_link_page_shows_the_per_replica_breakdown_read_only(admin_client, clicked_link):
    response = admin_client.get(f"/admin/links/link/{clicked_link.pk}/change/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "10.0.0.2: 150, 10.0.0.3: 120" in page
    assert 'name="_save"' not in page  # nothing to save: totals are read-only
    assert admin_client.post(f"/admin/links/link/{clicked_link.pk}/change/",
                             {"clicks": 1}).status_code == 403
    assert admin_client.get("/admin/links/link/add/").status_code == 403
