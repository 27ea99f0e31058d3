"""The INSERTs of new links into links_link: generated tinyurls (links_insert) and aliases
(aliases_insert), each one statement for many rows, inside the caller's transaction; and the
Link objects of the rows inserted. links.services.links_create_many is their one caller; it
checks every longurl (links.validation) and alias (links.tinyurls) first."""

from __future__ import annotations

from datetime import datetime

from django.db import DEFAULT_DB_ALIAS, connection
from django.db.models import signals
from django.db.models.base import ModelState
from django.utils import timezone

from links import selectors, tinyurls
from links.models import Link

# 62^7 = 3.5e12 codes: at a billion links a random code collides with probability 3e-4, so a
# handful of attempts always finds a free one.
TINYURL_ATTEMPTS = 8


# One row links_insert takes: (stored longurl, its digest, expiry, password hash or None).
InsertRow = tuple[str, bytes, "datetime | None", "str | None"]


def links_insert(rows: list[InsertRow]) -> dict[tuple[str, str | None], tuple[Link, bool]]:
    """Insert generated links for (stored longurl, its digest, expiry, password hash) rows that
    may have none; the hash None for a public link, else generated-salted (links/passwords.py),
    each (longurl, hash) pair once. Returns, per (longurl, hash), its link and whether this call
    inserted it (False: it existed, or another call won). Runs inside the caller's transaction.
    Raises RuntimeError if a tinyurl cannot be found for some row in TINYURL_ATTEMPTS rounds (at
    most a handful of collisions ever happen). ValueError if a longurl holds a newline (a stored
    longurl never does: links.validation)."""
    # INSERT ... ON CONFLICT DO NOTHING: an existing link, a concurrent insert of the same
    # longurl (and hash), or a tinyurl that is already taken, ends as "no row inserted" instead
    # of an error, with no aborted transaction; which it was, the read after it tells. The rows
    # go in the order of their digests: two concurrent batches that share longurls then take the
    # unique index's locks in the same order, so one waits for the other instead of the two
    # deadlocking. The columns Django fills from model defaults (state_version, clicks) have no
    # default in the database, so they are given here. The columns travel as one text each (a
    # newline-separated list of longurls, array literals of tinyurls, hex digests, expiries and
    # hashes, whose alphabet has no character an array literal quotes), not as Python lists,
    # which psycopg2 adapts element by element: 1.6 us a link for the four, against 0.3
    # (measured). A row comes back with its id and tinyurl only: the tinyurl says which row it is
    # (each was drawn for one row), and the rest is what was sent.
    insert_sql = """
        INSERT INTO links_link (tinyurl, longurl, longurl_sha256, expires_at, password_hash,
                                created_at, state_version, clicks)
        SELECT t.tinyurl, t.longurl, t.digest, t.expires_at, t.password_hash, %s, 1, 0
        FROM (SELECT u.tinyurl, u.longurl, decode(u.digest, 'hex') AS digest, u.expires_at,
                     u.password_hash
              FROM unnest(%s::varchar[], string_to_array(%s, E'\\n'), %s::text[],
                          %s::timestamptz[], %s::text[])
                   AS u(tinyurl, longurl, digest, expires_at, password_hash)) AS t
        ORDER BY t.digest
        ON CONFLICT DO NOTHING
        RETURNING tinyurl, id"""
    result: dict[tuple[str, str | None], tuple[Link, bool]] = {}
    pending = rows
    plain = _links_plain()
    for _ in range(TINYURL_ATTEMPTS):
        codes = tinyurls.tinyurls_generate(len(pending))
        longurls, now = "\n".join(r[0] for r in pending), timezone.now()
        if longurls.count("\n") != len(pending) - 1:
            raise ValueError("a longurl to insert holds a newline")
        with connection.cursor() as cursor:
            cursor.execute(insert_sql, [
                now, "{" + ",".join(codes) + "}", longurls,
                "{" + ",".join(r[1].hex() for r in pending) + "}",
                "{" + ",".join("NULL" if r[2] is None else r[2].isoformat() for r in pending)
                + "}",
                "{" + ",".join("NULL" if r[3] is None else r[3] for r in pending) + "}"])
            inserted = dict(cursor.fetchall())  # id by tinyurl
        left = []
        for row, code in zip(pending, codes):
            longurl, digest, expires_at, hashed = row
            pk = inserted.get(code)
            if pk is not None:
                result[longurl, hashed] = (_link_of_row(
                    plain, id=pk, tinyurl=code, longurl=longurl, longurl_sha256=digest,
                    created_at=now, expires_at=expires_at, state_version=1, clicks=0, bot_clicks=0,
                    alias=False, password_hash=hashed),
                    True)
            else:
                left.append(row)
        if left:
            # Not inserted: the longurl (and hash) has a link (READ COMMITTED: a concurrent
            # call's committed row too), or the tinyurl was taken (the link is still missing).
            for link in selectors.links_by_digest(r[1] for r in left if r[3] is None).values():
                result[link.longurl, None] = (link, False)
            for link in selectors.links_protected_by_hash(
                    (r[1], r[3]) for r in left if r[3] is not None).values():
                result[link.longurl, link.password_hash] = (link, False)
            left = [r for r in left if (r[0], r[3]) not in result]
        if not left:
            return result
        pending = left
    raise RuntimeError(f"no free tinyurl after {TINYURL_ATTEMPTS} attempts")


_LINK_COLUMNS = tuple(f.attname for f in Link._meta.concrete_fields)
_NULL_ROW = dict.fromkeys(_LINK_COLUMNS)


def _links_plain() -> bool:
    """Whether new Links may skip Model.__init__: no pre_init or post_init receiver for Link."""
    return not (signals.pre_init.has_listeners(Link) or signals.post_init.has_listeners(Link))


def _link_of_row(plain: bool, **values: object) -> Link:
    """The Link of a row just inserted, as the ORM makes one it has read (Model.from_db), the
    columns not given NULL. `plain` (_links_plain()): without Model.__init__, which goes through
    every field and sends pre_init and post_init: 1.4 us a Link instead of from_db's 4.6."""
    if not plain:
        return Link.from_db(DEFAULT_DB_ALIAS, _LINK_COLUMNS, [values.get(n) for n in _LINK_COLUMNS])
    link = Link.__new__(Link)
    link.__dict__.update(_NULL_ROW, **values)
    link._state = ModelState()
    link._state.adding = False
    link._state.db = DEFAULT_DB_ALIAS
    return link


def aliases_insert(rows: list[tuple[str, str, bytes, datetime | None]]
                   ) -> dict[str, tuple[Link, bool] | tinyurls.AliasTaken]:
    """Insert links for (alias, stored longurl, its digest, expiry) rows, the aliases distinct and
    checked (tinyurls.alias_check). Returns, per alias, its link and whether this call inserted
    it (False: the alias already names a link of this very longurl, e.g. a retried call), or
    AliasTaken when it names another longurl's link. Runs inside the caller's transaction.

    ON CONFLICT DO NOTHING, as links_insert: an alias that exists, or that a concurrent call
    inserts first (READ COMMITTED: this statement waits for that one's commit), is "no row
    inserted", and the read after it says whose it is. The rows go in the order of their aliases
    so that two calls sharing aliases take the unique index's locks in one order."""
    insert_sql = """
        INSERT INTO links_link (tinyurl, longurl, longurl_sha256, expires_at, created_at,
                                state_version, clicks, alias)
        SELECT t.tinyurl, t.longurl, decode(t.digest, 'hex'), t.expires_at, %s, 1, 0, TRUE
        FROM unnest(%s::varchar[], %s::text[], %s::text[], %s::timestamptz[])
             AS t(tinyurl, longurl, digest, expires_at)
        ORDER BY t.tinyurl
        ON CONFLICT DO NOTHING
        RETURNING tinyurl, id"""
    # Aliases are few (a bulk call's items that name one): the columns go as Python lists, which
    # psycopg2 adapts element by element; links_insert's text encoding is for 10,000 rows.
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(insert_sql, [now, [r[0] for r in rows], [r[1] for r in rows],
                                    [r[2].hex() for r in rows], [r[3] for r in rows]])
        inserted = dict(cursor.fetchall())  # id by tinyurl
    result: dict[str, tuple[Link, bool] | tinyurls.AliasTaken] = {}
    plain = _links_plain()
    for alias, longurl, digest, expires_at in rows:
        if (pk := inserted.get(alias)) is not None:
            result[alias] = (_link_of_row(
                plain, id=pk, tinyurl=alias, longurl=longurl, longurl_sha256=digest,
                created_at=now, expires_at=expires_at, state_version=1, clicks=0, bot_clicks=0,
                alias=True),
                True)
    held = {r[0]: r[1] for r in rows if r[0] not in result}
    if held:
        for link in Link.objects.filter(tinyurl__in=list(held)):
            result[link.tinyurl] = ((link, False) if link.longurl == held[link.tinyurl]
                                    else tinyurls.AliasTaken(link.tinyurl))
        for alias in held.keys() - result.keys():
            # Conflicted, yet gone by the read: deleted by hand in between. Not inserted, not
            # held: the caller's retry inserts it.
            raise RuntimeError(f"alias {alias!r} conflicted and then could not be read")
    return result
