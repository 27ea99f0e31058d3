"""the admin's "reached Kafka" filter, both ways."""

from __future__ import annotations

from django.utils import timezone


def test_reached_kafka_filter_both_ways(transactional_db, admin_client):
    from links.models import Link
    from links.selectors import longurl_digest

    def make(code, published):
        url = f"https://example.com/filter/{code}"
        return Link.objects.create(tinyurl=code, longurl=url, longurl_sha256=longurl_digest(url),
                                   published_at=timezone.now() if published else None)

    make("fltPUB1", True)
    make("fltUNP1", False)
    later = make("fltCLR1", True)
    Link.objects.filter(pk=later.pk).update(published_at=None)  # the audit clears a mark
    empty = admin_client.get("/admin/links/link/?published_at__isempty=1").content.decode()
    full = admin_client.get("/admin/links/link/?published_at__isempty=0").content.decode()
    assert "fltUNP1" in empty and "fltCLR1" in empty and "fltPUB1" not in empty
    assert "fltPUB1" in full and "fltUNP1" not in full and "fltCLR1" not in full
