"""Is this redirect's User-Agent a bot (a crawler, a link-preview bot, a mail scanner)? On the
replica's redirect path: a bot's GET is redirected as any other, and counted apart
(redirects/counting.py, the bot counter beside the click counter).

The list is not ours: crawlerdetect (requirements.txt says why this one), the Python port of
CrawlerDetect's 1,400+ patterns and its exclusions, matched as crawlerdetect matches them.

What a check costs, bounded (docs/performance.md has the figures):
  * a User-Agent seen before is a dict lookup in a bounded LRU cache (functools.lru_cache, in
    C), keyed by the header's bytes: under a microsecond. Real traffic has few distinct
    User-Agents (one per browser build and app), so nearly every redirect is a hit;
  * a User-Agent not seen before runs crawlerdetect's two regular expressions (an alternation of
    1,462 patterns: Python's re tries them at each position, so the cost grows with the length,
    faster than linearly on random text). Only the first USER_AGENT_CHARS characters are
    matched: every bot token of the list we test sits well within them, and a hostile client's
    8 kB header costs no more than a long browser User-Agent;
  * a client that sends a new random User-Agent with every request misses the cache every time.
    A worker spends at most MISS_BUDGET checks a second on misses (a token bucket); past it, a
    new User-Agent is counted as human without a check (shortener_bot_checks_skipped_total).
    Why human: only a flood of never-seen User-Agents gets there, and a client that wants its
    clicks counted as human can send a browser's User-Agent anyway; a burst of real new
    browsers (a link going viral) is human. So a hostile client costs the worker at most
    MISS_BUDGET misses a second, never a multiple of its request rate.
No User-Agent (absent or blank) is a bot: every browser sends one, the clients without one are
programs (scripts, scanners, monitors); see docs/delivery-guarantees.md.
"""

from __future__ import annotations

import time
from functools import lru_cache

from crawlerdetect import CrawlerDetect

from runtime.metrics import BOT_CHECKS_SKIPPED

# Characters of the User-Agent matched against the list (see the module's docstring).
USER_AGENT_CHARS = 256
# Distinct User-Agents remembered per worker: at most CACHE_SIZE * USER_AGENT_CHARS bytes of keys
# (about 1 MB) plus the cache's entries.
CACHE_SIZE = 4096
# Checks of unseen User-Agents a second per worker, with as many in a burst.
MISS_BUDGET = 200

_detector = CrawlerDetect()


class _OverBudget(Exception):
    """No check left this second: the User-Agent is counted as human, and not remembered (an
    exception is not cached by lru_cache), so it is checked when the budget allows again."""


class _Bucket:
    """A token bucket of `rate` checks a second, as many in a burst (one per process: a worker
    serves its redirects on one thread)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.at = time.monotonic()

    def take(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1.0:
            BOT_CHECKS_SKIPPED.inc()
            raise _OverBudget
        self.tokens -= 1.0


_bucket = _Bucket(MISS_BUDGET)


@lru_cache(maxsize=CACHE_SIZE)
def _listed(user_agent: bytes) -> bool:
    # Cached on the truncated header's bytes; decoded only on a miss (latin-1: any octets
    # decode, and HTTP header values are octets).
    _bucket.take()
    return _detector.is_crawler(user_agent.decode("latin-1"))


def user_agent_is_bot(user_agent: bytes | None) -> bool:
    """Whether a redirect with this User-Agent header (its raw value; None: no header) is
    counted as a bot's. Blank or absent: a bot. Never raises."""
    if not user_agent or user_agent.isspace():
        return True
    try:
        return _listed(user_agent[:USER_AGENT_CHARS])
    except _OverBudget:
        return False


def scope_is_bot(scope: dict) -> bool:
    """user_agent_is_bot for an ASGI HTTP scope (headers: lowercased names, as ASGI requires)."""
    for name, value in scope["headers"]:
        if name == b"user-agent":
            return user_agent_is_bot(value)
    return True
