"""Click counting on a replica: the Redis scripts behind a counted redirect and the reporter.

A redirect is one Redis round trip (CLICK_SCRIPT): look the link up and, if it exists, count the
click, mark the link dirty, and mark it due for a report when the count reaches a hundred.
The web process never talks to Kafka; `manage.py report_clicks` turns the marks into reports.

Lua scripts run atomically in Redis, which is what makes the marks exact: a click after a claim
re-marks the link, and a claim never splits a click from its mark.
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
from redis.commands.core import Script

from redirects import keys
from shortener_project import bus
from shortener_project.messages import click_report_encode
from shortener_project.metrics import CLICK_REPORTS

logger = logging.getLogger(__name__)

REPORT_EVERY = 100

# KEYS: link, counter, incarnation, due, dirty, served. ARGV: REPORT_EVERY, the tinyurl.
# Returns nil for an unknown link (nothing counted), else {longurl, count}.
# The first click after Redis started empty names the new incarnation after Redis' clock
# (seconds and microseconds): a later life of this Redis gets a later name, and the name is
# made once per life here rather than proposed by every request.
CLICK_SCRIPT = """
local target = redis.call('GET', KEYS[1])
if not target then return nil end
if redis.call('EXISTS', KEYS[3]) == 0 then
  local now = redis.call('TIME')
  redis.call('SET', KEYS[3], now[1] .. string.format('%06d', tonumber(now[2])))
end
local n = redis.call('INCR', KEYS[2])
redis.call('INCR', KEYS[6])
redis.call('SADD', KEYS[5], ARGV[2])
if n % tonumber(ARGV[1]) == 0 then redis.call('SADD', KEYS[4], ARGV[2]) end
return {target, n}
"""

# Move up to ARGV[1] tinyurls from KEYS[1] to KEYS[3] (in flight), also dropping them from
# KEYS[2], and read their counts and the incarnation in the same atomic step.
# Returns {incarnation, t1, c1, t2, c2, ...}.
# A flush claims from `dirty` and also clears `due`: its exact count covers the hundred.
# A milestone claims from `due` and passes `due` again as KEYS[2] (clearing nothing more): it
# reports only the hundred, so the link must stay dirty for the exact count to follow.
CLAIM_SCRIPT = """
local members = redis.call('SPOP', KEYS[1], tonumber(ARGV[1]))
if #members == 0 then return {} end
redis.call('SREM', KEYS[2], unpack(members))
redis.call('SADD', KEYS[3], unpack(members))
local out = {redis.call('GET', KEYS[4]) or ''}
for _, m in ipairs(members) do
  out[#out + 1] = m
  out[#out + 1] = redis.call('GET', ARGV[2] .. m) or '0'
end
return out
"""

# Put in-flight tinyurls (ARGV) back: their report was not acknowledged, or the reporter died
# holding them. With no ARGV, everything in flight. Whether a report was a milestone or a flush
# is not known here, so the links go back to both: `due` sends the hundred promptly (nothing if
# below one), `dirty` the exact count at the next flush. Duplicates are harmless under max().
REQUEUE_SCRIPT = """
local members = ARGV
if #members == 0 then members = redis.call('SMEMBERS', KEYS[1]) end
if #members == 0 then return 0 end
redis.call('SREM', KEYS[1], unpack(members))
redis.call('SADD', KEYS[3], unpack(members))
return redis.call('SADD', KEYS[2], unpack(members))
"""


_click_script: Script | None = None


def link_click(*, redis: Redis, tinyurl: str) -> str | None:
    """The link's target, counting the click; None (and nothing counted) for an unknown link."""
    global _click_script
    if _click_script is None:
        _click_script = redis.register_script(CLICK_SCRIPT)  # EVALSHA, loaded once per server
    result = _click_script(
        keys=[keys.link_key(tinyurl), keys.clicks_counter_key(tinyurl),
              keys.clicks_incarnation_key(), keys.clicks_due_key(), keys.clicks_dirty_key(),
              keys.clicks_served_key()],
        args=[REPORT_EVERY, tinyurl],
        client=redis,
    )
    if result is None:
        return None
    return result[0].decode()


def clicks_count_get(*, redis: Redis, tinyurl: str) -> int:
    return int(redis.get(keys.clicks_counter_key(tinyurl)) or 0)


class ClickReporter:
    """Turns due and dirty marks into click reports on the clicks topic.

    Every `due_seconds` it reports the links whose counter crossed a hundred; every
    `flush_seconds`, and when it stops, every link clicked since its last report. A mark is
    cleared only when Kafka acknowledged the report; otherwise the link goes back to `due`.
    """

    CLAIM_BATCH = 1000

    def __init__(
        self,
        *,
        redis: Redis,
        stop: threading.Event,
        node: str,
        flush_seconds: float,
        due_seconds: float = 0.1,
        producer_factory: Callable[[], KafkaProducer] = bus.clicks_producer_make,
    ) -> None:
        self.redis = redis
        self.stop = stop
        self.node = node
        self.flush_seconds = flush_seconds
        self.due_seconds = due_seconds
        self.producer_factory = producer_factory
        self.producer: KafkaProducer | None = None
        self.claim = redis.register_script(CLAIM_SCRIPT)
        self.requeue = redis.register_script(REQUEUE_SCRIPT)
        self._requeue_keys = [keys.clicks_inflight_key(), keys.clicks_due_key(),
                              keys.clicks_dirty_key()]
        self.sent = 0
        self.failed = 0

    def run(self) -> None:
        next_flush = time.monotonic() + self.flush_seconds
        try:
            # Reports that were in flight when the previous run died go out again.
            self.requeue(keys=self._requeue_keys, args=[])
            while not self.stop.is_set():
                try:
                    self.report(keys.clicks_due_key(), keys.clicks_due_key(), milestone=True)
                    if time.monotonic() >= next_flush:
                        self.report(keys.clicks_dirty_key(), keys.clicks_due_key())
                        next_flush = time.monotonic() + self.flush_seconds
                except KafkaError as exc:
                    logger.error("Kafka error while reporting clicks: %r", exc)
                    self._producer_reset()
                    self.stop.wait(1.0)
                except Exception as exc:  # noqa: BLE001 - Redis down, etc.: retry, never die
                    logger.error("reporting clicks failed: %r", exc)
                    self.stop.wait(1.0)
                self.stop.wait(self.due_seconds)
            # Graceful stop: report everything counted so far, so the master's totals are exact.
            try:
                self.report(keys.clicks_dirty_key(), keys.clicks_due_key())
            except Exception as exc:  # noqa: BLE001
                logger.error("final click flush failed (the marks stay for the next run): %r", exc)
        finally:
            self._producer_reset()
            logger.info("click reporter stopped: %d reports sent, %d failed", self.sent, self.failed)

    def report(self, source: str, other: str, *, milestone: bool = False) -> int:
        """Claim up to everything in `source` and report it; returns how many were sent.

        milestone: report the last hundred the counter completed rather than its current value
        ("each time it completes another hundred"); the flush reports the exact count. Both are
        absolute counts of the same counter, so the master's max() takes whichever is newer.
        """
        total = 0
        while True:
            claimed = self.claim(
                keys=[source, other, keys.clicks_inflight_key(), keys.clicks_incarnation_key()],
                args=[self.CLAIM_BATCH, keys.clicks_counter_prefix()],
            )
            if not claimed:
                return total
            total += self._send(claimed, milestone=milestone)
            if len(claimed) < 1 + 2 * self.CLAIM_BATCH:
                return total

    def _send(self, claimed: list[bytes], *, milestone: bool) -> int:
        incarnation = claimed[0].decode()
        pairs = [(claimed[i].decode(), int(claimed[i + 1])) for i in range(1, len(claimed), 2)]
        if milestone:
            pairs = [(t, c - c % REPORT_EVERY) for t, c in pairs]
        done: list[str] = []  # acknowledged, or nothing to report
        retry: list[str] = []
        if self.producer is None:
            try:
                self.producer = self.producer_factory()
            except KafkaError:
                self.requeue(keys=self._requeue_keys,
                             args=[t for t, _ in pairs])
                raise
        now = datetime.now(timezone.utc)
        futures = []
        for tinyurl, count in pairs:
            if count <= 0 or not incarnation:  # Redis was wiped since the click: nothing left
                done.append(tinyurl)
                continue
            key, value = click_report_encode(tinyurl=tinyurl, node=self.node,
                                             incarnation=incarnation, count=count, reported_at=now)
            try:
                futures.append((tinyurl, self.producer.send(bus.clicks_topic(), key=key, value=value)))
            except KafkaError as exc:
                logger.warning("click report for %s not sent: %r", tinyurl, exc)
                retry.append(tinyurl)
        for tinyurl, future in futures:
            try:
                future.get(timeout=60)
                done.append(tinyurl)
            except KafkaError as exc:
                logger.warning("click report for %s not acknowledged: %r", tinyurl, exc)
                retry.append(tinyurl)
        if done:
            self.redis.srem(keys.clicks_inflight_key(), *done)
        if retry:
            self.requeue(keys=self._requeue_keys, args=retry)
            # A producer whose records expired during an outage does not always recover when
            # Kafka returns (kafka-python 3.0.12, idempotent): make a new one next round.
            self._producer_reset()
        self.sent += len(futures) - len(retry)
        self.failed += len(retry)
        CLICK_REPORTS.labels("sent").inc(len(futures) - len(retry))
        CLICK_REPORTS.labels("failed").inc(len(retry))
        return len(futures) - len(retry)

    def _producer_reset(self) -> None:
        if self.producer is not None:
            try:
                self.producer.close(timeout=5)
            except Exception:  # noqa: BLE001
                logger.exception("closing the clicks producer failed")
            self.producer = None
