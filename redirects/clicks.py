"""Click counting on a replica: the Redis scripts behind a counted redirect and the reporter.

A redirect is one Redis round trip (CLICK_SCRIPT): look the link up and, if it exists, count the
click, mark the link dirty, and mark it due for a report when the count reaches a hundred.
The web process never talks to Kafka; `manage.py report_clicks` turns the marks into reports.

Lua scripts run atomically in Redis, which is what makes the marks exact: a click after a claim
re-marks the link, and a claim never splits a click from its mark.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone

from kafka import KafkaProducer
from kafka.errors import KafkaError
from redis import Redis
from redis.exceptions import NoScriptError, RedisError

from redirects import keys
from redirects.pipelining import PipelinedRedis
from shortener_project import bus
from shortener_project.messages import click_report_encode
from shortener_project.metrics import CLICK_REPORTS

logger = logging.getLogger(__name__)

REPORT_EVERY = 100

# KEYS: link, counter, incarnation, due, dirty. ARGV: REPORT_EVERY, the tinyurl.
# Returns nil for an unknown link (nothing counted), else the longurl (a bulk string).
# (The reply contract, which click_outcome() reads: nil -> no such link, the integer 410 -> the
# link expired (not counted), a bulk string -> its target, counted.)
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
redis.call('SADD', KEYS[5], ARGV[2])
if n % tonumber(ARGV[1]) == 0 then redis.call('SADD', KEYS[4], ARGV[2]) end
return target
"""
# EVALSHA's name for the script, computed here as Redis computes it (SHA-1 of the source), so a
# server never needs a round trip to learn it; SCRIPT LOAD only after a NOSCRIPT reply.
CLICK_SCRIPT_SHA = hashlib.sha1(CLICK_SCRIPT.encode()).hexdigest()

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


# The reply of the click script that means "this link expired": answered 410, not counted.
GONE = 410


def click_keys_args(tinyurl: str) -> tuple[list[str], list]:
    """KEYS and ARGV of CLICK_SCRIPT for one click on `tinyurl`, in the script's order."""
    return (
        [keys.link_key(tinyurl), keys.clicks_counter_key(tinyurl), keys.clicks_incarnation_key(),
         keys.clicks_due_key(), keys.clicks_dirty_key()],
        [REPORT_EVERY, tinyurl],
    )


def click_outcome(raw: object) -> str | int | None:
    """What CLICK_SCRIPT's reply means: the longurl to redirect to (the click was counted), GONE
    (410: the link expired; not counted) or None (no such link, or taken down; not counted).

    Raises RedisError for a reply the script never gives (it is treated like Redis being away).
    """
    if raw is None:
        return None
    if isinstance(raw, bytes):
        return raw.decode()
    if raw == GONE and isinstance(raw, int):
        return GONE
    raise RedisError(f"unexpected reply from the click script: {raw!r}")


def click_script_reload(redis: Redis) -> str:
    """Load CLICK_SCRIPT into Redis after a NOSCRIPT reply (Redis restarted: its script cache is
    empty); returns the sha. Every NOSCRIPT recovery of the sync path goes through here."""
    return redis.script_load(CLICK_SCRIPT)


def link_click(*, redis: Redis, tinyurl: str) -> str | int | None:
    """One counted click on `tinyurl`, in one round trip: click_outcome() of the script's reply.
    The sync path (manage.py runserver); a served replica uses link_click_async.
    Raises RedisError when Redis is away."""
    keys_, args = click_keys_args(tinyurl)
    try:
        raw = redis.evalsha(CLICK_SCRIPT_SHA, len(keys_), *keys_, *args)
    except NoScriptError:
        sha = click_script_reload(redis)
        raw = redis.evalsha(sha, len(keys_), *keys_, *args)
    return click_outcome(raw)


async def click_script_reload_async(redis: PipelinedRedis) -> str:
    """The async twin of click_script_reload: SCRIPT LOAD through the pipelined client; returns
    the sha. Every NOSCRIPT recovery of the async path comes here, once per restart of Redis
    (see _click_script_recover)."""
    sha = await redis.execute("SCRIPT", "LOAD", CLICK_SCRIPT)
    return sha.decode() if isinstance(sha, bytes) else sha


# One recovery at a time per process: the clicks in flight when Redis restarted all get NOSCRIPT
# at once, and one reload serves them all. `_reloads` counts the reloads done, so that a request
# whose EVALSHA was sent before someone else's reload does not reload again.
_reloads = 0
_reload_lock: asyncio.Lock | None = None
_reload_loop: asyncio.AbstractEventLoop | None = None


async def _click_script_recover(redis: PipelinedRedis, seen: int) -> None:
    global _reloads, _reload_lock, _reload_loop
    loop = asyncio.get_running_loop()
    if _reload_loop is not loop:  # a lock belongs to one event loop
        _reload_lock, _reload_loop = asyncio.Lock(), loop
    async with _reload_lock:
        if _reloads == seen:
            await click_script_reload_async(redis)
            _reloads += 1


async def link_click_async(*, redis: PipelinedRedis, tinyurl: str) -> str | int | None:
    """One counted click on `tinyurl` through the pipelined client: click_outcome() of the
    script's reply. A NOSCRIPT reply (nothing ran, nothing was counted) reloads the script and
    sends the click again. Raises RedisError when Redis is away (if the connection broke after
    the click was sent, it may or may not have been counted)."""
    keys_, args = click_keys_args(tinyurl)
    for attempt in range(3):
        seen = _reloads
        try:
            raw = await redis.execute("EVALSHA", CLICK_SCRIPT_SHA, len(keys_), *keys_, *args)
            break
        except NoScriptError:
            if attempt == 2:
                raise
            await _click_script_recover(redis, seen)
    return click_outcome(raw)


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
