"""Takedowns against new links of the same longurl: a transaction-level advisory lock per longurl
bucket in PostgreSQL, shared by the creates that make new links, exclusive for a takedown.

The rule it holds (links.services.links_create_many): a longurl one of whose links is taken
down gets no new link. A create reads the taken-down links of the longurls it makes links for
inside its transaction, after taking these locks; a takedown takes its bucket's exclusive lock
before it changes the row, so it waits for the creates already past their read to commit, and
a create that reads after the takedown waits for its commit and then sees it (READ COMMITTED:
each statement sees what committed before it began). Without the lock, a takedown committed
between a create's read and its INSERT left a new active link to the target just taken down.

Why buckets (the digest's first byte, 256 of them) and not one lock per longurl: a bulk call of
10,000 links would hold 10,000 locks, past PostgreSQL's shared lock table
(max_locks_per_transaction x max_connections entries; PostgreSQL docs, "Lock Management"). A
takedown then holds back, for the milliseconds of its transaction, the new links of 1/256 of
all longurls. Why an advisory lock rather than a row: a link that does not exist yet has no row
to lock. Deadlock-free: a create takes its shared locks in ascending order and a takedown takes
one lock before any row lock, so no cycle of waits can form.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import connection

# The first key of the two-key advisory lock: this module's locks apart from any other's
# (an arbitrary constant, "links" in ASCII).
NAMESPACE = 0x6C696E6B


def bucket(digest: bytes) -> int:
    """The lock bucket of a longurl's SHA-256 digest: its first byte (0-255)."""
    return digest[0]


def longurls_lock_shared(digests: Iterable[bytes]) -> None:
    """Take the shared lock of every bucket of `digests`, in ascending order, until the current
    transaction ends (waits while a takedown in one of them is not committed). Call inside a
    transaction (it is released at once otherwise)."""
    buckets = sorted({bucket(d) for d in digests})
    if not buckets:
        return
    with connection.cursor() as cursor:
        # OFFSET 0 keeps the sorted subquery a subquery: the locks are taken in its order.
        cursor.execute(
            "SELECT pg_advisory_xact_lock_shared(%s, b) FROM (SELECT b FROM "
            "unnest(%s::int[]) AS b ORDER BY b OFFSET 0) AS s", [NAMESPACE, buckets])


def longurl_lock(digest: bytes) -> None:
    """Take the exclusive lock of `digest`'s bucket until the current transaction ends (waits
    for the creates holding it shared). A takedown's, before it locks the link's row."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [NAMESPACE, bucket(digest)])
