"""The consumer loop's isolation of records whose content the store refuses
(topics/batching.py, BatchIsolation.isolate), as a pure algorithm over a
store kept in memory. The real stores are exercised end to end in tests/links/test_consumer_faults.py
and tests/test_topic_recreated.py."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.metrics import RECORDS_REJECTED
from testkit import FakeRecord
from topics.batching import BatchIsolation


class SumStore:
    """A store whose one total may not exceed `limit`, and which refuses the records in `bad`
    outright: a record can be at fault alone, or only together with those before it."""

    def __init__(self, *, bad: set[int], limit: int) -> None:
        self.isolation = BatchIsolation(name="sum store", topic="memory", write=self.batch_write)
        self.bad, self.limit = bad, limit
        self.total, self.position = 0, None
        self.applied: list[int] = []
        self.rejected: dict[int, str] = {}
        self.writes = 0

    def batch_isolate(self, partition, records, expected):
        return self.isolation.isolate(partition=partition, records=records, expected=expected,
                                      topic_id=None)

    def batch_write(self, *, partition, records, expected, rejected, topic_id):
        self.writes += 1
        assert expected == self.position, "each write starts where the previous one ended"
        total, applied = self.total, []
        for rec in records:
            if rec.offset in rejected:
                continue
            if rec.offset in self.bad:
                raise KeyError("a field the code needs is missing")
            total += rec.value
            applied.append(rec.offset)
        if total > self.limit:
            raise OverflowError("the total does not fit")
        # Committed, all or nothing, with the position past every record of the write.
        self.total, self.position = total, records[-1].offset + 1
        self.applied += applied
        self.rejected.update(rejected)
        return self.position


def greedy(values: list[int], bad: set[int], limit: int) -> set[int]:
    """What applying the records one by one, in offset order, would refuse."""
    total, refused = 0, set()
    for offset, value in enumerate(values):
        if offset in bad or total + value > limit:
            refused.add(offset)
        else:
            total += value
    return refused


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.integers(0, 100), min_size=1, max_size=60), data=st.data())
def test_exactly_the_records_at_fault_are_rejected_and_the_rest_applied(values, data):
    bad = set(data.draw(st.sets(st.integers(0, len(values) - 1))))
    limit = data.draw(st.integers(0, sum(values) + 1))
    store = SumStore(bad=bad, limit=limit)
    records = [FakeRecord(offset=i, key=None, value=v) for i, v in enumerate(values)]
    before = {reason: RECORDS_REJECTED.labels("memory", reason)._value.get()
              for reason in ("KeyError", "OverflowError")}

    position = store.batch_isolate(0, records, None)

    refused = greedy(values, bad, limit)
    assert position == len(values) == store.position
    assert set(store.rejected) == refused
    assert store.applied == [i for i in range(len(values)) if i not in refused]
    assert store.total <= limit
    assert all(store.rejected[i] == "KeyError" for i in refused & bad)
    assert all(store.rejected[i] == "OverflowError" for i in refused - bad)
    counted = sum(RECORDS_REJECTED.labels("memory", reason)._value.get() - before[reason]
                  for reason in before)
    assert counted == len(refused)


def test_a_batch_without_fault_is_one_write():
    store = SumStore(bad=set(), limit=10**9)
    records = [FakeRecord(offset=10 + i, key=None, value=1) for i in range(500)]
    assert store.batch_isolate(0, records, None) == 510
    assert store.writes == 1 and store.total == 500


def test_one_bad_record_costs_a_logarithmic_number_of_writes():
    store = SumStore(bad={700}, limit=10**9)
    records = [FakeRecord(offset=i, key=None, value=1) for i in range(1024)]
    assert store.batch_isolate(0, records, None) == 1024
    assert store.rejected == {700: "KeyError"}
    assert store.writes <= 2 * 10 + 2  # two halves per level of a 1024-record batch
