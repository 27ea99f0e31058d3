"""The click reporter (`manage.py report_clicks`): turns the marks that counting left in Redis
into click reports on the clicks topic, and clears a mark once Kafka acknowledged its report.

The hot path's side (the click script, the marks) is redirects/counting.py, the counter
incarnation redirects/incarnation.py; here are the scripts that claim marked counters, acknowledge
their reports and put back the unacknowledged ones (Lua, atomic in Redis like the click script:
a click after a claim re-marks the counter), and the process that runs them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone

from kafka import KafkaProducer
from kafka.errors import KafkaError
from redis import Redis

from redirects import keys
from redirects.counting import REPORT_EVERY
from redirects.incarnation import incarnation_ensure
from redirects.sweep import counters_sweep, sweep_due
from runtime.metrics import CLICK_REPORTS
from topics.clicks import CLICK_BATCH_MAX, click_batch_encode, clicks_producer_make, clicks_topic
from topics.clients import producer_close

logger = logging.getLogger(__name__)

# Move up to ARGV[1] counters (`<inc>:<tinyurl>`) from KEYS[1] to KEYS[3] (in flight), dropping
# them from KEYS[2]; returns {m1, count1, bots1, m2, ...} (prefixes ARGV[2], ARGV[3]) atomically.
# A flush claims from `dirty` and also clears `due`: its exact count covers the hundred.
# A milestone claims from `due` and passes `due` again as KEYS[2] (clearing nothing more): it
# reports only the hundred, so the counter must stay dirty for the exact count to follow.
CLAIM_SCRIPT = """
local members = redis.call('SPOP', KEYS[1], tonumber(ARGV[1]))
if #members == 0 then return {} end
redis.call('SREM', KEYS[2], unpack(members))
redis.call('SADD', KEYS[3], unpack(members))
local out = {}
for _, m in ipairs(members) do
  out[#out + 1] = m
  out[#out + 1] = redis.call('GET', ARGV[2] .. m) or '0'
  out[#out + 1] = redis.call('GET', ARGV[3] .. m) or '0'
end
return out
"""

# Acknowledged reports (ARGV[2..], members): clear their in-flight marks (KEYS[1]). A counter of
# an earlier incarnation than KEYS[2]'s is final; once reported and marked nowhere else (dirty
# KEYS[3], due KEYS[4], in flight), its key (prefix ARGV[1]) and bots key (prefix KEYS[5]) are
# deleted. Returns how many counters were.
ACK_SCRIPT = """
local current = (redis.call('GET', KEYS[2]) or '') .. ':'
local deleted = 0
for i = 2, #ARGV do
  local m = ARGV[i]
  redis.call('SREM', KEYS[1], m)
  if string.sub(m, 1, #current) ~= current
      and redis.call('SISMEMBER', KEYS[1], m) == 0
      and redis.call('SISMEMBER', KEYS[3], m) == 0
      and redis.call('SISMEMBER', KEYS[4], m) == 0 then
    deleted = deleted + redis.call('DEL', ARGV[1] .. m)
    redis.call('DEL', KEYS[5] .. m)
  end
end
return deleted
"""

# Put in-flight counters (ARGV) back: their report was not acknowledged, or the reporter died
# holding them. With no ARGV, everything in flight. Whether a report was a milestone or a flush
# is not known here, so they go back to both: `due` sends the hundred promptly (nothing if
# below one), `dirty` the exact count at the next flush. Duplicates are harmless under max().
REQUEUE_SCRIPT = """
local members = ARGV
if #members == 0 then members = redis.call('SMEMBERS', KEYS[1]) end
if #members == 0 then return 0 end
redis.call('SREM', KEYS[1], unpack(members))
redis.call('SADD', KEYS[3], unpack(members))
return redis.call('SADD', KEYS[2], unpack(members))
"""


class Abandoned(Exception):
    """A Kafka call of the reporter still running when its shutdown deadline passed: left to
    its daemon thread, its reports put back in Redis for the next run."""


class ClickReporter:
    """Turns due and dirty marks into click reports on the clicks topic.

    Every `due_seconds` it checks the counter incarnation (incarnation_ensure) and reports the
    counters that crossed a hundred; every `flush_seconds`, and when it stops, every counter
    clicked since its last report. A mark is cleared only when Kafka acknowledged the report;
    otherwise the counter goes back to `due` and `dirty` for the next round (the master keeps
    the largest count per counter, so a report sent twice counts once). A report names its
    counter's own incarnation, so counters of an earlier incarnation are still reported
    correctly. A claim (up to CLAIM_BATCH counters) goes out as one report batch per incarnation
    (topics/clicks.py, schema 4: each counter's count and bots), so a flush of a million
    counters is about a thousand records; a batch is acknowledged or not as a whole. Every
    `sweep_seconds` (None: never) every counter of the current incarnation is marked dirty
    again (redirects/sweep.py), so the clicks topic, kept for a time only, holds every counter's
    count of the last sweep or later.

    Kafka never holds the reporter up (Redis work stays on the calling thread; every
    kafka-python call runs in a daemon thread, _kafka):
      * while running, a call lasts as long as kafka-python's own bounds (the producer's
        bootstrap, metadata and delivery timeouts, topics/); a send that found no metadata for
        the topic (topic missing, broker away) ends its batch, the rest going back at once;
      * once `stop` is set, the final flush and any call in flight get `shutdown_seconds` from
        the moment the stop was seen; what is still unacknowledged then is put back in Redis
        and the reporter returns, so SIGTERM stops report_clicks within 10 s whatever Kafka does.
    Every producer it made is closed (topics.clients.producer_close) before run() returns, the
    one in use and any reset one still closing: no sender thread of the reporter outlives it,
    even while Kafka holds a report (a report it held is back in Redis already).
    """

    # Counters claimed (one Lua call: Redis serves no redirect meanwhile, ~1 ms), sent as one
    # report batch per incarnation: at most a batch's size.
    CLAIM_BATCH = 1000
    assert CLAIM_BATCH <= CLICK_BATCH_MAX
    # What the producers still hold gets this long when run() ends, then is failed: its
    # reports are back in Redis already. producer_close takes up to three times as long, so
    # shutdown_seconds (4) plus this stays well within report_clicks' 10 s after SIGTERM.
    CLOSE_SECONDS = 1.0

    def __init__(
        self,
        *,
        redis: Redis,
        stop: threading.Event,
        node: str,
        flush_seconds: float,
        due_seconds: float = 0.1,
        shutdown_seconds: float = 4.0,
        sweep_seconds: float | None = None,
        producer_factory: Callable[[], KafkaProducer] = clicks_producer_make,
    ) -> None:
        self.redis = redis
        self.stop = stop
        self.node = node
        self.flush_seconds = flush_seconds
        self.due_seconds = due_seconds
        self.shutdown_seconds = shutdown_seconds
        self.sweep_seconds = sweep_seconds
        self.producer_factory = producer_factory
        self.producer: KafkaProducer | None = None
        # `producer`, `_closed` and `_closing` are shared with the _kafka threads: a call
        # abandoned at shutdown may still be making a producer when run() closes them.
        self._producer_lock = threading.Lock()
        self._closed = False  # run() has closed the producers: a later one is closed at once
        self._closing: list[KafkaProducer] = []  # reset, being closed in the background
        # Auto-reloading Scripts are fine here: unlike the click script, these count nothing.
        self.claim = redis.register_script(CLAIM_SCRIPT)
        self.ack = redis.register_script(ACK_SCRIPT)
        self.requeue = redis.register_script(REQUEUE_SCRIPT)
        self._requeue_keys = [keys.clicks_inflight_key(), keys.clicks_due_key(),
                              keys.clicks_dirty_key()]
        self.sent = 0
        self.failed = 0
        self._stop_seen: float | None = None  # time.monotonic() when `stop` was first seen set

    def run(self) -> None:
        next_flush = time.monotonic() + self.flush_seconds
        logger.info("click reporter running (node %s, flush every %gs)", self.node,
                    self.flush_seconds)
        try:
            while not self.stop.is_set():
                try:
                    # Marks in flight between rounds belong to no send of this process: a dead
                    # run's, or a restored snapshot's taken while a send waited (found by the
                    # chaos run on three brokers). They go out again (max() absorbs a repeat).
                    self.requeue(keys=self._requeue_keys, args=[])
                    incarnation_ensure(redis=self.redis)
                    self.report(keys.clicks_due_key(), keys.clicks_due_key(), milestone=True)
                    if self.sweep_seconds is not None and sweep_due(
                            redis=self.redis, every=self.sweep_seconds):
                        # Marked dirty now, reported by the next flush with everything else.
                        counters_sweep(redis=self.redis)
                    if time.monotonic() >= next_flush:
                        self.report(keys.clicks_dirty_key(), keys.clicks_due_key())
                        next_flush = time.monotonic() + self.flush_seconds
                except Abandoned:
                    break
                except KafkaError as exc:
                    logger.error("Kafka error while reporting clicks (the counts stay in Redis "
                                 "for the next round): %r", exc)
                    self._producer_reset()
                    self.stop.wait(1.0)
                except Exception as exc:  # noqa: BLE001 - Redis down, etc.: retry, never die
                    logger.error("reporting clicks failed: %r", exc)
                    self.stop.wait(1.0)
                self.stop.wait(self.due_seconds)
            # Graceful stop: report everything counted so far, so the master's totals are exact,
            # unless the shutdown deadline has passed already.
            deadline = self._deadline()
            if deadline is not None and time.monotonic() < deadline:
                try:
                    self.report(keys.clicks_dirty_key(), keys.clicks_due_key())
                except Exception as exc:  # noqa: BLE001 - Abandoned, Kafka or Redis away
                    logger.error("final click flush not done (the counts stay in Redis for the "
                                 "next run): %r", exc)
        finally:
            try:
                self._producers_close()
            finally:
                logger.info("click reporter stopped: %d reports sent, %d failed", self.sent,
                            self.failed)

    def report(self, source: str, other: str, *, milestone: bool = False) -> int:
        """Claim up to everything in `source` and report it; returns how many were sent.

        milestone: report the last hundred the counter completed rather than its current value
        ("each time it completes another hundred"); the flush reports the exact count. Both are
        absolute counts of the same counter, so the master's max() takes whichever is newer.
        Raises KafkaError when a report could not be sent or was not acknowledged (its counter
        is back in Redis), Abandoned past the shutdown deadline, RedisError.
        """
        total = 0
        while True:
            claimed = self.claim(
                keys=[source, other, keys.clicks_inflight_key()],
                args=[self.CLAIM_BATCH, keys.clicks_counter_prefix(), keys.clicks_bots_prefix()],
            )
            if not claimed:
                return total
            total += self._send(claimed, milestone=milestone)
            if len(claimed) < 2 * self.CLAIM_BATCH:
                return total

    def _send(self, claimed: list[bytes], *, milestone: bool) -> int:
        counters: list[tuple[str, str, str, int, int]] = []  # (member, inc., tinyurl, n, bots)
        done: list[str] = []  # acknowledged, or nothing to report
        for i in range(0, len(claimed), 3):
            member, count, bots = claimed[i].decode(), int(claimed[i + 1]), int(claimed[i + 2])
            incarnation, _, tinyurl = member.partition(":")
            if not tinyurl:
                # A mark left by a version that named counters by tinyurl alone: its counter's
                # incarnation is unknown, so it cannot be reported. (report_clicks reports every
                # mark when it stops, so a clean upgrade leaves none.)
                logger.warning("dropping click mark %r of an older format (%d clicks)",
                               member, count)
                self.redis.delete(keys.clicks_counter_prefix() + member)
                done.append(member)
                continue
            if milestone:  # the hundred, and its bots' lower bound: n % 100 clicks came since
                bots = max(0, bots - count % REPORT_EVERY)
                count -= count % REPORT_EVERY
            if count <= 0:  # Redis was wiped since the click, or below a hundred: nothing
                done.append(member)
                continue
            counters.append((member, incarnation, tinyurl, count, min(bots, count)))
        acked: list[str] = []
        unsent: list[str] = []
        error: KafkaError | None = None
        try:
            if counters:
                acked, unsent, error = self._kafka(self._produce, counters)
        except BaseException:
            # Nothing of the batch is known to be acknowledged: all of it goes back (a report
            # Kafka did take is sent again, which the master's max() absorbs).
            unsent = [member for member, *_ in counters]
            raise
        finally:
            self._ack(done + acked)
            if unsent:
                self.requeue(keys=self._requeue_keys, args=unsent)
            # Each report counted once, as sent or failed: never a negative count.
            self.sent += len(acked)
            self.failed += len(unsent)
            CLICK_REPORTS.labels("sent").inc(len(acked))
            CLICK_REPORTS.labels("failed").inc(len(unsent))
        if error is not None:
            raise error
        return len(acked)

    def _produce(self, counters: list[tuple[str, str, str, int, int]]
                 ) -> tuple[list[str], list[str], KafkaError | None]:
        """Send one claim as report batches, one per incarnation, and wait for their acks (in a
        _kafka thread). Returns (acknowledged members, members not sent or not acknowledged,
        the first Kafka error or None)."""
        producer = self._producer_get()
        now = datetime.now(timezone.utc)
        # A record per incarnation and CLAIM_BATCH counters: nearly always one incarnation; two
        # only just after a Redis restart (the earlier one's last counters).
        groups: dict[str, list[tuple[str, str, str, int, int]]] = {}
        for counter in counters:
            groups.setdefault(counter[1], []).append(counter)
        size = self.CLAIM_BATCH
        batches = [(incarnation, group[i:i + size]) for incarnation, group in groups.items()
                   for i in range(0, len(group), size)]
        futures = []
        unsent: list[str] = []
        error: KafkaError | None = None
        for i, (incarnation, group) in enumerate(batches):
            key, value = click_batch_encode(node=self.node, incarnation=incarnation,
                                            counts=[(t, n, b) for _, _, t, n, b in group],
                                            reported_at=now)
            members = [m for m, *_ in group]
            try:
                futures.append((members, producer.send(clicks_topic(), key=key, value=value)))
            except KafkaError as exc:
                # send() waited its max_block_ms for the topic's metadata (the topic missing,
                # the broker away) or for buffer space: every later send of this claim would
                # wait as long again. The rest goes back to Redis for the next round.
                rest = [m for _, g in batches[i:] for m, *_ in g]
                logger.warning("%d click reports not sent: %r", len(rest), exc)
                unsent.extend(rest)
                error = exc
                break
        acked: list[str] = []
        for members, future in futures:
            try:
                future.get(timeout=60)
                acked.extend(members)
            except KafkaError as exc:
                unsent.extend(members)
                if error is None:
                    logger.warning("click reports not acknowledged: %r", exc)
                    error = exc
        if error is not None:
            # A producer whose records expired during an outage does not always recover when
            # Kafka returns (kafka-python 3.0.12, idempotent): make a new one next round.
            self._producer_reset()
        return acked, unsent, error

    def _deadline(self) -> float | None:
        """time.monotonic() by which the reporter must have given up on Kafka: shutdown_seconds
        after `stop` was first seen set; None while it is not."""
        if self._stop_seen is None and self.stop.is_set():
            self._stop_seen = time.monotonic()
        return None if self._stop_seen is None else self._stop_seen + self.shutdown_seconds

    def _kafka(self, call: Callable, *args: object):
        """call(*args) in a daemon thread; its result, or its exception raised here.

        kafka-python's calls block (making a producer waits for a broker, send() for the
        topic's metadata, an ack for the delivery) and a signal cannot interrupt them, so they
        never run on the reporter's own thread: it waits here, as long as the call takes while
        running, and until the shutdown deadline once `stop` is set. Raises Abandoned when the
        deadline passes first (the thread is left to finish or die with the process).
        """
        done = threading.Event()
        outcome: dict[str, object] = {}

        def target() -> None:
            try:
                outcome["result"] = call(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                outcome["error"] = exc
            finally:
                done.set()

        threading.Thread(target=target, name="click-reports-kafka", daemon=True).start()
        while not done.wait(0.05):
            deadline = self._deadline()
            if deadline is not None and time.monotonic() >= deadline:
                raise Abandoned(f"Kafka did not answer within {self.shutdown_seconds:g} s of "
                                "the stop")
        if "error" in outcome:
            raise outcome["error"]  # type: ignore[misc]
        return outcome["result"]

    def _ack(self, members: list[str]) -> None:
        if members:
            self.ack(keys=[keys.clicks_inflight_key(), keys.clicks_incarnation_key(),
                           keys.clicks_dirty_key(), keys.clicks_due_key(),
                           keys.clicks_bots_prefix()],
                     args=[keys.clicks_counter_prefix(), *members])

    def _producer_get(self) -> KafkaProducer:
        """The producer, made first if there is none (in a _kafka thread: making one waits
        for a broker). Raises KafkaError when it cannot be made, Abandoned when run() closed
        the producers while this one was being made (a call abandoned at shutdown): it is
        closed at once, so that it does not outlive the reporter."""
        with self._producer_lock:
            if self.producer is not None:
                return self.producer
        producer = self.producer_factory()
        with self._producer_lock:
            if not self._closed:
                self.producer = producer
                return producer
        producer_close(producer, self.CLOSE_SECONDS)
        raise Abandoned("a producer made after the reporter stopped")

    def _producer_reset(self) -> None:
        """Forget the producer and close it in the background: closing flushes what it holds
        first, which with the broker away lasts its whole timeout (producer_close bounds
        it and force-closes the rest). Until that ends it is in `_closing`, for
        _producers_close to finish if run() ends first."""
        with self._producer_lock:
            producer, self.producer = self.producer, None
            if producer is None:
                return
            self._closing.append(producer)

        def close() -> None:
            try:
                producer_close(producer, 5.0)
            finally:
                with self._producer_lock:
                    self._closing.remove(producer)

        threading.Thread(target=close, name="click-reports-close", daemon=True).start()

    def _producers_close(self) -> None:
        """Close every producer of the reporter for good, when run() ends: the one in use and
        those a reset is still closing (closed again here, within this bound: producer_close
        allows it). A producer made later by an abandoned call is closed by _producer_get.
        Takes up to three times CLOSE_SECONDS per producer; never raises."""
        with self._producer_lock:
            self._closed = True
            producer, self.producer = self.producer, None
            producers = [*([producer] if producer is not None else []), *self._closing]
        for producer in producers:
            producer_close(producer, self.CLOSE_SECONDS)
