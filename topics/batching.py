"""What the positioned loop (topics/loop.py) does with one partition's batch: the batch strategy
it submits batches to, and the isolation of the records whose content the store refuses.

A strategy (BatchStrategy, after Sentry Arroyo's ProcessingStrategy) is built by the loop with
the loop's batch isolation and a `committed` callback, and is then asked to
  * `submit` one partition's batch and give back the partition's position after it;
  * `poll` when a fetch brought nothing (a strategy holding a batch back finishes it);
  * `join` before the loop reads the stored positions again (repositioning, a recreated topic,
    the stop): every batch submitted before has then committed or raised;
  * `close` once the loop is done: release threads and connections.
A strategy calls `committed()` each time a batch has really committed (the store works again, so
the loop's back-off starts from its beginning at the next failure). `Writes` writes each batch
at once; links/clicks_consumer.py's strategy writes on a worker thread while the next batch is
fetched and decoded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from runtime.metrics import RECORDS_REJECTED

logger = logging.getLogger(__name__)

# What Python raises when data does not fit the code that handles it: a missing key
# (KeyError), a value out of range (OverflowError, ValueError), a wrong type (TypeError),
# text that is not UTF-8 (UnicodeError, a ValueError). Raised by a write for one batch,
# they are the records' fault, not the store's: the batch is split until they are found.
# Stores add their own (PostgreSQL's DataError: links/positions.py).
CONTENT_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError, LookupError,
                                               ArithmeticError)


def content_error_label(exc: Exception) -> str:
    """The default `reason` label of shortener_records_rejected_total: the error's type."""
    return type(exc).__name__


class Record(Protocol):
    """What an apply needs of a Kafka record (kafka-python's ConsumerRecord has it)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class BatchWrite(Protocol):
    def __call__(self, *, partition: int, records: Sequence[Record], expected: int | None,
                 rejected: Mapping[int, str], topic_id: str | None) -> int:
        """Write one batch and its new position in one atomic step; return the position.

        rejected: offset -> reason of records in `records` to step over (counted in the store
        as rejected, not applied). topic_id: the topic's id, stored beside the position (None:
        unknown). Raise PositionMismatch (nothing written) if the store's position is not
        `expected`, a store error if the store fails, a content error if the records' content
        is refused.
        """
        ...


class BatchIsolation:
    """Write a batch (`write`), stepping over the records whose content the store refuses.

    content_errors: the errors that mean the records' content is at fault (CONTENT_ERRORS and
    the store's own); content_error_reason: their fixed label for the metric.
    """

    def __init__(self, *, name: str, topic: str, write: BatchWrite,
                 content_errors: tuple[type[Exception], ...] = CONTENT_ERRORS,
                 content_error_reason: Callable[[Exception], str] = content_error_label) -> None:
        self.name = name
        self.topic = topic
        self.write = write
        self.content_errors = content_errors
        self.content_error_reason = content_error_reason

    def isolate(self, *, partition: int, records: Sequence[Record], expected: int | None,
                topic_id: str | None, failed: Exception | None = None) -> int:
        """Write `records`; if the write fails on a content error, split the batch in halves,
        in offset order, until the records at fault are single: each is rejected and stepped
        over in the write of the records after it (or alone, if it is the last). Returns the new
        position, the offset after the batch's last record.

        failed: the content error a write of the whole batch already raised (it is not tried
        again). Store errors and PositionMismatch propagate (the batch is read again from the
        stored position: parts written before stay written, each with its own position).
        """
        position = expected
        parts: list[Sequence[Record]] = [records]
        pending: list[Record] = []  # isolated, to be stepped over by the next write
        reasons: dict[int, tuple[str, str]] = {}  # offset -> (label, the error's text)
        while parts:
            part = parts.pop(0)
            if failed is None:
                try:
                    position = self.write(
                        partition=partition, records=[*pending, *part], expected=position,
                        rejected={r.offset: reasons[r.offset][0] for r in pending},
                        topic_id=topic_id)
                except self.content_errors as exc:
                    failed = exc
                else:
                    self._rejected_report(pending, reasons)
                    pending = []
                    continue
            if len(part) == 1:
                pending.append(part[0])
                reasons[part[0].offset] = (self.content_error_reason(failed), repr(failed))
            else:
                if part is records:
                    logger.warning("%s: a batch of %d record(s) of %s[%d] from offset %d was "
                                   "refused for its content (%r): finding the record(s) at "
                                   "fault", self.name, len(records), self.topic, partition,
                                   records[0].offset, failed)
                middle = len(part) // 2
                parts[:0] = [part[:middle], part[middle:]]
            failed = None
        if pending:
            position = self.write(partition=partition, records=pending, expected=position,
                                  rejected={r.offset: reasons[r.offset][0] for r in pending},
                                  topic_id=topic_id)
            self._rejected_report(pending, reasons)
        assert position is not None
        return position

    def _rejected_report(self, records: Sequence[Record],
                         reasons: Mapping[int, tuple[str, str]]) -> None:
        # After the write that stepped over them: logged and counted once.
        for rec in records:
            label, text = reasons[rec.offset]
            RECORDS_REJECTED.labels(self.topic, label).inc()
            logger.error("%s: rejected record topic=%s partition=%s offset=%s: the store "
                         "refused its content: %s", self.name, rec.topic, rec.partition,
                         rec.offset, text)


class BatchStrategy(Protocol):
    """What the loop hands batches to (see the module's docstring). Any method may raise what a
    write raises: PositionMismatch, the store's errors, TopicRecreated."""

    def submit(self, *, partition: int, records: Sequence[Record], expected: int | None,
               topic_id: str | None) -> int:
        """Take one partition's batch (offset order, the first at or after `expected`, the
        position the loop believes the store holds; None: nothing stored); return the
        partition's position after it."""
        ...

    def poll(self) -> None:
        """A fetch brought nothing: finish what is held back."""
        ...

    def join(self) -> None:
        """Return once every batch submitted has committed; raise the failure of one that did
        not."""
        ...

    def close(self) -> None:
        """Release what the strategy holds; called once, after a last join."""
        ...


class StrategyFactory(Protocol):
    def __call__(self, *, isolation: BatchIsolation,
                 committed: Callable[[], None]) -> BatchStrategy: ...


class Writes:
    """The plain strategy: each batch is written (with isolation) before submit returns."""

    def __init__(self, *, isolation: BatchIsolation, committed: Callable[[], None]) -> None:
        self.isolation = isolation
        self.committed = committed

    def submit(self, *, partition: int, records: Sequence[Record], expected: int | None,
               topic_id: str | None) -> int:
        position = self.isolation.isolate(partition=partition, records=records,
                                          expected=expected, topic_id=topic_id)
        self.committed()
        return position

    def poll(self) -> None:
        pass

    def join(self) -> None:
        pass

    def close(self) -> None:
        pass
