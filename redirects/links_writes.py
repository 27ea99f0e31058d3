"""consume_links' batch strategy (a topics.batching.BatchStrategy): a worker process decodes the
batches and has Redis apply them, while this process polls Kafka for the next ones.

Why: a fresh replica's load of the links topic is bound by CPU, and kafka-python's unpacking of
each record (the bare read's own cost) takes most of it, in the polling thread. Decoding and
checking the records (services.links_batch_prepare) and packing the Redis command took another
quarter to a third of that thread's time, under the same GIL; a thread would not run them
beside the unpacking, a process does, on the machine's other core. What crosses between the two
is each batch's offsets, keys and values (three lists, pickled: about 0.1 us a record on this
side) one way, and each batch's outcome the other way. (py-spy and bench/catchup.py,
docs/performance.md.)

The worker (redirects/links_worker.py) is forked from this process (so it shares its code and
settings, and needs no start of its own) when the first batch comes, and again after it is lost.
It holds a connection to Redis of its own, and pipelines as this module did in-process before:
it decodes a batch while Redis applies the one before (the script's reply waits in the socket).

What stays as it was:
  * batches are applied one at a time and in order, each in its own atomic script checked
    against the stored position: the worker sends the next only once the previous one's reply is
    read, and sends nothing after a batch that failed or was refused, until this side has dealt
    with it; a crash of either process at any moment leaves Redis at the end of the last batch
    it applied, with its position;
  * every record is decoded and checked before its batch is sent (services.links_batch_prepare,
    link_record_decode); the records it refuses are logged and counted here, once the batch's
    reply is read. A batch whose decoding raises a content error is handed to the loop's
    BatchIsolation here (split until the records at fault are found), as are the batches
    submitted after it, in order;
  * a batch's failure (PositionMismatch, a Redis error, the worker lost: WorkerLost, a
    RedisError) is raised when its outcome is read, i.e. from a later submit, poll or join; the
    loop then re-reads from the position that Redis holds, which a failed batch did not move.
    Until then the loop's `expected` (and the group offset, monitoring only) may be up to
    `depth` batches ahead of Redis: whatever needs Redis to hold them joins first
    (LinksConsumer does before it marks the replica ready).

A stuck worker (stopped, hung) never holds this process: a watchdog thread kills it once this
side has waited on it for `stuck_seconds`, or `stop_grace_seconds` after SIGTERM/SIGINT, and
it counts as lost (LinksWrites, tests/redirects/test_links_writes.py and
tests/redirects/test_consume_links_faults.py).
"""

from __future__ import annotations

import fcntl
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection as Pipe
from typing import NamedTuple

from redis import Redis
from redis.exceptions import RedisError

from redirects import services
from redirects.links_worker import records_pack, worker_main
from topics.batching import BatchIsolation, Record
from topics.positions import PositionMismatch

logger = logging.getLogger(__name__)


class WorkerLost(RedisError):
    """The worker process exited, or its pipe broke: the batches in it may or may not have
    been applied. A RedisError, so the loop retries as for a store error (it re-reads the
    position Redis holds); the next batch forks a new worker."""


class _Sent(NamedTuple):
    """A batch handed to the worker, kept until its outcome is read (a content error's
    isolation needs its records again)."""

    partition: int
    records: Sequence[Record]
    expected: int | None
    topic_id: str | None


class LinksWrites:
    """The strategy; see the module's docstring. redis: the replica's client (the worker makes
    a connection of its own with the same settings). applied: called with each batch's
    services.BatchResult once its outcome is read (the consumer's counters)."""

    # Batches handed to the worker and not yet reported: one being decoded there while the one
    # before is in Redis, and one more as slack for a moment the worker or Redis waits for the
    # CPU (the two cores are shared with Kafka and Redis): with 2, waiting for outcomes took
    # 7 % of this process' time in a loaded run, 1 % with 3 (py-spy, 1,000,000 links). A
    # submit beyond this waits for the oldest one's outcome.
    depth = 3
    # A hand-over or an outcome that waits longer than this on the worker means the worker is
    # stuck (stopped by SIGSTOP, hung): it is killed and counts as lost (WorkerLost), so the loop
    # re-reads from what Redis holds with a new worker. A batch takes the worker milliseconds,
    # and its Redis client gives up after its socket timeout (5 s), so this is far past a slow
    # batch. Once the loop is told to stop (SIGTERM, SIGINT), the wait is bounded by
    # stop_grace_seconds instead: the command then exits with the batches not yet reported
    # still to be read again at the next start (systemd's stop timeout is 90 s).
    stuck_seconds = 60.0
    stop_grace_seconds = 5.0

    def __init__(self, *, isolation: BatchIsolation, committed: Callable[[], None], redis: Redis,
                 applied: Callable[[services.BatchResult], None],
                 stop: threading.Event | None = None) -> None:
        self.isolation = isolation
        self.committed = committed
        self.redis = redis
        self.applied = applied
        self.stop = stop if stop is not None else threading.Event()
        self._worker: multiprocessing.process.BaseProcess | None = None
        self._requests: Pipe | None = None  # to the worker
        self._replies: Pipe | None = None  # from the worker
        self._inflight: deque[_Sent] = deque()  # handed over, in order, outcome not yet read
        # When this side began to wait on the worker (a send or a receive), None when it does
        # not; read by the watchdog thread (_watch), which kills a worker that keeps it waiting.
        self._waiting_since: float | None = None
        self._watchdog: threading.Thread | None = None
        self._closed = threading.Event()

    def submit(self, *, partition: int, records: Sequence[Record], expected: int | None,
               topic_id: str | None) -> int:
        while len(self._inflight) >= self.depth:
            self._outcome_read()
        requests = self._worker_get()
        message = ("batch", partition, expected, topic_id, records[0].topic,
                   *records_pack(records))
        self._waiting_since = time.monotonic()
        try:
            requests.send(message)
        except OSError as exc:
            self._worker_forget()
            raise WorkerLost(f"the links worker is gone: {exc!r}") from None
        finally:
            self._waiting_since = None
        self._inflight.append(_Sent(partition, records, expected, topic_id))
        return records[-1].offset + 1

    def poll(self) -> None:
        self.join()

    def join(self) -> None:
        while self._inflight:
            self._outcome_read()

    def close(self) -> None:
        """Stop the worker (after the loop's last join)."""
        self._closed.set()
        worker, requests = self._worker, self._requests
        if worker is None or requests is None:
            return
        try:
            requests.send(("stop",))
        except OSError:
            pass
        worker.join(timeout=5)
        self._worker_forget()

    # --- this side ----------------------------------------------------------------------

    def _worker_get(self) -> Pipe:
        if self._requests is None:
            context = multiprocessing.get_context("fork")
            requests_in, requests_out = context.Pipe(duplex=False)
            replies_in, replies_out = context.Pipe(duplex=False)
            _pipe_widen(requests_out)
            pool = self.redis.connection_pool
            worker = context.Process(
                target=worker_main, name="consume_links worker", daemon=True,
                args=(requests_in, replies_out, (requests_out, replies_in),
                      lambda: pool.connection_class(**pool.connection_kwargs),
                      self.isolation.content_errors))
            worker.start()
            requests_in.close()
            replies_out.close()
            self._worker, self._requests, self._replies = worker, requests_out, replies_in
            if self._watchdog is None:
                self._watchdog = threading.Thread(target=self._watch, daemon=True,
                                                  name="consume_links worker watchdog")
                self._watchdog.start()
        return self._requests

    def _watch(self) -> None:
        """Kill the worker when this side has waited on it past stuck_seconds (or past
        stop_grace_seconds once the loop is stopping): the wait then ends with an EOF or a
        broken pipe, which the waiting call turns into WorkerLost. A thread, because a
        send into a full pipe cannot be given a timeout."""
        while not self._closed.wait(0.2):
            since, worker = self._waiting_since, self._worker
            if since is None or worker is None:
                continue
            limit = self.stop_grace_seconds if self.stop.is_set() else self.stuck_seconds
            waited = time.monotonic() - since
            if waited >= limit and worker.pid is not None:
                logger.error("the links worker (pid %s) kept this process waiting %.1fs%s: "
                             "killing it; what it held is read again", worker.pid, waited,
                             " while stopping" if self.stop.is_set() else "")
                try:
                    os.kill(worker.pid, signal.SIGKILL)  # acts on a stopped process too
                except ProcessLookupError:
                    pass
                self._waiting_since = None

    def _worker_forget(self) -> None:
        """After the worker is lost (or stopped): what was in it is not known to be applied."""
        self._inflight.clear()
        for pipe in (self._requests, self._replies):
            if pipe is not None:
                pipe.close()
        worker, self._worker, self._requests, self._replies = self._worker, None, None, None
        if worker is not None and worker.is_alive():
            worker.kill()  # SIGKILL: a worker stopped by SIGSTOP would not act on SIGTERM
        if worker is not None:
            worker.join()

    def _receive(self) -> tuple:
        assert self._replies is not None
        self._waiting_since = time.monotonic()
        try:
            return self._replies.recv()
        except (EOFError, OSError) as exc:
            self._worker_forget()
            raise WorkerLost(f"the links worker is gone: {exc!r}") from None
        finally:
            self._waiting_since = None

    def _outcome_read(self) -> None:
        """Read the oldest batch's outcome: count it, or raise its failure (after reading the
        outcomes of the batches after it, which the worker dropped), or isolate it."""
        sent = self._inflight[0]
        outcome = self._receive()
        self._inflight.popleft()
        if outcome[0] == "applied":
            try:
                result = services.links_batch_done(outcome[1], outcome[2])
            except PositionMismatch:
                self._dropped_read()
                raise
            self.applied(result)
            self.committed()
            return
        dropped = self._dropped_read()
        if outcome[0] == "failed":
            raise outcome[1]
        assert outcome[0] == "content", outcome
        # Rare (a MessageError is not one: those records are rejected in the batch): the batch
        # and the ones after it, which the worker dropped, are written here, in order.
        failed: Exception | None = outcome[1]
        for batch in [sent, *dropped]:
            self.isolation.isolate(partition=batch.partition, records=batch.records,
                                   expected=batch.expected, topic_id=batch.topic_id,
                                   failed=failed)
            failed = None
            self.committed()

    def _dropped_read(self) -> list[_Sent]:
        """After a batch failed or was refused: the worker dropped the ones after it. Read
        those outcomes, then let it take batches again."""
        dropped = list(self._inflight)
        for _ in dropped:
            outcome = self._receive()
            assert outcome[0] == "dropped", outcome
        self._inflight.clear()
        assert self._requests is not None
        try:
            self._requests.send(("resume",))
        except OSError as exc:
            self._worker_forget()
            raise WorkerLost(f"the links worker is gone: {exc!r}") from None
        return dropped


def _pipe_widen(pipe: Pipe) -> None:
    """Let a whole batch (5,000 links of ~250 bytes) fit in the pipe to the worker, so that
    handing it over does not wait for the worker to be done with Redis (a pipe holds 64 KiB by
    default). Linux only; as large as the system allows (/proc/sys/fs/pipe-max-size, 1 MiB by
    default, unless privileged): a larger batch is handed over in parts, as before."""
    setsize = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setsize is None:
        return
    for size in (4 << 20, 1 << 20):
        try:
            fcntl.fcntl(pipe.fileno(), setsize, size)
            return
        except OSError:
            continue
