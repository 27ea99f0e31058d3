"""Click counting on a replica, the redirect's hot path: the Redis script behind a counted
redirect, the counter incarnation, and a Redis that refuses writes.

A redirect is one Redis round trip (one EVALSHA of CLICK_SCRIPT): look the link up and, if it is
active and not expired, count the click, mark the counter dirty, and mark it due for a report
when the count reaches a hundred. The web process never talks to Kafka (nothing here imports
it); `manage.py report_clicks` turns the marks into reports (redirects/reporter.py).

Counters and incarnations. A counter is named by the incarnation, `<incarnation>:<tinyurl>`,
never by the node id: a node whose SHORTENER_NODE_ID changes, or two hosts sharing one Redis,
count and report the same counters, and the master's max() per counter counts each click once.
An incarnation is one life of this Redis' data. A new one starts
  * when the data may have gone back in time: after every redis-server restart (it may have
    loaded an older RDB/AOF, or a restored backup). The stored <user>:clicks:runid differs from
    the server's run_id (INFO server), which changes with every start. Redis never persists
    scripts, so the first EVALSHA after a restart fails with NOSCRIPT; only then is the script
    loaded, and only after INCARNATION_SCRIPT has ended the old incarnation
    (click_script_reload, and click_script_reload_async on the served replica's path); the
    web's client also runs the check on each new connection (incarnation_check_on_connect), so
    a HEAD or a form's POST that comes first after a restart follows it as well. So
    no click after a restart is counted in a counter whose older, higher value the master may
    already hold (its max() would absorb the new clicks). report_clicks runs the same check
    every round, so this does not wait for a click. Until consume_links has checked what the
    restarted Redis holds, every link is answered 503 and nothing is counted (the restarted
    mark); the first click after that names the new incarnation, as after a FLUSHALL;
  * when the incarnation key is missing (FLUSHALL without a restart): CLICK_SCRIPT makes one.
A counter of an earlier incarnation is final (nothing increments it any more): its marks are
still reported, and once a report of it is acknowledged its key is deleted (reporter.ACK_SCRIPT).

Lua scripts run atomically in Redis, which is what makes the marks exact: a click after a claim
re-marks the counter, and a claim never splits a click from its mark. The scripts reach the
counter keys they name from their arguments, which a single Redis (never a cluster) allows.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

from redis import Redis
from redis.exceptions import (
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)

from redirects import keys
from redirects.incarnation import incarnation_ensure, incarnation_ensure_async, process_token
from redirects.pipelining import PipelinedRedis
from runtime.metrics import CLICKS_UNCOUNTED

logger = logging.getLogger(__name__)

REPORT_EVERY = 100

# KEYS: link, incarnation, due, dirty, served (hash: incarnation -> redirects counted), the
# replica's ready mark (keys.links_ready_key), its restarted mark (keys.links_restarted_key).
# ARGV: REPORT_EVERY, tinyurl, counter key prefix, this process' token, and for a bot's click
# (redirects/bots.py) the bots key prefix (click_keys_args). A bot's click counts in the counter
# like any click (the hundreds the assignment reports are of every click) and in the counter's
# bots key too, in the same atomic step: bots <= count always.
# ARGV[6], for a password-protected link (keys.LinkValue: `||<hash>|` before the longurl): the
# hash the caller checked a password or a cookie against (redirects/protected.py); ARGV[5] is
# then '' for a human's click. Only a click that reaches the target counts, never the form.
# Returns nil: unknown or disabled link (a value in another format too), nothing counted;
#         503 (LOADING): no such key while the replica is not ready (its Redis lost data, or
#         consume_links is catching up): the link may exist, so no 404 (nothing counted);
#         or any link after a restart of Redis that kept data, until consume_links has checked
#         it (the restarted mark; INCARNATION_SCRIPT): what it holds may be older than what
#         was served. Checked where no incarnation is found (INCARNATION_SCRIPT removes it with
#         the restart) and on the rare answers (disabled, expired, the password form, a value
#         in another format, such as a restored backup from before keys.LINK_FORMAT): nothing
#         on the hot path;
#         410 (GONE): the link expired, nothing counted (TIME is called only for a link with an
#         expiry);
#         '|<hash>': the link is protected and ARGV[6] is not its hash: nothing counted, the
#         form is answered (a longurl never starts with '|');
#         the longurl: counted (302).
# The link value is keys.LinkValue: `<version>|<expires_at ms or empty>|<longurl or empty>`.
# Without an incarnation (FLUSHALL), the first click names one after Redis' clock plus the
# process' random token: a later life of this Redis gets another name.
CLICK_SCRIPT = """
local v = redis.call('GET', KEYS[1])
if not v then
  if redis.call('EXISTS', KEYS[6]) == 0 then return 503 end
  return nil
end
local a = string.find(v, '|', 1, true)
if not a then
  if redis.call('EXISTS', KEYS[7]) == 1 then return 503 end
  return nil
end
local b = string.find(v, '|', a + 1, true)
if not b or b == #v then
  if redis.call('EXISTS', KEYS[7]) == 1 then return 503 end
  return nil
end
if b > a + 1 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if now >= tonumber(string.sub(v, a + 1, b - 1)) then
    if redis.call('EXISTS', KEYS[7]) == 1 then return 503 end
    return 410
  end
end
if string.byte(v, b + 1) == 124 then
  local c = string.find(v, '|', b + 2, true)
  if not c or c == #v then
    if redis.call('EXISTS', KEYS[7]) == 1 then return 503 end
    return nil
  end
  local h = string.sub(v, b + 2, c - 1)
  if ARGV[6] ~= h then
    if redis.call('EXISTS', KEYS[7]) == 1 then return 503 end
    return '|' .. h
  end
  b = c
end
local inc = redis.call('GET', KEYS[2])
if not inc then
  if redis.call('EXISTS', KEYS[7]) == 1 then return 503 end
  local t = redis.call('TIME')
  inc = t[1] .. string.format('%06d', tonumber(t[2])) .. ARGV[4]
  redis.call('SET', KEYS[2], inc)
end
local member = inc .. ':' .. ARGV[2]
local n = redis.call('INCR', ARGV[3] .. member)
if ARGV[5] and ARGV[5] ~= '' then redis.call('INCR', ARGV[5] .. member) end
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
# ... and "no such key, and the replica is not ready": 503, not 404. A Redis wiped or restored
# from an older backup lacks links the replica served a moment before; until consume_links has
# read them again (and set the ready mark), a missing key is no proof that the link does not
# exist. Found by the chaos run (tools/chaos): 404s for live links after a wipe.
LOADING = 503

def click_keys_args(tinyurl: str, *, bot: bool = False, password_hash: str | None = None
                    ) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV of CLICK_SCRIPT for one click of `tinyurl` (EVALSHA CLICK_SHA); bot: a
    bot's click (redirects/bots.py), counted in the bots key too; password_hash: the protected
    link's hash its password or cookie was checked against (counted only if it is still the
    link's)."""
    args: list[str | int] = [REPORT_EVERY, tinyurl, keys.clicks_counter_prefix(),
                             process_token()]
    if bot:
        args.append(keys.clicks_bots_prefix())
    if password_hash is not None:
        if not bot:
            args.append("")
        args.append(password_hash)
    return ([keys.link_key(tinyurl), keys.clicks_incarnation_key(), keys.clicks_due_key(),
             keys.clicks_dirty_key(), keys.clicks_served_key(), keys.links_ready_key(),
             keys.links_restarted_key()], args)


class Protected(str):
    """The outcome for a password-protected link not let through: its password hash (a str, so
    that an outcome stays one of str, int or None; redirects/answers.py answers the form for
    it, never a redirect)."""

    __slots__ = ()


def click_outcome(raw: bytes | str | int | None) -> str | int | None:
    """CLICK_SCRIPT's reply as the answer: the longurl (302, counted), GONE (410: expired, not
    counted), None (404: unknown or disabled, not counted), Protected (the password form, not
    counted).

    Raises RedisError for a reply the script never gives (answered like Redis being away, 503,
    rather than as a redirect to something that is not a longurl).
    """
    if isinstance(raw, bytes):
        raw = raw.decode()
    if raw is None:
        return raw
    if isinstance(raw, str):
        # A longurl starts with its scheme, never "|": the one byte tells a protected link.
        return Protected(raw[1:]) if raw[:1] == "|" else raw
    if raw == GONE and type(raw) is int:
        return GONE
    if raw == LOADING and type(raw) is int:
        return LOADING
    raise RedisError(f"unexpected reply from the click script: {raw!r}")


def click_script_reload(redis: Redis) -> str:
    """After a NOSCRIPT reply (Redis restarted: its script cache is empty, and its data may be
    older than what was reported): start a new incarnation if due (incarnation_ensure), then
    SCRIPT LOAD CLICK_SCRIPT; returns the sha. Every NOSCRIPT recovery of the sync path goes
    through here. Raises redis.RedisError."""
    incarnation_ensure(redis=redis)
    return redis.script_load(CLICK_SCRIPT)


def click_call(*, redis: Redis, tinyurl: str, bot: bool = False) -> str | int | None:
    """Count one click of `tinyurl` (bot: a bot's, redirects/bots.py); returns its longurl
    (302), GONE (410: expired) or None (404).
    The sync path (the Django view, manage.py runserver); a served replica uses link_click_async.

    One EVALSHA; after a Redis restart (NOSCRIPT) click_script_reload (the incarnation check,
    SCRIPT LOAD) and the EVALSHA again. Raises redis.RedisError if Redis fails.
    """
    link_keys, args = click_keys_args(tinyurl, bot=bot)
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


async def link_click_async(*, redis: PipelinedRedis, tinyurl: str, bot: bool = False,
                           password_hash: str | None = None) -> str | int | None:
    """click_call through the pipelined client (the served replica's GET, redirects/asgi.py):
    click_outcome() of the script's reply. A NOSCRIPT reply (nothing ran, nothing was counted)
    goes through click_script_reload_async (the incarnation check, SCRIPT LOAD) and the click is
    sent again. Raises RedisError when Redis is away (if the connection broke after the click
    was sent, it may or may not have been counted). bot: a bot's click (redirects/bots.py).
    password_hash: a protected link let through (click_keys_args)."""
    link_keys, args = click_keys_args(tinyurl, bot=bot, password_hash=password_hash)
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
