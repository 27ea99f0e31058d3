"""PostgreSQL dropping the master's connections (a restart, a failover, an idle kill): the next
/create reconnects and answers, never a 500. The netns suite stops PostgreSQL outright
(scenario 4); this drops only the connections, which is enough to show the kind of fault: the
rate limiter's query meets the dead connection first and must not leave it half-open for the
request's own queries ("connection already closed" is not a DatabaseError in Django)."""

from __future__ import annotations

import pytest
from django.db import connection

from links import protection
from links.models import Link


def _drop_other_connections() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                       "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        return cursor.fetchone()[0]


@pytest.mark.parametrize("rate_limited", [True, False])
@pytest.mark.parametrize("blocklist_cached", [True, False])
def test_create_after_postgresql_dropped_the_connection(master, settings, rate_limited,
                                                         blocklist_cached):
    settings.SHORTENER_CREATE_RATE_LIMIT = "1000/second" if rate_limited else ""
    assert master.put({"longurl": "https://example.com/before-drop"}).status_code == 200
    assert _drop_other_connections() >= 1  # the live server's connection, kept between requests
    if not blocklist_cached:
        # The blocklist is read from the database again (its cache expired): that read is the
        # first to meet the dead connection when the rate limit is off.
        protection.blocklist_cache_clear()
    response = master.put({"longurl": "https://example.com/after-drop"})
    assert response.status_code == 200, response.text[:300]
    assert Link.objects.filter(longurl="https://example.com/after-drop").exists()
