"""consume_clicks' memory of which link id each tinyurl has (the fold, links/totals.py).

Resolving a counter's tinyurl to its link in the apply's statement was an index probe and a heap
read of links_link per counter: about 8 µs of PostgreSQL CPU of some 35 with a million links
(docs/performance.md, measured by applying the same batches with and without it). A link's id
and tinyurl never change and links are never deleted through the application (the admin
refuses it), so the consumer remembers each pair the statement resolved and sends the ids it
knows; the statement looks up only the tinyurls it does not (a new link, or after a restart).

A link deleted by hand while its id is remembered: the counter's insert then fails its foreign
key at commit, IntegrityError, which the clicks loop isolates (topics/batching.py); forget() is
called first, so the isolation's re-applies look the tinyurl up afresh and count its reports as
for an unknown link. The memory is bounded: past LIMIT entries it starts again empty (about
130 bytes an entry in CPython, so some 260 MB at the limit).
"""

from __future__ import annotations

from collections.abc import Mapping

# Twice the million links of the issue "Writes at scale".
LIMIT = 2_000_000

_ids: dict[str, int] = {}


def link_id(tinyurl: str) -> int | None:
    """The link id remembered for `tinyurl`, or None."""
    return _ids.get(tinyurl)


def learn(pairs: Mapping[str, int]) -> None:
    """Remember tinyurl -> link id pairs the database resolved."""
    if len(_ids) + len(pairs) > LIMIT:
        _ids.clear()
    _ids.update(pairs)


def forget() -> None:
    """Forget every pair (a write failed in a way a stale id could explain)."""
    _ids.clear()


def size() -> int:
    return len(_ids)
