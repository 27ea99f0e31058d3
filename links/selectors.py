"""Reads of the master's links."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import datetime

from links.models import Link


def longurl_digest(longurl: str) -> bytes:
    return hashlib.sha256(longurl.encode()).digest()


def link_get_by_longurl(*, longurl: str) -> Link | None:
    return Link.objects.filter(longurl_sha256=longurl_digest(longurl)).first()


def links_unpublished(*, created_before: datetime | None = None) -> Iterator[Link]:
    qs = Link.objects.filter(published_at__isnull=True).order_by("id")
    if created_before is not None:
        qs = qs.filter(created_at__lt=created_before)
    return qs.iterator(chunk_size=2000)


def links_all() -> Iterator[Link]:
    return Link.objects.order_by("id").iterator(chunk_size=2000)
