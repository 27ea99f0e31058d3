"""Implicit pipelining over one Redis connection: the commands of all requests in flight at the
same moment go to Redis in one write, and their replies come back in one read.

Why this module exists: a replica's redirect is one short Redis command, and at thousands per
second the cost is the round trip itself (a syscall each way and a Redis wake-up per command),
not the command. Sending together the commands of the requests that are waiting at the same
moment makes one syscall and one wake-up serve many clicks. No well-kept Python client does this
for us: redis-py's asyncio client (8.1) has no auto-pipelining (redis/redis-py#3767, open), and
its explicit Pipeline retries a whole batch after a connection error, which would count clicks
twice. coredis (6.9) multiplexes concurrent commands over one connection the same way, but served
half the redirects per second of this module on the same machine (docs/performance.md). So the
connection, the URL's AUTH/SELECT and the RESP parsing (hiredis) are redis-py's; the batching
is here, with the encoding of a command (RESP's array of bulk strings, a few lines: redis-py's
general encoder was a tenth of a worker's time in the profile).

What it guarantees (tests/redirects/test_pipelining.py):
- order: commands are written in the order execute() was called, one batch after the other on a
  single connection, and Redis runs one connection's commands in that order; replies are matched
  to commands by position;
- nothing lost, merged or repeated: each execute() is one command, written once, never retried;
- failure: a connection error or a timeout fails every command of the batch with a RedisError
  (ConnectionError or TimeoutError) and drops the connection; the next batch connects afresh, so
  the client recovers by itself when Redis returns. A connection Redis closed while it was idle
  (a restart between two batches) is replaced before the next batch is written: nothing of that
  batch was sent, so none of its commands fails for it. A command's own error reply (NOSCRIPT,
  say) fails only that command;
- a new connection first runs `on_connect` (if given) before any command of the batch is
  written; if it raises, the batch fails as above and the next batch connects and runs it again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio.connection import Connection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


class PipelinedRedis:
    """One Redis connection shared by every request of an event loop (one per worker process).

    execute(*command) returns a future of the command's reply (bytes, int, list or None, never
    decoded). While a batch is with Redis, new commands wait in the next batch: the batches grow
    with the load by themselves, and under light load a command goes out alone at once.
    """

    def __init__(self, url: str, *, connect_timeout: float = 2.0, timeout: float = 5.0,
                 on_connect: Callable[[Connection], Awaitable[None]] | None = None) -> None:
        """url: redis://[user:password@]host:port/db (or unix://, rediss://), as redis-py reads it.
        connect_timeout: seconds to open the connection; timeout: seconds for one batch's write
        and replies, after which its commands fail with TimeoutError. on_connect: awaited with
        every new connection (redis-py's, connected) before anything else is sent on it, within
        the batch's timeout; it may send commands and read their replies; raising a RedisError
        fails the batch (the replica's web: the incarnation check after a Redis restart,
        redirects/incarnation.incarnation_check_on_connect)."""
        options: dict[str, Any] = dict(parse_url(url))
        connection_class = options.pop("connection_class", Connection)
        self._connection: Connection = connection_class(
            **options,
            socket_connect_timeout=connect_timeout,
            # No timeout per read: one deadline covers a whole batch (below).
            socket_timeout=None,
            # Never retry here: a command that reached Redis before the connection broke may
            # have run, and running a click twice would count it twice.
            retry=Retry(NoBackoff(), 0),
        )
        self._timeout = timeout
        self._on_connect = on_connect
        # (the command, encoded; the future of its reply), in the order execute() was called.
        self._pending: list[tuple[bytes, asyncio.Future]] = []
        self._sender: asyncio.Task | None = None
        # Observed by the tests: how many batches went out, with how many commands in all.
        self.batches = 0
        self.commands = 0

    def execute(self, *command: Any) -> asyncio.Future:
        """Queue one command, e.g. execute("EVALSHA", sha, 1, key, arg): arguments str (sent as
        UTF-8), bytes or int. Await the result for its reply. Raises DataError at once for
        another type; through the future, ResponseError for the command's error reply
        (NoScriptError for NOSCRIPT), ConnectionError or TimeoutError when Redis is away."""
        packed = encode(command)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((packed, future))
        if self._sender is None:
            # Runs after the callbacks already due in this turn of the loop, so the requests
            # that became ready together are in the first batch.
            self._sender = loop.create_task(self._send_batches())
        return future

    async def _send_batches(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                await self._send(batch)
        finally:
            # No await between the empty check above and this: a command queued later always
            # finds either a running sender or None and starts one.
            self._sender = None
            if self._pending:  # cancelled (shutdown) with commands still queued
                _fail(self._pending, RedisConnectionError("the Redis client was closed"))
                self._pending = []

    async def _send(self, batch: list[tuple[bytes, asyncio.Future]]) -> None:
        connection = self._connection
        try:
            async with asyncio.timeout(self._timeout):
                if connection.is_connected and _closed_by_peer(connection):
                    await connection.disconnect(nowait=True)
                if not connection.is_connected:
                    await connection.connect()
                    if self._on_connect is not None:
                        await self._on_connect(connection)
                await connection.send_packed_command(b"".join([packed for packed, _ in batch]),
                                                     check_health=False)
                self.batches += 1
                self.commands += len(batch)
                for _, future in batch:
                    try:
                        reply = await connection.read_response(disable_decoding=True)
                    except ResponseError as exc:  # this command's error reply; the stream is intact
                        if not future.done():
                            future.set_exception(exc)
                    else:
                        if not future.done():  # its request may have been cancelled meanwhile
                            future.set_result(reply)
        except BaseException as exc:
            # The replies still due can no longer be matched to their commands: drop the
            # connection and fail every command of the batch that has no reply yet.
            await connection.disconnect(nowait=True)
            if isinstance(exc, RedisError):
                error: RedisError = exc
            elif isinstance(exc, TimeoutError):
                error = RedisTimeoutError(f"no reply from Redis within {self._timeout} s")
            else:
                error = RedisConnectionError(f"Redis connection failed: {exc!r}")
            _fail(batch, error)
            if not isinstance(exc, Exception):  # cancellation: let it through
                raise

    async def aclose(self) -> None:
        """Stop sending and close the connection; commands not yet answered fail with
        ConnectionError (those already with Redis may have run)."""
        if self._sender is not None:
            self._sender.cancel()
            try:
                await self._sender
            except BaseException:  # noqa: BLE001 - its cancellation, or the batch's error
                pass
        self._sender = None
        # A sender cancelled before it first ran never saw its queue.
        _fail(self._pending, RedisConnectionError("the Redis client was closed"))
        self._pending = []
        await self._connection.disconnect()


def encode(command: tuple) -> bytes:
    """A command in RESP (https://redis.io/docs/latest/develop/reference/protocol-spec/): an
    array of bulk strings. Raises DataError for an argument that is not str, bytes or int."""
    parts = [b"*%d\r\n" % len(command)]
    for arg in command:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int) and not isinstance(arg, bool):
            arg = b"%d" % arg
        elif not isinstance(arg, bytes):
            raise DataError(f"cannot send {type(arg).__name__} {arg!r} to Redis: use str, bytes "
                            "or int")
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


def _closed_by_peer(connection: Connection) -> bool:
    """Whether Redis closed this idle connection (its end of the stream, or a reset, was read
    in the background by the event loop's transport). Between batches every reply has been
    read, so anything the reader holds is the close. Looks at redis-py's StreamReader (the
    `_reader` of redis.asyncio.connection.AbstractConnection, redis 8.1): its public
    can_read() would cost a read with a timeout for every batch."""
    reader = connection._reader
    return reader is not None and (reader.at_eof() or reader.exception() is not None)


def _fail(batch: list[tuple[bytes, asyncio.Future]], error: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(error)
