"""consume_links' batch strategy (a topics.batching.BatchStrategy): Redis applies one batch while
this process polls and decodes the next.

Why: applying a batch is one Lua script (services.APPLY_SCRIPT), and while it runs in Redis
(2 to 2.5 us of Redis' CPU a link, most of it creating the keys) the consumer had nothing to do
but wait: a fifth to a quarter of a fresh replica's load of the links topic (py-spy, 1,000,000
links). So a batch's
script call is sent on a connection of the strategy's own and its reply is read only when the
next batch is ready to go (or a poll brings nothing, or the loop repositions, stops, or the
replica is about to be marked ready): Redis' thread and this process' run at the same time.
No thread is needed: the reply simply waits in the socket.

What stays as it was:
  * batches are applied one at a time and in order, each in its own atomic script checked
    against the stored position: the next is sent only once the previous one's reply is read;
    a crash at any moment leaves Redis at the end of the last batch it applied, with its
    position;
  * every record is decoded and checked before its batch is sent (services.links_batch_prepare,
    link_record_decode); a batch whose decoding raises a content error is handed to the loop's
    BatchIsolation (split until the records at fault are found), after the batch in flight;
  * a batch's failure (PositionMismatch, a Redis error) is raised when its reply is read, i.e.
    from the next submit, poll or join; the loop then re-reads from the position that Redis
    holds, which a failed batch did not move. Until then the loop's `expected` (and the group
    offset, monitoring only) may be one batch ahead of Redis: whatever needs Redis to hold it
    joins first (LinksConsumer does before it marks the replica ready).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from redis import Redis
from redis.connection import Connection
from redis.exceptions import RedisError

from redirects import services
from topics.batching import BatchIsolation, Record


class LinksWrites:
    """The pipelined strategy; see the module's docstring. redis: the replica's client (the
    strategy takes one connection of its pool for itself). applied: called with each batch's
    services.BatchResult once its reply is read (the consumer's counters)."""

    def __init__(self, *, isolation: BatchIsolation, committed: Callable[[], None], redis: Redis,
                 applied: Callable[[services.BatchResult], None]) -> None:
        self.isolation = isolation
        self.committed = committed
        self.redis = redis
        self.applied = applied
        self._connection: Connection | None = None
        self._inflight: services.LinksBatch | None = None  # sent, its reply not yet read

    def submit(self, *, partition: int, records: Sequence[Record], expected: int | None,
               topic_id: str | None) -> int:
        # Decoding runs while Redis applies the batch before.
        try:
            batch = services.links_batch_prepare(partition=partition, records=records,
                                                 expected_position=expected, topic_id=topic_id)
        except self.isolation.content_errors as exc:
            self._inflight_wait()
            position = self.isolation.isolate(partition=partition, records=records,
                                              expected=expected, topic_id=topic_id, failed=exc)
            self.committed()
            return position
        self._inflight_wait()
        connection = self._connection_get()
        try:
            services.links_batch_send(connection, batch)
        except RedisError:
            connection.disconnect()  # half a command may have gone out: start afresh
            raise
        self._inflight = batch
        return batch.next_offset

    def poll(self) -> None:
        self._inflight_wait()

    def join(self) -> None:
        self._inflight_wait()

    def close(self) -> None:
        """Give the connection back to the pool (after the loop's last join)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            self.redis.connection_pool.release(connection)

    def _connection_get(self) -> Connection:
        if self._connection is None:
            self._connection = self.redis.connection_pool.get_connection()
        return self._connection

    def _inflight_wait(self) -> None:
        """Read the reply of the batch in Redis, if any: count it, or raise its failure."""
        batch, self._inflight = self._inflight, None
        if batch is None:
            return
        assert self._connection is not None
        try:
            result = services.links_batch_receive(self._connection, batch)
        except RedisError:
            # A reply not read (a timeout) would be taken for the next command's.
            self._connection.disconnect()
            raise
        self.applied(result)
        self.committed()
