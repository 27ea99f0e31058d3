"""consume_clicks' loop: the clicks topic read into PostgreSQL (links/totals.py applies a batch).

A topics.loop.Loop composed of the master's position store (links/positions.py: a position
outside the topic's retained range is reported as a loss, never passed over silently), the
clicks batch write, and a pipelined strategy (ClicksWrites):

while PostgreSQL applies one batch (in a worker thread, on its own connection; psycopg2 releases
the GIL while it waits), the main thread polls and decodes the next one, so the Python and the
PostgreSQL halves of the work run on two cores at once. Batches are still applied one at a time
and in order, each in its own transaction checked against the stored position. A batch's failure
surfaces when the next batch (or an idle poll, a repositioning, the stop) waits for it: a
content error (PostgreSQL refused a value of the batch) is isolated there and then
(BatchIsolation, in the worker thread), so the batch still ends where the next one expects; any
other failure is handled by the loop, which re-reads from the position that PostgreSQL holds,
which the failed transaction did not move. The group offset (monitoring only) may therefore run
one batch ahead of PostgreSQL.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from django.db import DatabaseError, connection
from kafka import KafkaConsumer

from links.totals import (
    ClicksBatch,
    clicks_batch_apply,
    clicks_batch_decode,
    clicks_batch_decode_stepping_over,
)
from links.positions import PostgresPositionStore
from runtime.metrics import CONSUMER_RECORDS
from topics.batching import BatchIsolation, Record
from topics.clicks import clicks_consumer_make, clicks_topic
from topics.loop import Loop

logger = logging.getLogger(__name__)


def _batch_apply(*, topic: str, partition: int, batch: ClicksBatch, expected: int | None,
                 topic_id: str | None) -> int:
    """Apply a decoded batch (clicks_batch_apply) and count its records; returns the position.
    In the worker thread."""
    try:
        result = clicks_batch_apply(topic=topic, partition=partition, batch=batch,
                                    expected_position=expected, topic_id=topic_id)
    except PostgresPositionStore.content_errors:
        raise  # the transaction was rolled back; the connection is sound
    except DatabaseError:
        # Drop this thread's broken connection; Django opens a new one on the next query.
        connection.close()
        raise
    CONSUMER_RECORDS.labels(topic, "applied").inc(result.applied)
    CONSUMER_RECORDS.labels(topic, "skipped").inc(result.skipped_malformed)
    CONSUMER_RECORDS.labels(topic, "unknown").inc(result.skipped_unknown)
    return result.next_offset


def clicks_batch_write(*, topic: str, partition: int, records: Sequence[Record],
                       expected: int | None, rejected: Mapping[int, str],
                       topic_id: str | None) -> int:
    """The loop's topics.batching.BatchWrite (once `topic` is bound): decode the records not in
    `rejected` and apply them. In the worker thread (BatchIsolation's writes)."""
    batch = clicks_batch_decode_stepping_over(records=records, rejected=rejected)
    return _batch_apply(topic=topic, partition=partition, batch=batch, expected=expected,
                        topic_id=topic_id)


class ClicksWrites:
    """The pipelined topics.batching.BatchStrategy; see the module's docstring."""

    def __init__(self, *, isolation: BatchIsolation, committed: Callable[[], None]) -> None:
        self.isolation = isolation
        self.committed = committed
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clicks-apply")
        # The batch in PostgreSQL: its future, and what isolating its records would need.
        self._inflight: tuple[Future[int], int, Sequence[Record], int | None,
                              str | None] | None = None

    def submit(self, *, partition: int, records: Sequence[Record], expected: int | None,
               topic_id: str | None) -> int:
        # Decoding runs while the previous batch's transaction is in PostgreSQL.
        try:
            batch = clicks_batch_decode(records=records)
        except self.isolation.content_errors as exc:
            # A report the decoder could not handle: found and stepped over (in the worker
            # thread, which holds the consumer's connection), after the batch in flight.
            self._inflight_wait()
            position = self._worker.submit(
                self.isolation.isolate, partition=partition, records=records,
                expected=expected, topic_id=topic_id, failed=exc).result()
            self.committed()
            return position
        self._inflight_wait()
        future = self._worker.submit(_batch_apply, topic=self.isolation.topic,
                                     partition=partition, batch=batch, expected=expected,
                                     topic_id=topic_id)
        self._inflight = (future, partition, records, expected, topic_id)
        return batch.next_offset

    def poll(self) -> None:
        self._inflight_wait()

    def join(self) -> None:
        self._inflight_wait()

    def close(self) -> None:
        """Release the worker thread and its connection (after the loop's last join)."""
        # The worker's own connection (Django's are per thread), closed in its thread.
        self._worker.submit(lambda: connection.close()).result()
        self._worker.shutdown()

    def _inflight_wait(self) -> None:
        """Wait for the batch in PostgreSQL; isolate what PostgreSQL refused of it; raise any
        other failure."""
        inflight, self._inflight = self._inflight, None
        if inflight is None:
            return
        future, partition, records, expected, topic_id = inflight
        try:
            future.result()
        except self.isolation.content_errors as exc:
            self._worker.submit(self.isolation.isolate, partition=partition, records=records,
                                expected=expected, topic_id=topic_id, failed=exc).result()
        self.committed()


def clicks_loop_make(
    *,
    stop: threading.Event,
    consumer_factory: Callable[[], KafkaConsumer] = clicks_consumer_make,
) -> Loop:
    """consume_clicks' loop over the clicks topic; run it with `.run()`."""
    topic = clicks_topic()
    return Loop(name="clicks consumer", topic=topic, stop=stop,
                consumer_factory=consumer_factory, store=PostgresPositionStore(topic=topic),
                write=functools.partial(clicks_batch_write, topic=topic), strategy=ClicksWrites)
