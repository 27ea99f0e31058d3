"""Click counting on a replica: the Redis scripts behind a counted redirect, the counter
incarnation, and the reporter.

A redirect is one Redis round trip (one EVALSHA of CLICK_SCRIPT): look the link up and, if it is
active and not expired, count the click, mark the counter dirty, and mark it due for a report
when the count reaches a hundred. The web process never talks to Kafka; `manage.py
report_clicks` turns the marks into reports.

Counters and incarnations. A counter is named by the incarnation, `<incarnation>:<tinyurl>`,
never by the node id: a node whose SHORTENER_NODE_ID changes, or two hosts sharing one Redis,
count and report the same counters, and the master's max() per counter counts each click once.
An incarnation is one life of this Redis' data. A new one starts
  * when the data may have gone back in time: after every redis-server restart (it may have
    loaded an older RDB/AOF, or a restored backup). The stored <user>:clicks:runid differs from
    the server's run_id (INFO server), which changes with every start. Redis never persists
    scripts, so the first EVALSHA after a restart fails with NOSCRIPT; only then is the script
    loaded, and only after INCARNATION_SCRIPT has started the new incarnation
    (click_script_reload, and click_script_reload_async on the served replica's path). So
    no click after a restart is counted in a counter whose older, higher value the master may
    already hold (its max() would absorb the new clicks). report_clicks runs the same check
    every round, so this does not wait for a click;
  * when the incarnation key is missing (FLUSHALL without a restart): CLICK_SCRIPT makes one.
A counter of an earlier incarnation is final (nothing increments it any more): its marks are
still reported, and once a report of it is acknowledged its key is deleted (ACK_SCRIPT).

Lua scripts run atomically in Redis, which is what makes the marks exact: a click after a claim
re-marks the counter, and a claim never splits a click from its mark. The scripts reach the
counter keys they name from their arguments, which a single Redis (never a cluster) allows.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone

from kafka import KafkaProducer
from kafka.errors import KafkaError
from redis import Redis
from redis.exceptions import (
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)

from redirects import keys
from redirects.pipelining import PipelinedRedis
from runtime.metrics import CLICK_REPORTS, CLICKS_UNCOUNTED
from topics.clicks import click_report_encode, clicks_producer_make, clicks_topic
from topics.clients import producer_close

logger = logging.getLogger(__name__)

REPORT_EVERY = 100

# KEYS: link, incarnation, due, dirty, served (hash: incarnation -> redirects counted).
# ARGV: REPORT_EVERY, tinyurl, counter key prefix, this process' token (click_keys_args).
# Returns nil: unknown or disabled link (a value in another format too), nothing counted;
#         410 (GONE): the link expired, nothing counted (TIME is called only for a link with an
#         expiry);
#         the longurl: counted (302).
# The link value is keys.LinkValue: `<version>|<expires_at ms or empty>|<longurl or empty>`.
# Without an incarnation (FLUSHALL), the first click names one after Redis' clock plus the
# process' random token: a later life of this Redis gets another name.
CLICK_SCRIPT = """
local v = redis.call('GET', KEYS[1])
if not v then return nil end
local a = string.find(v, '|', 1, true)
if not a then return nil end
local b = string.find(v, '|', a + 1, true)
if not b or b == #v then return nil end
if b > a + 1 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if now >= tonumber(string.sub(v, a + 1, b - 1)) then return 410 end
end
local inc = redis.call('GET', KEYS[2])
if not inc then
  local t = redis.call('TIME')
  inc = t[1] .. string.format('%06d', tonumber(t[2])) .. ARGV[4]
  redis.call('SET', KEYS[2], inc)
end
local member = inc .. ':' .. ARGV[2]
local n = redis.call('INCR', ARGV[3] .. member)
redis.call('HINCRBY', KEYS[5], inc, 1)
redis.call('SADD', KEYS[4], member)
if n % tonumber(ARGV[1]) == 0 then redis.call('SADD', KEYS[3], member) end
return string.sub(v, b + 1)
"""
# EVALSHA's name for the script, computed here as Redis computes it (SHA-1 of the source), so a
# server never needs a round trip to learn it; SCRIPT LOAD only after a NOSCRIPT reply.
CLICK_SHA = hashlib.sha1(CLICK_SCRIPT.encode()).hexdigest()

# The reply of the click script, and the outcome, that means "this link expired": answered 410,
# not counted (selectors.link_target_parse gives the same for HEAD).
GONE = 410

# KEYS: incarnation, runid. ARGV: the server's run_id (INFO server), a random token.
# Starts a new incarnation unless the stored run id is this server's: the data may be older
# than what was reported (see the module's docstring). Returns 1 if it started one after a
# restart, 2 if it started the first one (no run id stored: a new Redis or prefix), else 0.
# Concurrent callers race harmlessly: the second finds the run id already stored.
INCARNATION_SCRIPT = """
local previous = redis.call('GET', KEYS[2])
if previous == ARGV[1] then return 0 end
local t = redis.call('TIME')
redis.call('SET', KEYS[1], t[1] .. string.format('%06d', tonumber(t[2])) .. ARGV[2])
redis.call('SET', KEYS[2], ARGV[1])
if not previous then return 2 end
return 1
"""

# Move up to ARGV[1] counters from KEYS[1] to KEYS[3] (in flight), also dropping them from
# KEYS[2], and read their counts in the same atomic step. Returns {m1, c1, m2, c2, ...}, members
# `<incarnation>:<tinyurl>` (ARGV[2] is the counter key prefix).
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
end
return out
"""

# Acknowledged reports (ARGV[2..], members): clear their in-flight marks (KEYS[1]). A counter of
# an earlier incarnation than KEYS[2]'s is final; once reported and marked nowhere else (dirty
# KEYS[3], due KEYS[4], in flight), its key (prefix ARGV[1]) is deleted. Returns how many were.
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

_token: tuple[int, str] = (0, "")


def process_token() -> str:
    """16 random hex characters, made once per process (after a fork, anew): part of an
    incarnation's name, so that two processes never name one alike."""
    global _token
    if _token[0] != os.getpid():
        _token = (os.getpid(), secrets.token_hex(8))
    return _token[1]


def click_keys_args(tinyurl: str) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV of CLICK_SCRIPT for one click of `tinyurl` (EVALSHA CLICK_SHA)."""
    return ([keys.link_key(tinyurl), keys.clicks_incarnation_key(), keys.clicks_due_key(),
             keys.clicks_dirty_key(), keys.clicks_served_key()],
            [REPORT_EVERY, tinyurl, keys.clicks_counter_prefix(), process_token()])


def click_outcome(raw: bytes | str | int | None) -> str | int | None:
    """CLICK_SCRIPT's reply as the answer: the longurl (302, counted), GONE (410: expired, not
    counted), None (404: unknown or disabled, not counted).

    Raises RedisError for a reply the script never gives (answered like Redis being away, 503,
    rather than as a redirect to something that is not a longurl).
    """
    if raw is None or isinstance(raw, str):
        return raw
    if isinstance(raw, bytes):
        return raw.decode()
    if raw == GONE and type(raw) is int:
        return GONE
    raise RedisError(f"unexpected reply from the click script: {raw!r}")


def incarnation_check_args(run_id: str) -> tuple[str | int, ...]:
    """The arguments of EVAL for INCARNATION_SCRIPT, given the server's run_id (INFO server):
    `redis.eval(*incarnation_check_args(run_id))`, synchronous or asynchronous client alike.

    After a NOSCRIPT reply to EVALSHA CLICK_SHA: INFO server, this EVAL, then SCRIPT LOAD
    CLICK_SCRIPT, then the EVALSHA again (click_script_reload and click_script_reload_async do
    exactly this). Never load the click script any other way (redis-py's auto-reloading Script
    would skip the check).
    """
    return (INCARNATION_SCRIPT, 2, keys.clicks_incarnation_key(), keys.clicks_runid_key(),
            run_id, process_token())


def incarnation_ensure(*, redis: Redis) -> bool:
    """Start a new counter incarnation if redis-server restarted since the current one began;
    True if it did. Two round trips (INFO server, EVAL). Raises redis.RedisError."""
    run_id = redis.info("server")["run_id"]
    return _incarnation_checked(run_id, redis.eval(*incarnation_check_args(run_id)))


def _incarnation_checked(run_id: str, started: object) -> bool:
    if started == 1:
        logger.warning("Redis restarted (run_id %s): clicks are counted in a new incarnation "
                       "from now on", run_id)
    elif started == 2:
        logger.info("first counter incarnation in this Redis (run_id %s)", run_id)
    return bool(started)


def info_run_id(info: bytes | str) -> str:
    """The run_id in the text of INFO server (lines `field:value`, as
    https://redis.io/docs/latest/commands/info/ describes them). Raises RedisError without one."""
    text = info.decode() if isinstance(info, bytes) else info
    for line in text.splitlines():
        if line.startswith("run_id:"):
            return line[len("run_id:"):].strip()
    raise RedisError("INFO server gave no run_id")


async def incarnation_ensure_async(*, redis: PipelinedRedis) -> bool:
    """incarnation_ensure through the pipelined client (INFO server, then the EVAL)."""
    run_id = info_run_id(await redis.execute("INFO", "server"))
    return _incarnation_checked(
        run_id, await redis.execute("EVAL", *incarnation_check_args(run_id)))


def click_script_reload(redis: Redis) -> str:
    """After a NOSCRIPT reply (Redis restarted: its script cache is empty, and its data may be
    older than what was reported): start a new incarnation if due (incarnation_ensure), then
    SCRIPT LOAD CLICK_SCRIPT; returns the sha. Every NOSCRIPT recovery of the sync path goes
    through here. Raises redis.RedisError."""
    incarnation_ensure(redis=redis)
    return redis.script_load(CLICK_SCRIPT)


def click_call(*, redis: Redis, tinyurl: str) -> str | int | None:
    """Count one click of `tinyurl`; returns its longurl (302), GONE (410: expired) or None (404).
    The sync path (the Django view, manage.py runserver); a served replica uses link_click_async.

    One EVALSHA; after a Redis restart (NOSCRIPT) click_script_reload (the incarnation check,
    SCRIPT LOAD) and the EVALSHA again. Raises redis.RedisError if Redis fails.
    """
    link_keys, args = click_keys_args(tinyurl)
    try:
        raw = redis.evalsha(CLICK_SHA, len(link_keys), *link_keys, *args)
    except NoScriptError:
        click_script_reload(redis)
        raw = redis.evalsha(CLICK_SHA, len(link_keys), *link_keys, *args)
    return click_outcome(raw)


async def click_script_reload_async(redis: PipelinedRedis) -> str:
    """The async twin of click_script_reload through the pipelined client: the incarnation
    check (incarnation_ensure_async), then SCRIPT LOAD; returns the sha. Every NOSCRIPT recovery
    of the async path comes here, once per restart of Redis (see _click_script_recover).
    Raises redis.RedisError."""
    await incarnation_ensure_async(redis=redis)
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
    """click_call through the pipelined client (the served replica's GET, redirects/asgi.py):
    click_outcome() of the script's reply. A NOSCRIPT reply (nothing ran, nothing was counted)
    goes through click_script_reload_async (the incarnation check, SCRIPT LOAD) and the click is
    sent again. Raises RedisError when Redis is away (if the connection broke after the click
    was sent, it may or may not have been counted)."""
    link_keys, args = click_keys_args(tinyurl)
    for attempt in range(3):
        seen = _reloads
        try:
            raw = await redis.execute("EVALSHA", CLICK_SHA, len(link_keys), *link_keys, *args)
            break
        except NoScriptError:
            if attempt == 2:
                raise
            await _click_script_recover(redis, seen)
    return click_outcome(raw)


# --- a Redis that refuses writes ------------------------------------------------------------
#
# Redis refuses every command that writes, and still answers reads, when
#   * its memory is full: maxmemory reached under the noeviction policy (`OOM command not allowed
#     when used memory > 'maxmemory'`; redis-py's OutOfMemoryError);
#   * it cannot persist: an RDB snapshot or an AOF write failed while stop-writes-on-bgsave-error
#     is on (`MISCONF ...`; redis-py 8.1 maps no class to it: a plain ResponseError);
#   * it is a read-only replica (`READONLY You can't write against a read only replica`;
#     ReadOnlyError).
# (Source: redis.conf's comments on maxmemory-policy, stop-writes-on-bgsave-error and
# replica-read-only.) The click script's first write is then refused and nothing of the click
# is written. A redirect does not need that write: the link is read as HEAD reads it, answered
# as the script would have answered it, and the click is counted as lost instead
# (shortener_clicks_uncounted_total); /readyz says so (selectors.readiness_get). Only this error
# leads here: the normal path is one EVALSHA, as before.

_uncounted_logged_at = float("-inf")
_uncounted_unlogged = 0


def writes_refused(exc: BaseException) -> str | None:
    """The reason label when `exc` is Redis refusing a write while it still answers reads:
    "oom", "misconf" or "readonly" (see above); None for any other error."""
    if isinstance(exc, OutOfMemoryError):
        return "oom"
    if isinstance(exc, ReadOnlyError):
        return "readonly"
    if isinstance(exc, ResponseError) and str(exc).startswith("MISCONF"):
        return "misconf"
    return None


def click_uncounted(*, reason: str, outcome: str | int | None, error: RedisError) -> None:
    """Record that a GET was answered without counting its click because Redis refused writes
    (`reason`: writes_refused's label). A 302 (`outcome` a longurl) is a lost click, counted in
    shortener_clicks_uncounted_total{reason}; a 404 or 410 would have counted nothing. Logged at
    most once a second per process, with the number of refusals since the last line."""
    global _uncounted_logged_at, _uncounted_unlogged
    if isinstance(outcome, str):
        CLICKS_UNCOUNTED.labels(reason).inc()
    now = time.monotonic()
    if now - _uncounted_logged_at >= 1.0:
        logger.error("Redis refuses writes (%s: %s): redirects answered, clicks not counted "
                     "(%d more since the last line)", reason, error, _uncounted_unlogged)
        _uncounted_logged_at, _uncounted_unlogged = now, 0
    else:
        _uncounted_unlogged += 1


def link_read_uncounted(*, redis: Redis, tinyurl: str, error: RedisError) -> str | int | None:
    """After click_call raised `error`: if it is Redis refusing writes (writes_refused), the
    link's outcome read without counting (selectors.link_target_get, as for HEAD) and the lost
    click recorded (click_uncounted); any other error is raised again. Raises RedisError."""
    # selectors imports this module (GONE): imported here, on this path only.
    from redirects import selectors

    reason = writes_refused(error)
    if reason is None:
        raise error
    outcome = selectors.link_target_get(tinyurl=tinyurl, redis=redis)
    click_uncounted(reason=reason, outcome=outcome, error=error)
    return outcome


async def link_read_uncounted_async(*, redis: PipelinedRedis, tinyurl: str,
                                    error: RedisError) -> str | int | None:
    """link_read_uncounted through the pipelined client (the served replica's GET after
    link_click_async raised `error`)."""
    from redirects import selectors

    reason = writes_refused(error)
    if reason is None:
        raise error
    outcome = await selectors.link_target_get_async(redis=redis, tinyurl=tinyurl)
    click_uncounted(reason=reason, outcome=outcome, error=error)
    return outcome


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
    correctly.

    Kafka never holds the reporter up (Redis work stays on the calling thread; every
    kafka-python call runs in a daemon thread, _kafka):
      * while running, a call lasts as long as kafka-python's own bounds (the producer's
        bootstrap, metadata and delivery timeouts, topics/); a send that
        found no metadata for the topic (topic missing, broker away) ends its batch: the rest
        is put back at once instead of each report waiting as long again;
      * once `stop` is set, the final flush and any call in flight get `shutdown_seconds` from
        the moment the stop was seen; what is still unacknowledged then is put back in Redis
        and the reporter returns, so SIGTERM stops report_clicks within 10 s whatever Kafka does.
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
        shutdown_seconds: float = 4.0,
        producer_factory: Callable[[], KafkaProducer] = clicks_producer_make,
    ) -> None:
        self.redis = redis
        self.stop = stop
        self.node = node
        self.flush_seconds = flush_seconds
        self.due_seconds = due_seconds
        self.shutdown_seconds = shutdown_seconds
        self.producer_factory = producer_factory
        self.producer: KafkaProducer | None = None
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
        requeued = False
        logger.info("click reporter running (node %s, flush every %gs)", self.node,
                    self.flush_seconds)
        try:
            while not self.stop.is_set():
                try:
                    if not requeued:
                        # Reports in flight when the previous run died go out again.
                        self.requeue(keys=self._requeue_keys, args=[])
                        requeued = True
                    incarnation_ensure(redis=self.redis)
                    self.report(keys.clicks_due_key(), keys.clicks_due_key(), milestone=True)
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
            self._producer_reset()
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
                args=[self.CLAIM_BATCH, keys.clicks_counter_prefix()],
            )
            if not claimed:
                return total
            total += self._send(claimed, milestone=milestone)
            if len(claimed) < 2 * self.CLAIM_BATCH:
                return total

    def _send(self, claimed: list[bytes], *, milestone: bool) -> int:
        counters: list[tuple[str, str, str, int]] = []  # (member, incarnation, tinyurl, count)
        done: list[str] = []  # acknowledged, or nothing to report
        for i in range(0, len(claimed), 2):
            member, count = claimed[i].decode(), int(claimed[i + 1])
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
            if milestone:
                count -= count % REPORT_EVERY
            if count <= 0:  # Redis was wiped since the click, or below a hundred: nothing
                done.append(member)
                continue
            counters.append((member, incarnation, tinyurl, count))
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

    def _produce(self, counters: list[tuple[str, str, str, int]]
                 ) -> tuple[list[str], list[str], KafkaError | None]:
        """Send one batch and wait for its acks (in a _kafka thread). Returns (acknowledged
        members, members not sent or not acknowledged, the first Kafka error or None)."""
        if self.producer is None:
            self.producer = self.producer_factory()
        producer = self.producer
        now = datetime.now(timezone.utc)
        futures = []
        unsent: list[str] = []
        error: KafkaError | None = None
        for i, (member, incarnation, tinyurl, count) in enumerate(counters):
            key, value = click_report_encode(tinyurl=tinyurl, node=self.node,
                                             incarnation=incarnation, count=count, reported_at=now)
            try:
                futures.append((member, producer.send(clicks_topic(), key=key, value=value)))
            except KafkaError as exc:
                # send() waited its max_block_ms for the topic's metadata (the topic missing,
                # the broker away) or for buffer space: every later send of this batch would
                # wait as long again. The rest goes back to Redis for the next round.
                logger.warning("%d click reports not sent: %r", len(counters) - i, exc)
                unsent.extend(m for m, *_ in counters[i:])
                error = exc
                break
        acked: list[str] = []
        for member, future in futures:
            try:
                future.get(timeout=60)
                acked.append(member)
            except KafkaError as exc:
                unsent.append(member)
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
                           keys.clicks_dirty_key(), keys.clicks_due_key()],
                     args=[keys.clicks_counter_prefix(), *members])

    def _producer_reset(self) -> None:
        """Forget the producer and close it in the background: closing flushes what it holds
        first, which with the broker away lasts its whole timeout (producer_close bounds
        it and force-closes the rest)."""
        producer, self.producer = self.producer, None
        if producer is not None:
            threading.Thread(target=producer_close, args=(producer, 5.0),
                             name="click-reports-close", daemon=True).start()
