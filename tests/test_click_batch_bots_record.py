"""Report batches with bot clicks (schema 4, topics/clicks.py): encoded and decoded, checked
(bots never above the count), and the older schemas still read beside them."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from links.totals import clicks_batch_decode
from testkit import FakeRecord as Rec
from topics.clicks import (
    ClickBatch,
    ClickBatchBots,
    click_batch_encode,
    click_report_encode,
    clicks_record_decode,
)
from topics.records import MessageError

NOW = datetime(2026, 12, 2, 15, 0, tzinfo=timezone.utc)


def test_triples_are_schema_4_and_pairs_schema_3():
    key, value = click_batch_encode(node="r1", incarnation="i1", reported_at=NOW,
                                    counts=[("abcdefg", 120, 20), ("Abcdefg", 3, 0)])
    batch = clicks_record_decode(key, value)
    assert isinstance(batch, ClickBatchBots) and batch.schema == 4
    assert batch.counts == [("abcdefg", 120, 20), ("Abcdefg", 3, 0)]
    key, value = click_batch_encode(node="r1", incarnation="i1", reported_at=NOW,
                                    counts=[("abcdefg", 120)])
    old = clicks_record_decode(key, value)
    assert isinstance(old, ClickBatch) and old.schema == 3


@pytest.mark.parametrize("change, reason", [
    ((b'["abcdefg",120,20]', b'["abcdefg",20,120]'), "range"),  # bots above the count
    ((b'["abcdefg",120,20]', b'["abcdefg",120,-1]'), "range"),
    ((b'["abcdefg",120,20]', b'["abcdefg",120]'), "range"),  # a pair in a schema-4 batch
    ((b'"schema":4', b'"schema":5'), "schema"),
    ((b'"schema":4', b'"schema":"4"'), "schema"),
])
def test_a_bad_schema_4_batch_is_rejected_whole(change, reason):
    key, value = click_batch_encode(node="r1", incarnation="i1", reported_at=NOW,
                                    counts=[("abcdefg", 120, 20), ("Abcdefg", 3, 0)])
    assert change[0] in value
    with pytest.raises(MessageError) as caught:
        clicks_record_decode(key, value.replace(*change))
    assert caught.value.reason == reason


def test_the_fold_keeps_each_counters_largest_count_and_largest_bots_of_every_schema():
    records = []

    def add(key_value):
        records.append(Rec(len(records), *key_value))

    add(click_report_encode(tinyurl="abcdefg", node="r1", incarnation="i1", count=100,
                            reported_at=NOW))  # schema 2: no bots
    add(click_batch_encode(node="r1", incarnation="i1", reported_at=NOW,
                           counts=[("abcdefg", 90), ("bcdefgh", 5)]))  # schema 3
    # Schema 4: a milestone's lower bound of the bots, then the exact flush.
    add(click_batch_encode(node="r1", incarnation="i1", reported_at=NOW,
                           counts=[("abcdefg", 200, 30), ("bcdefgh", 5, 2)]))
    add(click_batch_encode(node="r1", incarnation="i1", reported_at=NOW,
                           counts=[("abcdefg", 200, 34)]))
    add(click_batch_encode(node="r1", incarnation="i1", reported_at=NOW,
                           counts=[("abcdefg", 150, 20)]))  # older, late: raises nothing
    batch = clicks_batch_decode(records=records, now=NOW)
    assert batch.malformed == 0
    held = {counter: (entry[0], entry[6]) for counter, entry in batch.counters.items()}
    assert held == {("abcdefg", "i1"): (200, 34), ("bcdefgh", "i1"): (5, 2)}
