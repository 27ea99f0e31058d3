"""consume_links' batch strategy (redirects/links_writes.py, LinksWrites) against a real Redis:
a worker process decodes and applies the batches while the caller goes on; their outcomes, or
their failure, come with a later submit, poll or join; batches after a failed one are not
applied; a batch the decoder cannot handle is isolated, and the ones after it applied in order;
Redis losing its scripts or the connection, and the worker being lost, are survived."""

from __future__ import annotations

from datetime import datetime, timezone

import fcntl
import os
import signal

import pytest
import redis as redis_lib
from django.conf import settings

from redirects import services
from redirects.links_writes import LinksWrites, WorkerLost
from runtime.metrics import RECORDS_REJECTED
from testkit import FakeRecord as Rec
from topics.batching import CONTENT_ERRORS, BatchIsolation
from topics.links import link_record_encode
from topics.positions import PositionMismatch

NOW = datetime.now(timezone.utc)


def rec(offset: int, tinyurl: str) -> Rec:
    return Rec(offset, *link_record_encode(tinyurl=tinyurl, version=1, created_at=NOW,
                                           longurl=f"https://w.example/{tinyurl}"))


def held(redis, tinyurl: str) -> bytes | None:
    return redis.get(f"{settings.SHORTENER_USER}:link:{tinyurl}")


def position(redis) -> bytes | None:
    return redis.hget(f"{settings.SHORTENER_USER}:links:positions", 0)


@pytest.fixture
def redis(replica_factory):
    return replica_factory(start=False).redis


@pytest.fixture
def writes(redis):
    """A LinksWrites as consume_links builds it: the batch write of its isolation is
    services.links_apply_batch; `applied` and `committed` are recorded."""
    def write(*, partition, records, expected, rejected, topic_id):
        return services.links_apply_batch(redis=redis, partition=partition, records=records,
                                          expected_position=expected, topic_id=topic_id,
                                          rejected=rejected.keys()).next_offset

    isolation = BatchIsolation(name="test", topic="test", write=write,
                               content_errors=CONTENT_ERRORS)
    applied: list[services.BatchResult] = []
    committed: list[bool] = []
    strategy = LinksWrites(isolation=isolation, committed=lambda: committed.append(True),
                           redis=redis, applied=applied.append)
    strategy.applied_results, strategy.commits = applied, committed  # for the assertions
    yield strategy
    strategy.close()


def submit(writes, records, expected):
    return writes.submit(partition=0, records=records, expected=expected, topic_id=None)


def test_a_batch_is_applied_in_redis_while_the_caller_goes_on(redis, writes):
    assert submit(writes, [rec(0, "wwwwww1"), rec(1, "wwwwww2")], None) == 2
    # Handed over, its outcome not read yet: nothing counted.
    assert writes.applied_results == [] and writes.commits == []
    # Up to `depth` batches are in the worker; one more waits for the oldest one's outcome.
    for n in range(1, writes.depth):
        assert submit(writes, [rec(1 + n, f"wwwwwx{n}")], 1 + n) == 2 + n
    assert writes.applied_results == []
    assert submit(writes, [rec(1 + writes.depth, "wwwwww3")], 1 + writes.depth) == 2 + writes.depth
    assert [r.applied for r in writes.applied_results] == [2]
    writes.join()
    assert [r.applied for r in writes.applied_results] == [2] + [1] * writes.depth
    assert len(writes.commits) == 1 + writes.depth
    assert position(redis) == str(2 + writes.depth).encode()
    assert held(redis, "wwwwww3") == b"1||https://w.example/wwwwww3"
    writes.join()  # nothing in flight: nothing more
    assert len(writes.applied_results) == 1 + writes.depth


def test_a_failed_batch_is_raised_by_a_later_call_and_moved_nothing(redis, writes):
    submit(writes, [rec(0, "wwwwww4")], None)
    writes.poll()  # an idle poll finishes the batches in flight
    assert position(redis) == b"1"
    # Believing nothing is stored: Redis refuses the batch, and says so at a later call; the
    # batch after it is not applied (it follows one that was not).
    submit(writes, [rec(1, "wwwwww5")], None)
    submit(writes, [rec(2, "wwwwww6")], 2)
    with pytest.raises(PositionMismatch) as info:
        writes.join()
    assert info.value.stored == 1
    assert held(redis, "wwwwww5") is None and held(redis, "wwwwww6") is None
    assert position(redis) == b"1"
    # The loop re-reads the stored position and goes on from it.
    submit(writes, [rec(1, "wwwwww5")], 1)
    writes.join()
    assert position(redis) == b"2" and held(redis, "wwwwww5") is not None


def test_a_record_the_decoder_cannot_handle_is_isolated_after_the_batch_in_flight(redis,
                                                                                   writes):
    before = RECORDS_REJECTED.labels("test", "TypeError")._value.get()
    submit(writes, [rec(0, "wwwwww7")], None)
    # A value that is not bytes makes the decoder raise TypeError (a content error), not a
    # MessageError: the batch is split until that record is found; the others are applied,
    # and so is the batch handed over after it, which the worker had dropped.
    odd = Rec(2, b"wwwwww9", 12345)
    assert submit(writes, [rec(1, "wwwwww8"), odd, rec(3, "wwwwwwA")], 1) == 4
    assert submit(writes, [rec(4, "wwwwwwE")], 4) == 5
    writes.join()
    assert position(redis) == b"5"
    assert all(held(redis, t) is not None for t in ("wwwwww7", "wwwwww8", "wwwwwwA", "wwwwwwE"))
    assert RECORDS_REJECTED.labels("test", "TypeError")._value.get() == before + 1
    # Only batch 0 was the worker's; 4 went through the isolation's write, as 1-3 did
    # (consume_links counts those in its batch write).
    assert [r.applied for r in writes.applied_results] == [1]
    # A record refused by the decoder's checks (MessageError) is stepped over in its batch.
    bad = Rec(5, b"wwwwwwF", b"not json")
    assert submit(writes, [bad, rec(6, "wwwwwwG")], 5) == 7
    writes.join()
    assert position(redis) == b"7" and held(redis, "wwwwwwG") is not None
    assert writes.applied_results[-1].rejected == 1


def test_the_worker_lost_is_a_store_error_and_a_new_one_takes_over(redis, writes):
    submit(writes, [rec(0, "wwwwwwH")], None)
    writes.join()
    os.kill(writes._worker.pid, signal.SIGKILL)
    writes._worker.join()
    with pytest.raises(WorkerLost):  # a RedisError: the loop re-reads the stored position
        submit(writes, [rec(1, "wwwwwwI")], 1)
        writes.join()
    assert isinstance(WorkerLost(), redis_lib.RedisError)
    stored = int(position(redis))
    submit(writes, [rec(stored, "wwwwwwJ")], stored)
    writes.join()
    assert int(position(redis)) == stored + 1 and held(redis, "wwwwwwJ") is not None


@pytest.mark.parametrize("stopping", [False, True])
@pytest.mark.parametrize("waiting_on", ["receive", "send"])
def test_a_stuck_worker_is_killed_and_counts_as_lost(redis, writes, stopping, waiting_on):
    """A worker that keeps this side waiting (here stopped by SIGSTOP: it reads nothing and
    answers nothing) is killed past stuck_seconds, or past stop_grace_seconds once the loop is
    stopping (SIGTERM), whether this side waits for an outcome or in a send into the worker's
    full pipe."""
    writes.stuck_seconds, writes.stop_grace_seconds = (60.0, 0.5) if stopping else (0.5, 60.0)
    submit(writes, [rec(0, "wwwwwwS")], None)
    writes.join()
    worker = writes._worker
    if waiting_on == "send":
        # The smallest pipe (a page): a batch of ~100 kB cannot be handed over at once.
        fcntl.fcntl(writes._requests.fileno(), fcntl.F_SETPIPE_SZ, 4096)
        batch = [rec(1 + i, f"ws{i:05d}") for i in range(1000)]
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        if stopping:
            writes.stop.set()
        with pytest.raises(WorkerLost):  # within the limit: the test's timeout bounds it
            if waiting_on == "send":
                submit(writes, batch, 1)
            else:
                submit(writes, [rec(1, "wwwwwwU")], 1)
            writes.join()
        worker.join(timeout=10)
        assert not worker.is_alive() and worker.exitcode == -signal.SIGKILL
    finally:
        if worker.is_alive():
            os.kill(worker.pid, signal.SIGCONT)
    writes.stop.clear()
    # What the lost worker held is read again from the position Redis holds, by a new worker.
    stored = int(position(redis))
    assert stored == 1
    submit(writes, [rec(stored, "wwwwwwT")], stored)
    writes.join()
    assert int(position(redis)) == stored + 1 and held(redis, "wwwwwwT") is not None
    assert writes._worker is not worker


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_the_worker_ignores_ctrl_c_and_stops_with_the_strategy(redis, writes, sig):
    submit(writes, [rec(0, "wwwwwwK")], None)
    writes.join()
    worker = writes._worker
    # Ctrl-C reaches the whole process group; consume_links finishes its batch and closes
    # the strategy, which stops the worker.
    os.kill(worker.pid, sig)  # Ctrl-C, or a stop signal sent to every process of the unit
    submit(writes, [rec(1, "wwwwwwL")], 1)
    writes.join()
    assert position(redis) == b"2"
    writes.close()
    assert not worker.is_alive() and worker.exitcode == 0


def test_redis_losing_its_scripts_or_the_connection_is_survived(redis, writes):
    redis.script_flush()  # as after a restart: EVALSHA answers NOSCRIPT, nothing ran
    submit(writes, [rec(0, "wwwwwwB")], None)
    writes.join()
    assert position(redis) == b"1"
    # The strategy's connection is closed under it (as by a Redis restart): the next batch
    # fails, when sent or when its reply is read.
    redis.client_kill_filter(_type="normal", skipme=True)
    with pytest.raises(redis_lib.RedisError):
        submit(writes, [rec(1, "wwwwwwC")], 1)
        writes.join()
    # The loop re-reads the stored position (the batch may have run or not) and goes on.
    stored = int(position(redis))
    submit(writes, [rec(stored, "wwwwwwD")], stored)
    writes.join()
    assert int(position(redis)) == stored + 1 and held(redis, "wwwwwwD") is not None
