"""links left unpublished under the schema before migration 0014 are still found."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor


def migrate(target):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(target)


def test_unpublished_links_from_before_0014_are_on_the_worklist(transactional_db):
    from links import selectors
    from links.models import Link

    latest = MigrationExecutor(connection).loader.graph.leaf_nodes("links")
    try:
        migrate([("links", "0013_link_fewer_indexes")])
        with connection.cursor() as cursor:
            cursor.execute("SELECT column_name FROM information_schema.columns "
                           "WHERE table_name = 'links_link'")
            columns = {row[0] for row in cursor.fetchall()}
        assert "published_at" in columns
        with connection.cursor() as cursor:
            for i, published in enumerate([False, True, False]):
                cursor.execute(
                    "INSERT INTO links_link (tinyurl, longurl, longurl_sha256, created_at, "
                    "published_at, state_version, clicks) VALUES "
                    "(%s, %s, sha256(convert_to(%s, 'UTF8')), now() - interval '1 hour', "
                    + ("now()" if published else "NULL") + ", 1, 0)",
                    [f"mig{i}abc", f"https://example.com/mig/{i}", f"https://example.com/mig/{i}"])
    finally:
        migrate(latest)
    found = sorted(link.tinyurl for link in selectors.links_unpublished())
    assert found == ["mig0abc", "mig2abc"]
