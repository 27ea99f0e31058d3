"""The counter incarnation: one life of a replica's Redis data, and the check that ends it when
redis-server restarted (its data may then be older than what was served and reported). Why
counters are named by incarnations, and when a new one starts: redirects/counting.py's
docstring. What a restart means for serving: docs/delivery-guarantees.md ("A Redis restarted
with its data").

Where the check runs: on every new connection of the web's pipelined client, before anything
else is sent on it (incarnation_check_on_connect); after a NOSCRIPT reply to the click script,
before it is loaded again (counting.click_script_reload, click_script_reload_async); and in
every round of report_clicks (incarnation_ensure).
"""

from __future__ import annotations

import logging
import os
import secrets

from redis import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import RedisError, ResponseError

from redirects import keys
from redirects.pipelining import PipelinedRedis

logger = logging.getLogger(__name__)

# KEYS: incarnation, runid, the links' ready mark, their restarted mark. ARGV: the server's
# run_id (INFO server), a random token.
# Unless the stored run id is this server's, the data may be older than what was reported and
# served (see the module's docstring): it removes the incarnation and the ready mark and sets
# the restarted mark. Every link is then answered 503 until consume_links, caught up, has
# checked its positions (services.READY_SCRIPT removes the mark), and the first click after that
# names a new incarnation (CLICK_SCRIPT). Returns 1 after a restart that kept data (a run id of
# an earlier life is stored), 2 the first time (none stored: a new Redis, a new prefix, or a
# Redis wiped: restarted empty), else 0. Found by the chaos run (tools/chaos): a Redis restored
# from an older backup served, for half a second, links as they were in the backup; and a wiped
# one, reading the topic again from its start, served the older targets of the links it had
# read so far (seed 2: a link's first target, the newer one not yet read again).
# ARGV[2] (the process token) is unused: incarnations are named by CLICK_SCRIPT.
# Concurrent callers race harmlessly: the second finds the run id already stored.
INCARNATION_SCRIPT = """
local previous = redis.call('GET', KEYS[2])
if previous == ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('SET', KEYS[4], '1')
if not previous then return 2 end
return 1
"""

_token: tuple[int, str] = (0, "")


def process_token() -> str:
    """16 random hex characters, made once per process (after a fork, anew): part of an
    incarnation's name, so that two processes never name one alike."""
    global _token
    if _token[0] != os.getpid():
        _token = (os.getpid(), secrets.token_hex(8))
    return _token[1]


def incarnation_check_args(run_id: str) -> tuple[str | int, ...]:
    """The arguments of EVAL for INCARNATION_SCRIPT, given the server's run_id (INFO server):
    `redis.eval(*incarnation_check_args(run_id))`, synchronous or asynchronous client alike.

    After a NOSCRIPT reply to EVALSHA CLICK_SHA: INFO server, this EVAL, then SCRIPT LOAD
    CLICK_SCRIPT, then the EVALSHA again (click_script_reload and click_script_reload_async do
    exactly this). Never load the click script any other way (redis-py's auto-reloading Script
    would skip the check).
    """
    return (INCARNATION_SCRIPT, 4, keys.clicks_incarnation_key(), keys.clicks_runid_key(),
            keys.links_ready_key(), keys.links_restarted_key(), run_id, process_token())


def incarnation_ensure(*, redis: Redis) -> bool:
    """Start a new counter incarnation if redis-server restarted since the current one began;
    True if it did. Two round trips (INFO server, EVAL). Raises redis.RedisError."""
    run_id = redis.info("server")["run_id"]
    return _incarnation_checked(run_id, redis.eval(*incarnation_check_args(run_id)))


def _incarnation_checked(run_id: str, started: object) -> bool:
    if started == 1:
        logger.warning("Redis restarted (run_id %s): every link answered 503 until "
                       "consume_links has checked what it holds; clicks are counted in a new "
                       "incarnation from then on", run_id)
    elif started == 2:
        # (Worded without "caught up": tests and operators look for consume_links' own line.)
        logger.info("a new or wiped Redis (run_id %s): every link answered 503 until "
                    "consume_links has read the links topic into it", run_id)
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


async def incarnation_check_on_connect(connection: Connection) -> None:
    """The incarnation check (INCARNATION_SCRIPT) on a new connection of the web's pipelined
    client, before anything else is sent on it (PipelinedRedis' on_connect): every restart of
    Redis closes every connection, so the first command after one — a GET's click, a HEAD or
    the password form's POST alike — follows the check and finds the restarted mark. Without
    it, a HEAD or a POST sent before the first GET's NOSCRIPT (or report_clicks' next round)
    read a restored backup's older state. Two round trips per connection, none per request.

    A restarted Redis that refuses writes (full, MISCONF, a read-only replica) cannot take the
    mark: then nothing is served from it (RedisError, every request 503) until it accepts
    writes; a Redis that refuses writes but did not restart (its stored run id is the server's,
    or none is stored) is served as before.
    Raises RedisError (never ResponseError: a caller must not take it for a refused click)."""
    await connection.send_command("INFO", "server", check_health=False)
    run_id = info_run_id(await connection.read_response(disable_decoding=True))
    await connection.send_command("EVAL", *incarnation_check_args(run_id), check_health=False)
    try:
        started = await connection.read_response(disable_decoding=True)
    except ResponseError as exc:
        # The check could not run: refused writes (full, MISCONF, a read-only replica) or any
        # other error reply. Served on only if this is the server life last checked.
        await connection.send_command("GET", keys.clicks_runid_key(), check_health=False)
        stored = await connection.read_response(disable_decoding=True)
        if stored is not None and stored != run_id.encode():
            raise RedisError(f"Redis restarted (run_id {run_id}) and the incarnation check "
                             f"failed ({exc}): what it holds cannot be checked") from exc
        return
    _incarnation_checked(run_id, started)
