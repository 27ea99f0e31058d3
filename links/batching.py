"""Group commit for PUT /create: the creates that arrive together share one database round trip,
one commit and one Kafka batch (links.services.links_create_many).

A few threads a process (the batcher: BATCHES_IN_FLIGHT) run the batches, each on a database
connection of its own. There is no timer: a create that arrives while a batcher thread is free
starts a batch at once, alone; the creates that arrive while every thread is busy wait for one
to finish and then go together, as the next batch (up to MAX_BATCH). So a lone request never
waits for company, and under load a batch grows to what arrived during the previous one:
PostgreSQL's own group commit, one level up. What the batch costs is shared by its members;
what it takes (a durable commit, Kafka's acks=all) is taken once.

Each request gets its own item's outcome (links_create_many's: the link, or that item's
refusal); a failure of the database fails every member of the batch (nothing of it was
committed, so nothing is lost: a retry creates the links, and a longurl still gets one link).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence

from django.db import DatabaseError, InterfaceError, close_old_connections, connections

from links import services
from links.create_checks import db_retrying
from links.services import CreateItem, CreateOutcome
from runtime.metrics import CREATE_BATCH_SIZE

logger = logging.getLogger(__name__)

# The most creates in one batch: one INSERT of this many rows and this many records in flight
# to Kafka. Under the benchmark's load (32 connections over 2 workers) batches stay far below it;
# the bound keeps a burst of thousands from making one statement and one wait that long.
MAX_BATCH = 256


# Batches running at once in a process, each on a thread and a database connection of its own:
# with two, one batch's database work overlaps the other's wait for Kafka (and a request that
# arrives while one batch runs starts the next at once). Measured (bench/create.py, wrk -c32,
# 2 workers, alternating runs on a shared machine): 942 and 763 new links/s with one,
# 1,007 and 1,175/s with two, p99 235 and 94 ms against 92 and 74 ms.
BATCHES_IN_FLIGHT = 2


class BatcherClosed(Exception):
    """The process is shutting down: no new batch starts."""


_Waiter = tuple[CreateItem, asyncio.AbstractEventLoop, asyncio.Future]


class CreateBatcher:
    """Runs links_create_many for the creates handed to create(), batching those that arrive
    while every batcher thread is busy: `in_flight` batches at most at a time, of `max_batch`
    creates at most. `run` is what a batch runs (links_create_many; a test may pass its own).
    start() before the first create(); close() at shutdown."""

    def __init__(self, *, max_batch: int = MAX_BATCH, in_flight: int = BATCHES_IN_FLIGHT,
                 run: Callable[[Sequence[CreateItem]], list[CreateOutcome]] | None = None) -> None:
        self.max_batch = max_batch
        self.in_flight = in_flight
        self._run_batch = run or services.links_create_many
        self._ready = threading.Condition()
        self._queue: list[_Waiter] = []
        self._closed = False
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for n in range(self.in_flight):
            # Daemons: a batch stuck past close()'s timeout must not keep the process alive.
            thread = threading.Thread(target=self._loop, name=f"create-batcher-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def queued(self) -> int:
        """Creates waiting for the next batch (not those of the batch running)."""
        with self._ready:
            return len(self._queue)

    async def create(self, item: CreateItem) -> CreateOutcome:
        """The outcome of links_create_many for `item`, run in a batch with whatever else is
        waiting: a LinkCreated, or the exception for this item (LongurlRefused, LinkDisabled,
        LinkExpired, LinkPublishError), or the DatabaseError/InterfaceError that failed the
        whole batch, or another exception that did (a bug: logged). Raises BatcherClosed once
        close() was called. Must be awaited on a running event loop."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._ready:
            if self._closed:
                raise BatcherClosed("the server is shutting down")
            self._queue.append((item, loop, future))
            self._ready.notify()
        return await future

    def close(self, *, timeout: float) -> None:
        """Start no more batches: the creates still waiting get BatcherClosed; the batch that
        runs is waited for up to `timeout` seconds (its own waits are bounded: the database's,
        Kafka's publish timeout), and answers its members when it ends."""
        with self._ready:
            self._closed = True
            left, self._queue = self._queue, []
            self._ready.notify()
        _deliver_all([(waiter, BatcherClosed("the server is shutting down")) for waiter in left])
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _loop(self) -> None:
        try:
            self._batches()
        finally:
            connections.close_all()  # this thread's: it ends

    def _batches(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closed:
                    self._ready.wait()
                if self._closed:
                    return
                batch = self._queue[:self.max_batch]
                del self._queue[:self.max_batch]
            _deliver_all(list(zip(batch, self._outcomes([item for item, _, _ in batch]))))

    def _outcomes(self, items: list[CreateItem]) -> Sequence[CreateOutcome | Exception]:
        CREATE_BATCH_SIZE.observe(len(items))
        # What Django does around a request (its request_started and request_finished signals):
        # a connection past CONN_MAX_AGE, or one that met an error, is closed, and the next
        # query opens a fresh one.
        close_old_connections()
        try:
            return db_retrying(lambda: self._run_batch(items))
        except (DatabaseError, InterfaceError) as exc:
            # Nothing of the batch is known to be committed (links_create_many's contract), and
            # a retry is safe: every member is answered 503, and may retry.
            return [exc] * len(items)
        except Exception as exc:  # noqa: BLE001 - the members must be answered, whatever it was
            logger.exception("a batch of %d creates failed", len(items))
            return [exc] * len(items)
        finally:
            close_old_connections()


def _deliver_all(results: list[tuple[_Waiter, CreateOutcome | Exception]]) -> None:
    """Hand each waiter its outcome on its own event loop: one wake-up of a loop a batch, not
    one a request."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, object]]] = {}
    for (_, loop, future), outcome in results:
        by_loop.setdefault(loop, []).append((future, outcome))
    for loop, pairs in by_loop.items():
        try:
            loop.call_soon_threadsafe(_set_results, pairs)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass


def _set_results(pairs: list[tuple[asyncio.Future, object]]) -> None:
    for future, outcome in pairs:
        if future.done():  # cancelled: its request ended (the client left, or shutdown)
            continue
        if isinstance(outcome, BatcherClosed):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

