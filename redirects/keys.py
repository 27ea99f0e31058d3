"""A replica's Redis layout: every key name, and the one encoding of a link's value.

Every key starts with the user prefix `<user>:`, since the Redis may be shared.

Links (written by consume_links only):
  <user>:link:<tinyurl>     string, the link's state (LinkValue below): one GET per redirect
  <user>:links:positions    hash, partition -> offset of the next record to apply, and
                            topic_id -> the id of the links topic those offsets are in
  <user>:links:stats        hash, the consumer's counters (applied, disabled, stale, skipped,
                            rejected) and rejected_last ("<partition>:<offset>")
  <user>:links:format       string, the layout version of the link values ("2")
  <user>:links:ready        string "1" while consume_links is caught up
  <user>:links:heartbeat    string, Redis' clock (ms) at consume_links' latest round
  <user>:links:kafka_error  string "<since ms>|<error>" while consume_links cannot reach Kafka

Password-protected links (redirects/protected.py):
  <user>:pwfail:<tinyurl>:<client address>  string, wrong passwords in the current window
                            (expires with it: SHORTENER_PASSWORD_TRIES_SECONDS)

Readiness:
  <user>:writes:probe       never created: /readyz's write check (selectors.readiness_get)

Clicks (counted by the redirect script, reported by report_clicks):
  <user>:clicks:incarnation             string, the current counter incarnation (one life of
                                        this Redis' data)
  <user>:clicks:runid                   string, the redis-server run_id that incarnation
                                        belongs to (a restart gets a new run_id)
  <user>:clicks:count:<inc>:<tinyurl>   string, clicks of tinyurl counted in incarnation inc
                                        (every click, a bot's too)
  <user>:clicks:bots:<inc>:<tinyurl>    string, how many of those were a bot's (redirects/bots.py);
                                        absent until the first, always <= the count
  <user>:clicks:due / dirty / inflight  sets of `<inc>:<tinyurl>` members (see counting.py)
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

# --- the link value -------------------------------------------------------------------------

# The layout of <user>:link:<tinyurl> values. Version 1 (schema-1 records) held the bare longurl;
# version 2 is LinkValue below. consume_links compares <user>:links:format with this when it
# positions itself, and on a difference (or none: an upgraded replica) deletes every link key and
# its position and reads the topic again from the start (services.links_format_ensure).
LINK_FORMAT = "2"


@dataclass(frozen=True)
class LinkValue:
    """A link as a replica holds it: `<version>|<expires_at ms or empty>|<longurl or empty>`.

    version: the record's state version (LinkRecord.version); only a newer one replaces it.
    expires_at: ms since the Unix epoch after which the link answers 410 Gone; None: never.
    longurl: the redirect target; None when the link is disabled (taken down: 404).
    The longurl comes last and may itself contain "|": a parser splits at the first two only.
    A password-protected link (topics/passwords.py) holds `|<hash>|` before its longurl:
    `<version>|<expires_at>||<hash>|<longurl>`. A longurl never starts with "|" (it starts with
    its scheme), so one byte tells a protected value, and an unprotected one is unchanged: the
    redirect of an unprotected link reads nothing more. A hash holds no "|".
    The Lua scripts (services.APPLY_SCRIPT, counting.CLICK_SCRIPT) read the same layout.
    """

    version: int
    expires_at: int | None
    longurl: str | None
    password_hash: str | None = None

    @property
    def disabled(self) -> bool:
        return self.longurl is None

    def expired(self, now_ms: int) -> bool:
        return self.expires_at is not None and now_ms >= self.expires_at


def link_value_encode(value: LinkValue) -> str:
    return link_value_text(value.version, value.expires_at, value.longurl, value.password_hash)


def link_value_text(version: int, expires_at: int | None, longurl: str | None,
                    password_hash: str | None = None) -> str:
    """link_value_encode without the LinkValue: what the links apply writes per record, where
    building a frozen dataclass first was a third of the cost of the value. A disabled link
    (no longurl) keeps no hash."""
    if password_hash and longurl:
        return f"{version}|{'' if expires_at is None else expires_at}||{password_hash}|{longurl}"
    return f"{version}|{'' if expires_at is None else expires_at}|{longurl or ''}"


def link_value_parse(raw: bytes | str) -> LinkValue | None:
    """The LinkValue in `raw`; None for anything else (a format-1 value left by an upgrade)."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    parts = text.split("|", 2)
    if len(parts) != 3 or not parts[0].isdigit() or not (parts[1] == "" or parts[1].isdigit()):
        return None
    rest, password_hash = parts[2], None
    if rest.startswith("|"):
        password_hash, _, rest = rest[1:].partition("|")
        if not password_hash or not rest:
            return None
    return LinkValue(version=int(parts[0]), expires_at=int(parts[1]) if parts[1] else None,
                     longurl=rest or None, password_hash=password_hash)


# --- links ----------------------------------------------------------------------------------


def link_prefix() -> str:
    return f"{settings.SHORTENER_USER}:link:"


def link_key(tinyurl: str) -> str:
    """String: the link's LinkValue."""
    return link_prefix() + tinyurl


def links_positions_key() -> str:
    """Hash: links-topic partition -> offset of the next record to apply.

    Written in the same atomic step as the links it follows (services.APPLY_SCRIPT), so it is
    never ahead of or behind the data. Its absence means "nothing applied yet": read the topic
    from the start. Its field `topic_id` holds the id Kafka gave the links topic (KIP-516): a
    topic deleted and created again has another, and consume_links then drops its links and
    reads the new topic from the start.
    """
    return f"{settings.SHORTENER_USER}:links:positions"


def links_format_key() -> str:
    """String: LINK_FORMAT of the link values this Redis holds (absent before version 2)."""
    return f"{settings.SHORTENER_USER}:links:format"


def links_ready_key() -> str:
    """String "1" while consume_links is caught up with the topic as it stood when it last
    positioned itself or resumed after a stall; absent otherwise (also after a wipe)."""
    return f"{settings.SHORTENER_USER}:links:ready"


def links_restarted_key() -> str:
    """String "1" from a restart of redis-server that kept data (an AOF or RDB loaded, a backup
    restored: what it holds may be older than what this replica served) until consume_links
    has checked, or restored, its positions and set the ready mark again. Meanwhile the replica
    answers 503 for every link (redirects/counting.py). Set by INCARNATION_SCRIPT, removed by
    services.READY_SCRIPT."""
    return f"{settings.SHORTENER_USER}:links:restarted"


def links_heartbeat_key() -> str:
    """String: Redis' clock in ms at consume_links' latest round (every poll, <= 0.5 s, and
    every retry while Kafka is unreachable). /readyz is 503 once it is older than
    SHORTENER_READY_STALE_SECONDS."""
    return f"{settings.SHORTENER_USER}:links:heartbeat"


def links_kafka_error_key() -> str:
    """String `<since ms>|<error>` while consume_links cannot reach Kafka; absent otherwise."""
    return f"{settings.SHORTENER_USER}:links:kafka_error"


def links_stats_key() -> str:
    """Hash: counters of the links consumer, updated in the same step as the data:
    applied (active links written), disabled (disabled links written), stale (not newer than
    what was held: nothing written), skipped (tombstones, and records past their keep time),
    rejected (records the replica cannot apply: logged), and rejected_last, the latest
    rejected record's "<partition>:<offset>"."""
    return f"{settings.SHORTENER_USER}:links:stats"


def writes_probe_key() -> str:
    """Never created. /readyz sends `SETRANGE <this> 0 ""` to learn whether Redis accepts
    writes: a write command that Redis refuses as it refuses the click script's writes, and that
    changes nothing when accepted (an empty value on a missing key creates no key; source: the
    SETRANGE page, https://redis.io/docs/latest/commands/setrange/, and
    tests/redirects/test_writes_refused.py)."""
    return f"{settings.SHORTENER_USER}:writes:probe"


# --- clicks ---------------------------------------------------------------------------------


def clicks_counter_prefix() -> str:
    """String per counter, `<prefix><incarnation>:<tinyurl>`: the link's clicks counted in that
    incarnation."""
    return f"{settings.SHORTENER_USER}:clicks:count:"


def clicks_bots_prefix() -> str:
    """String per counter, `<prefix><incarnation>:<tinyurl>`: how many of the counter's clicks
    were a bot's. Incremented in the same script step as the counter, so never above it; outside
    the counter's prefix, so that the sweep's SCAN of counters does not list it."""
    return f"{settings.SHORTENER_USER}:clicks:bots:"


def clicks_member(*, incarnation: str, tinyurl: str) -> str:
    """A counter's name in the due, dirty and in-flight sets (and its key's suffix). Neither an
    incarnation ([A-Za-z0-9]) nor a tinyurl, generated or an alias ([A-Za-z0-9_-]), holds a ":",
    so the reporter splits a name at its first one."""
    return f"{incarnation}:{tinyurl}"


def clicks_counter_key(*, incarnation: str, tinyurl: str) -> str:
    return clicks_counter_prefix() + clicks_member(incarnation=incarnation, tinyurl=tinyurl)


def clicks_incarnation_key() -> str:
    """String: the id of the current counter incarnation (see counting.py for when a new one
    starts). Counters are named by it, never by the node id, so a node whose id changes, or
    two hosts sharing this Redis, count and report the same counters."""
    return f"{settings.SHORTENER_USER}:clicks:incarnation"


def clicks_runid_key() -> str:
    """String: the redis-server run_id (INFO server) under which the incarnation started."""
    return f"{settings.SHORTENER_USER}:clicks:runid"


def clicks_due_key() -> str:
    """Set of counters (`<incarnation>:<tinyurl>`) that crossed a hundred: report promptly."""
    return f"{settings.SHORTENER_USER}:clicks:due"


def clicks_dirty_key() -> str:
    """Set of counters clicked since their last report (reported on the flush timer)."""
    return f"{settings.SHORTENER_USER}:clicks:dirty"


def clicks_inflight_key() -> str:
    """Set of counters whose report was sent but not yet acknowledged by Kafka."""
    return f"{settings.SHORTENER_USER}:clicks:inflight"


def clicks_swept_key() -> str:
    """String: the Unix time of the last sweep of the counters (redirects/sweep.py)."""
    return f"{settings.SHORTENER_USER}:clicks:swept"


def clicks_served_key() -> str:
    """Hash: incarnation -> redirects served (counted GETs) in it; the replica's status."""
    return f"{settings.SHORTENER_USER}:clicks:served"


# --- password-protected links ---------------------------------------------------------------


def password_failures_key(*, tinyurl: str, client: str) -> str:
    """String: wrong passwords for `tinyurl` from `client` (an address) in the current window;
    set to expire when the window ends, deleted by the right password (redirects/protected.py)."""
    return f"{settings.SHORTENER_USER}:pwfail:{tinyurl}:{client}"
