"""The master's data: every link ever issued, in PostgreSQL."""

from __future__ import annotations

from django.db import models


class Link(models.Model):
    # Both uniqueness rules are database constraints, not check-then-insert: two concurrent
    # /create calls for one longurl cannot both insert, and a random tinyurl that collides with
    # an existing one is refused by the database itself.
    tinyurl = models.CharField(max_length=7, unique=True)
    longurl = models.TextField()
    # sha256 of the longurl. A longurl may be up to SHORTENER_MAX_URL_LENGTH long; a B-tree
    # index entry may not exceed ~2.7 kB, so uniqueness is enforced on the 32-byte hash.
    longurl_sha256 = models.BinaryField(max_length=32, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    # The outbox mark: NULL until Kafka acknowledged the link's record. Rows still NULL are
    # re-sent by `manage.py republish_links --pending` (which runs continuously with --follow).
    published_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            # The outbox relay looks for unpublished rows often; a partial index keeps that
            # lookup tiny however many links there are.
            models.Index(
                fields=["created_at"],
                name="links_link_unpublished",
                condition=models.Q(published_at__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.tinyurl} -> {self.longurl[:80]}"
