"""Writes of a replica: applying links-topic records to Redis, only forward, atomically; the
link-value format upgrade; consume_links' heartbeat and readiness marks.

The Redis layout is described in redirects/keys.py.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from itertools import chain

import hiredis
from django.conf import settings
from redis import Redis
from redis.commands.core import Script
from redis.connection import Connection
from redis.exceptions import NoScriptError

from redirects import keys, selectors
from runtime.metrics import records_rejected_report
from topics.batching import Record
from topics.links import link_records_decode
from topics.positions import PositionMismatch
from topics.records import MessageError, Rejected

logger = logging.getLogger(__name__)

# One batch of one partition, as ONE atomic step (a Lua script runs alone in Redis):
#   1. the stored position must be the expected one, else nothing is written;
#   2. each record is written only if its version is newer than the one held: a late copy of
#      an older state, in any order, changes nothing;
#   3. the consumer's counters and the new position go with the data, and the topic's id
#      beside the position (a batch read from a topic with another id than the stored one is
#      refused like a stale position: the consumer then repositions and finds the topic
#      recreated).
# KEYS: positions hash, stats hash.
# ARGV: partition, expected position ('' = none stored), next offset, the keep time in ms
#       (SHORTENER_GONE_KEEP_SECONDS), counts decided in Python (stale, ignored, rejected),
#       rejected_last ('' = none), topic id ('' = unknown); then 2 per link: its key, its value
#       (keys.LinkValue), each key once.
# Returns {applied, disabled, stale, ignored}, or {'MISMATCH', stored position or ''}.
# Versions are compared as digit strings (no leading zeros: longer is larger), because Lua's
# numbers are doubles and the contract allows versions up to 2^62. A held value without a
# version (format 1) counts as version 0. SET and MSET clear any earlier expiry.
# A record whose keep time (expires_at + keep) has passed deletes the older state it
# supersedes and is not written: expired links leave Redis by themselves; one still to expire
# is SET with its PEXPIREAT (written with '%.0f': every digit, never an exponent).
# The links go APPLY_CHUNK at a time: one MGET for what is held, one MSET for the newer ones
# without expiry (the common case), instead of a GET and a SET per link: each redis.call costs
# about a microsecond of Redis' time, and a batch holds Redis' one thread for its whole run.
# (APPLY_CHUNK * 2 stays far inside Lua's limit on unpack(), about 8,000 values.)
APPLY_CHUNK = 1000
APPLY_SCRIPT = """
local stored = redis.call('HGET', KEYS[1], ARGV[1])
if (stored or '') ~= ARGV[2] then return {'MISMATCH', stored or ''} end
local stored_id = redis.call('HGET', KEYS[1], 'topic_id')
if ARGV[9] ~= '' and stored_id and stored_id ~= ARGV[9] then
  return {'MISMATCH', stored or ''}
end
local function newer(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local keep = tonumber(ARGV[4])
local applied, disabled = 0, 0
local stale, ignored = tonumber(ARGV[5]), tonumber(ARGV[6])
for first = 10, #ARGV, 2 * CHUNK do
  local last = math.min(first + 2 * CHUNK - 1, #ARGV)
  local names = {}
  for i = first, last, 2 do names[#names + 1] = ARGV[i] end
  local held = redis.call('MGET', unpack(names))
  local writes = {}
  for j = 1, #names do
    local key, value = names[j], ARGV[first + 2 * j - 1]
    local version, expires = string.match(value, '^(%d+)|(%d*)|')
    local held_version = held[j] and string.match(held[j], '^(%d+)|') or '0'
    if not newer(version, held_version) then
      stale = stale + 1
    elseif expires ~= '' and tonumber(expires) + keep <= now then
      redis.call('DEL', key)
      ignored = ignored + 1
    else
      if expires == '' then
        writes[#writes + 1] = key
        writes[#writes + 1] = value
      else
        redis.call('SET', key, value)
        redis.call('PEXPIREAT', key, string.format('%.0f', tonumber(expires) + keep))
      end
      if string.sub(value, -1) == '|' then disabled = disabled + 1
      else applied = applied + 1 end
    end
  end
  if #writes > 0 then redis.call('MSET', unpack(writes)) end
end
local counts = {applied = applied, disabled = disabled, stale = stale, ignored = ignored,
                rejected = tonumber(ARGV[7])}
for field, n in pairs(counts) do
  if n > 0 then redis.call('HINCRBY', KEYS[2], field, n) end
end
if ARGV[8] ~= '' then redis.call('HSET', KEYS[2], 'rejected_last', ARGV[8]) end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
if ARGV[9] ~= '' then redis.call('HSET', KEYS[1], 'topic_id', ARGV[9]) end
return {applied, disabled, stale, ignored}
""".replace("CHUNK", str(APPLY_CHUNK))

# consume_links' heartbeat: Redis' clock in ms into KEYS[1]. If the previous beat is missing or
# older than ARGV[1] ms (the consumer was stopped, killed or stalled that long, or Redis lost
# it), the ready mark KEYS[2] goes too, atomically: what the replica holds may be that old, so it
# must catch up again before it is ready. Returns 1 then, else 0, and the ready mark (if set)
# lives ARGV[1] ms more: it expires by itself when the beats stop, so a replica whose
# consume_links is stalled or dead answers an unknown link 503, not 404, as /readyz says
# (found by the chaos checker's readiness check: a 404 is the replica saying it is ready).
HEARTBEAT_SCRIPT = """
local t = redis.call('TIME')
local now = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
local previous = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], now)
if (not previous) or tonumber(now) - tonumber(previous) > tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[2])
  return 1
end
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 0
"""


@dataclass(frozen=True)
class BatchResult:
    applied: int  # active links written
    disabled: int  # disabled links written (their version only: no longurl)
    stale: int  # records not newer than what was held or than another in the batch
    ignored: int  # tombstones (no version), and records past their keep time
    rejected: int  # records the replica cannot apply (MessageError): logged and counted
    next_offset: int  # the partition's stored position after this batch


@dataclass(frozen=True)
class LinksBatch:
    """One partition's batch of links-topic records, decoded and checked (links_batch_prepare):
    what APPLY_SCRIPT is called with, and what links_batch_done needs of it afterwards."""

    partition: int
    expected_position: int | None  # None: nothing stored
    next_offset: int  # the offset after the batch's last record
    args: list[str | int]  # APPLY_SCRIPT's ARGV
    refused: list[Rejected]  # records link_record_decode refused: reported once applied
    rejected: int  # those and the records the consumer asked to step over


def links_apply_batch(
    *, redis: Redis, partition: int, records: Sequence[Record], expected_position: int | None,
    topic_id: str | None = None, rejected: Collection[int] = (),
) -> BatchResult:
    """Apply records of one links-topic partition (offset order) as one atomic Redis step.

    Each record is kept only if its version is newer than the one Redis holds for the link (and
    than the batch's other records for it), so replaying any older record, in any order, changes
    nothing; a disabled record is kept as its version alone. With `expires_at`, the key carries
    PEXPIREAT = expires_at + SHORTENER_GONE_KEEP_SECONDS (the redirect answers 410 meanwhile);
    a record already past that is not written. Tombstones carry no version and are ignored.
    A record that fails link_record_decode is counted in the stats hash in the same Lua step
    that moves the position past it, then logged once (topic, partition, offset, reason) and
    counted in shortener_records_rejected_total{topic,reason}. Nothing a record holds makes this
    raise.

    `expected_position` is where this consumer believes the partition stands in Redis (None:
    nothing stored). If Redis holds another position, nothing is written and PositionMismatch
    is raised. topic_id: the id of the topic the records come from (None: unknown), stored
    beside the position; a stored id that differs also raises PositionMismatch. rejected:
    offsets of records to step over (the consumer found that they cannot be applied), counted
    as rejected. Raises ValueError for an empty batch, redis.RedisError if Redis fails.
    links_batch_prepare, links_batch_send and links_batch_receive are the same in two halves.
    """
    batch = links_batch_prepare(partition=partition, records=records,
                                expected_position=expected_position, topic_id=topic_id,
                                rejected=rejected)
    reply = _script(redis, APPLY_SCRIPT)(
        keys=[keys.links_positions_key(), keys.links_stats_key()], args=batch.args, client=redis)
    return links_batch_done(batch, reply)


def links_batch_prepare(
    *, partition: int, records: Sequence[Record], expected_position: int | None,
    topic_id: str | None = None, rejected: Collection[int] = (),
) -> LinksBatch:
    """Decode and check the records (link_record_decode) into APPLY_SCRIPT's arguments; Redis
    is not touched. Arguments as links_apply_batch's; raises ValueError for an empty batch."""
    if not records:
        raise ValueError("empty batch")
    rejected_offsets = frozenset(rejected)
    prefix = keys.link_prefix()
    # link key -> the newest version in the batch, and its value (keys.LinkValue); the order
    # of first appearance is kept, so the args below are in offset order
    versions: dict[str, int] = {}
    values: dict[str, str] = {}
    stale = ignored = 0
    refused: list[Rejected] = []  # records link_record_decode refuses
    stepped_over: Record | None = None  # the last record the consumer rejected
    if rejected_offsets:
        todo = [rec for rec in records if rec.offset not in rejected_offsets]
        stepped_over = max((rec for rec in records if rec.offset in rejected_offsets),
                           key=lambda r: r.offset, default=None)
    else:
        todo = records
    value_text = keys.link_value_text
    for rec, record in zip(todo, link_records_decode(todo)):
        if record is None:  # a tombstone: no version, so nothing it could safely replace
            ignored += 1
            continue
        if isinstance(record, MessageError):
            refused.append(Rejected.of(rec, record))
            continue
        version = record.version
        key = prefix + record.tinyurl
        held = versions.get(key)
        if held is not None:
            stale += 1  # one of the two copies is dropped here
            if held >= version:  # only a newer version replaces, as in Redis
                continue
        versions[key] = version
        # expires_at <= EXPIRES_AT_MAX (topics/links.py): plus the keep time, still exact in Lua.
        values[key] = value_text(version, record.expires_at,
                                 record.longurl if record.state == "active" else None,
                                 record.password_hash)

    next_offset = records[-1].offset + 1
    last_rejected = max(refused[-1:] + ([stepped_over] if stepped_over else []),
                        key=lambda r: r.offset, default=None)
    args: list[str | int] = [
        partition, "" if expected_position is None else expected_position, next_offset,
        int(settings.SHORTENER_GONE_KEEP_SECONDS * 1000), stale, ignored,
        len(refused) + len(rejected_offsets),
        f"{last_rejected.partition}:{last_rejected.offset}" if last_rejected else "",
        topic_id or "",
    ]
    args.extend(chain.from_iterable(values.items()))
    return LinksBatch(partition=partition, expected_position=expected_position,
                      next_offset=next_offset, args=args, refused=refused,
                      rejected=len(refused) + len(rejected_offsets))


def links_batch_done(batch: LinksBatch, reply: list) -> BatchResult:
    """The BatchResult of APPLY_SCRIPT's `reply` for `batch`, once the rejected records are
    reported (logged, counted); PositionMismatch if the script refused the batch."""
    if reply[0] == b"MISMATCH":
        stored = int(reply[1]) if reply[1] else None
        raise PositionMismatch(batch.partition, batch.expected_position, stored)
    records_rejected_report(batch.refused, log=logger)
    applied, disabled, stale, ignored = (int(n) for n in reply)
    return BatchResult(applied=applied, disabled=disabled, stale=stale, ignored=ignored,
                       rejected=batch.rejected, next_offset=batch.next_offset)


# APPLY_SCRIPT's SHA-1, as EVALSHA names it (what redis-py's Script computes).
APPLY_SHA = hashlib.sha1(APPLY_SCRIPT.encode()).hexdigest()


def links_batch_send(connection: Connection, batch: LinksBatch) -> None:
    """Send `batch`'s APPLY_SCRIPT call on `connection` (a connection of its own: nothing else
    may be sent on it meanwhile) without waiting for the reply: Redis applies the batch while
    the caller goes on, and links_batch_receive reads the reply. Raises redis.RedisError."""
    # hiredis packs the command in C; redis-py's send_command first passes every argument
    # through a Python check of its type: 0.31 -> 0.17 us a link (the packing of a batch of
    # 5,000 timed alone); loading 1,000,000 links, consume_links' CPU 0.1-0.16 s lower.
    connection.send_packed_command([hiredis.pack_command((
        "EVALSHA", APPLY_SHA, 2, keys.links_positions_key(), keys.links_stats_key(),
        *batch.args))])


def links_batch_receive(connection: Connection, batch: LinksBatch) -> BatchResult:
    """Read the reply of `batch`'s links_batch_send on `connection`: its BatchResult
    (links_batch_done), PositionMismatch, or redis.RedisError."""
    return links_batch_done(batch, links_batch_reply(connection, batch))


def links_batch_reply(connection: Connection, batch: LinksBatch) -> list:
    """Read APPLY_SCRIPT's reply to `batch`'s links_batch_send on `connection`, as Redis gives
    it (links_batch_done makes it a BatchResult). Raises redis.RedisError."""
    try:
        return connection.read_response()
    except NoScriptError:
        # Redis has lost its scripts (restarted, SCRIPT FLUSH) and ran nothing of the batch:
        # sent again with the script's text, which EVAL also caches for the next EVALSHA.
        connection.send_command("EVAL", APPLY_SCRIPT, 2, keys.links_positions_key(),
                                keys.links_stats_key(), *batch.args)
        return connection.read_response()


_scripts: dict[str, Script] = {}


def _script(redis: Redis, text: str) -> Script:
    """redis-py's Script for `text`: EVALSHA, loaded again after a Redis restart (NOSCRIPT).
    Made once per process; callers pass their client on each call."""
    script = _scripts.get(text)
    if script is None:
        script = _scripts[text] = redis.register_script(text)
    return script


def links_format_ensure(*, redis: Redis, scan_batch: int = 1000) -> int:
    """Make sure every link value in Redis has keys.LINK_FORMAT; returns how many keys it wiped.

    A replica upgraded from format 1 (bare longurls, no versions) cannot compare versions with
    what it holds, so it drops its links and its position and reads the topic again from the
    start (it answers 503 on /readyz meanwhile: the ready mark goes first). The marker is set
    last, so a crash half-way wipes again on the next start. Called by consume_links whenever
    it positions itself; one GET when nothing is to be done.
    """
    if redis.get(keys.links_format_key()) == keys.LINK_FORMAT.encode():
        return 0
    wiped = links_drop(redis=redis, scan_batch=scan_batch)
    redis.set(keys.links_format_key(), keys.LINK_FORMAT)
    if wiped:
        logger.warning("link values were in an older format: deleted %d links and the stored "
                       "position; reading the links topic again from the start", wiped)
    return wiped


def links_drop(*, redis: Redis, scan_batch: int = 1000) -> int:
    """Delete the ready mark, the stored positions (and the topic id beside them), then every
    link key; returns how many link keys went. The links topic is then read from its start.
    Used when what Redis holds no longer follows the topic: an older value format
    (links_format_ensure), a links topic deleted and created again (consume_links)."""
    redis.delete(keys.links_ready_key(), keys.links_positions_key())
    wiped = 0
    batch: list[bytes] = []
    for key in redis.scan_iter(match=keys.link_prefix() + "*", count=scan_batch):
        batch.append(key)
        if len(batch) >= scan_batch:
            wiped += redis.unlink(*batch)
            batch = []
    if batch:
        wiped += redis.unlink(*batch)
    return wiped


def links_heartbeat(*, redis: Redis, stale_seconds: float) -> bool:
    """Record a round of consume_links. True if the previous one was missing or older than
    `stale_seconds` (the ready mark was then removed in the same step: catch up again)."""
    return _script(redis, HEARTBEAT_SCRIPT)(
        keys=[keys.links_heartbeat_key(), keys.links_ready_key()],
        args=[int(stale_seconds * 1000)], client=redis) == 1


# The ready mark KEYS[2], set only if the positions hash KEYS[1] still holds the positions the
# consumer caught up with (ARGV[2..]: partition, position ('' = none) pairs); atomically, so a
# Redis wiped or restarted empty since is never marked ready from the consumer's memory. With it
# the restarted mark KEYS[3] goes (redirects/incarnation.py, INCARNATION_SCRIPT): positions that
# match say Redis holds everything this consumer applied, so nothing served was newer.
# ARGV[1]: the ready mark's life in ms (each heartbeat renews it, HEARTBEAT_SCRIPT). Returns 1
# if set, else 0.
READY_SCRIPT = """
for i = 2, #ARGV, 2 do
  if (redis.call('HGET', KEYS[1], ARGV[i]) or '') ~= ARGV[i + 1] then return 0 end
end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
redis.call('DEL', KEYS[3])
return 1
"""


def links_ready_set(*, redis: Redis, ready: bool,
                    positions: dict[int, int | None] | None = None) -> None:
    """Set (ready=True) or remove the replica's ready mark (what /readyz answers).

    positions: partition -> the position the consumer caught up with (None: nothing stored).
    The mark is set only if Redis still holds exactly those; else PositionMismatch is raised
    and nothing is set (a Redis that lost its data must not be called ready, not even for the
    second until the consumer's next check). Raises redis.RedisError."""
    if not ready:
        redis.delete(keys.links_ready_key())
        return
    args: list[str | int] = [int(settings.SHORTENER_READY_STALE_SECONDS * 1000)]
    for partition, position in (positions or {}).items():
        args += [partition, "" if position is None else position]
    if _script(redis, READY_SCRIPT)(keys=[keys.links_positions_key(), keys.links_ready_key(),
                                          keys.links_restarted_key()],
                                    args=args, client=redis) != 1:
        stored = selectors.links_positions_get(redis=redis)
        partition = next((p for p, v in (positions or {}).items() if stored.get(p) != v), 0)
        raise PositionMismatch(partition, (positions or {}).get(partition), stored.get(partition))


def links_kafka_error_set(*, redis: Redis, error: str | None, since_ms: int | None = None) -> None:
    """Say on /readyz that consume_links cannot reach Kafka (error), or that it can (None)."""
    if error is None:
        redis.delete(keys.links_kafka_error_key())
    else:
        since = since_ms if since_ms is not None else int(time.time() * 1000)
        redis.set(keys.links_kafka_error_key(), f"{since}|{error[:300]}")
