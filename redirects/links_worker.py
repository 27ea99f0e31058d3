"""consume_links' worker process (redirects/links_writes.py forks it): it decodes the batches
handed to it and has Redis apply them, reporting each outcome in order; and the hand-over format
both sides share (records_pack here, _unblob there).

One job: the worker's side. What the main process keeps, and why there is a worker at all, is
in redirects/links_writes.py.
"""

from __future__ import annotations

import dataclasses
import pickle
import signal
from array import array
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection as Pipe
from typing import NamedTuple

from redis.exceptions import RedisError

from redirects import services
from topics.batching import Record


def records_pack(records: Sequence[Record]) -> tuple:
    """A batch's offsets, keys and values as five flat objects (their lengths beside the joined
    bytes, -1 for None), for the worker (_unblob). Pickling the lists of bytes
    themselves cost 0.24 us a record (pickle memoizes each object), this 0.1 us."""
    offsets = array("q", [r.offset for r in records])
    keys = [r.key for r in records]
    values = [r.value for r in records]
    return (offsets, *_blob(keys), *_blob(values))


def _blob(items: list) -> tuple[array | None, bytes | list]:
    try:
        return array("q", map(len, items)), b"".join(items)
    except TypeError:  # a None (a tombstone's value, a record without a key): rare
        pass
    if all(item is None or isinstance(item, bytes) for item in items):
        lengths = array("q", [-1 if item is None else len(item) for item in items])
        return lengths, b"".join(item for item in items if item is not None)
    # Not what Kafka gives (tests make content errors so): the list as it is, for the decoder
    # to judge in the worker as it would have here.
    return None, items


def _unblob(lengths: array | None, blob: bytes | list) -> list:
    if lengths is None:
        return blob  # type: ignore[return-value]
    items: list[bytes | None] = []
    append = items.append
    start = 0
    for length in lengths:
        if length < 0:
            append(None)
        else:
            end = start + length
            append(blob[start:end])
            start = end
    return items


def _sendable(exc: Exception, fallback: type[Exception]) -> Exception:
    """`exc` if it survives pickling (it crosses to the other process), else `fallback` with
    its text."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - any failure to pickle means: send its text instead
        return fallback(repr(exc))
    return exc


# --- the worker process ------------------------------------------------------------------


class _WorkerRecord(NamedTuple):
    """What services.links_batch_prepare needs of a record, rebuilt in the worker."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def worker_main(requests: Pipe, replies: Pipe, parents: tuple[Pipe, ...],
                 connection_make: Callable, content_errors: tuple[type[Exception], ...]) -> None:
    """The worker's loop: decode each batch that comes (while Redis applies the one before),
    send it to Redis once the previous one's reply is read, and report each outcome in order:
    ("applied", the batch without its arguments, Redis' reply), ("failed", a RedisError),
    ("content", the content error its decoding raised; nothing sent) or ("dropped",): after a
    failure or a refusal, until ("resume",). Ends at ("stop",) or when this side is gone."""
    # Ctrl-C reaches the whole process group, and systemd's stop sends SIGTERM to every process
    # of the unit (KillMode=control-group), supervisord's to the group (stopasgroup): the worker
    # ignores both and stops when consume_links closes it (or exits), after the batch in hand,
    # never in the middle of one. SIGKILL (the watchdog, a stop that timed out) still ends it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for pipe in parents:
        pipe.close()  # so that this side's exit is an EOF here
    connection = connection_make()
    inflight: services.LinksBatch | None = None  # sent to Redis, its reply not yet read
    halted = False

    def finish(batch: services.LinksBatch) -> bool:
        """Read `batch`'s reply and report it; False if the batch failed."""
        try:
            reply = services.links_batch_reply(connection, batch)
        except RedisError as exc:
            connection.disconnect()  # a reply not read would be taken for the next one's
            replies.send(("failed", _sendable(exc, RedisError)))
            return False
        replies.send(("applied", dataclasses.replace(batch, args=[]), reply))
        return reply[0] != b"MISMATCH"

    while True:
        if inflight is not None and not requests.poll():
            # Nothing to decode meanwhile: report the batch in Redis as soon as it is applied.
            halted = not finish(inflight)
            inflight = None
        try:
            message = requests.recv()
        except EOFError:
            return
        if message[0] == "stop":
            if inflight is not None:
                finish(inflight)
            return
        if message[0] == "resume":
            halted = False
            continue
        (_, partition, expected, topic_id, topic, offsets, key_lengths, key_blob, value_lengths,
         value_blob) = message
        keys, values = _unblob(key_lengths, key_blob), _unblob(value_lengths, value_blob)
        if halted:
            replies.send(("dropped",))
            continue
        refused: Exception | None = None
        try:
            batch = services.links_batch_prepare(
                partition=partition, expected_position=expected, topic_id=topic_id,
                records=[_WorkerRecord(topic, partition, offset, key, value)
                         for offset, key, value in zip(offsets, keys, values)])
        except content_errors as exc:
            refused = exc
        if inflight is not None:
            failed = not finish(inflight)
            inflight = None
            if failed:
                halted = True
                replies.send(("dropped",))
                continue
        if refused is not None:
            halted = True
            replies.send(("content", _sendable(refused, ValueError)))
            continue
        try:
            services.links_batch_send(connection, batch)
        except RedisError as exc:
            connection.disconnect()  # half a command may have gone out: start afresh
            halted = True
            replies.send(("failed", _sendable(exc, RedisError)))
            continue
        inflight = batch
