"""Is this redirect's User-Agent a bot (a crawler, a link-preview bot, a mail scanner)? On the
replica's redirect path: a bot's GET is redirected as any other, and counted apart
(redirects/counting.py, the bot counter beside the click counter).

The list is not ours: crawlerdetect's (requirements.txt says why this one), the Python port of
CrawlerDetect's 1,400+ patterns and its exclusions, decided as crawlerdetect decides it: the
exclusions (browser tokens that contain a bot's word) removed from the User-Agent, then any
pattern found in what is left. crawlerdetect does both with Python's re, which tries the 1,462
alternatives at every position of the text: 190-370 µs for a browser's User-Agent, 3 ms for 256
random characters (bench/bots.py). Here the pattern search runs on RE2 (google-re2), a DFA that
reads the text once whatever the number of patterns; the exclusions (52) stay on Python's re,
as does the one pattern RE2 cannot express (a look-ahead). tests/redirects/test_bots.py checks
that both say the same of every User-Agent it has.

What a check costs, bounded (docs/performance.md has the figures):
  * a User-Agent seen before is a lookup in a bounded LRU cache (functools.lru_cache, in C),
    keyed by the header's bytes: a fraction of a microsecond. Real traffic has few distinct
    User-Agents (one per browser build and app), so nearly every redirect is a hit;
  * a User-Agent not seen before is matched, on its first USER_AGENT_CHARS characters only:
    every bot token of the list we test sits well within them, and a hostile client's 8 kB
    header costs no more than a long browser User-Agent;
  * a client that sends a new random User-Agent with every request misses the cache every time.
    A worker spends at most MISS_BUDGET checks a second on misses (a token bucket); past it, a
    new User-Agent is counted as human without a check (shortener_bot_checks_skipped_total).
    Why human: only a flood of never-seen User-Agents gets there, and a client that wants its
    clicks counted as human can send a browser's User-Agent anyway; a burst of real new
    browsers (a link going viral) is human. So a hostile client costs the worker at most
    MISS_BUDGET checks a second, never a multiple of its request rate.
No User-Agent (absent or blank) is a bot: every browser sends one, the clients without one are
programs (scripts, scanners, monitors); see docs/delivery-guarantees.md.
"""

from __future__ import annotations

import re
import time
from functools import lru_cache

import re2
from crawlerdetect.providers.crawlers import data as CRAWLERS
from crawlerdetect.providers.exclusions import data as EXCLUSIONS

from runtime.metrics import BOT_CHECKS_SKIPPED

# Characters of the User-Agent matched against the list (see the module's docstring).
USER_AGENT_CHARS = 256
# Distinct User-Agents remembered per worker: at most CACHE_SIZE * USER_AGENT_CHARS bytes of keys
# (about 1 MB) plus the cache's entries.
CACHE_SIZE = 4096
# Checks of unseen User-Agents a second per worker, with as many in a burst.
MISS_BUDGET = 200

# Patterns with a look-around, which RE2 does not have (crawlerdetect 0.4.2: one,
# `Yandex(?!Search)`): searched with Python's re, cheaply (a literal leads it).
_LOOKAROUND = re.compile(r"\(\?<?[=!]")
_options = re2.Options()
_options.case_sensitive = False
# RE2's memory for its DFA, per worker (its default, 8 MB, is enough for the 1,461 patterns:
# bench/bots.py's figures are with it); past it RE2 falls back to a slower, still linear, search.
_options.max_mem = 8 << 20
_crawlers = re2.compile("|".join(p for p in CRAWLERS if not _LOOKAROUND.search(p)), _options)
_crawlers_lookaround = re.compile(
    "|".join(p for p in CRAWLERS if _LOOKAROUND.search(p)) or "(?!)", re.IGNORECASE)
_exclusions = re.compile("|".join(EXCLUSIONS), re.IGNORECASE)


def is_crawler(user_agent: str) -> bool:
    """crawlerdetect's CrawlerDetect().is_crawler(user_agent), decided the same way (see the
    module's docstring), with the pattern search on RE2."""
    agent = _exclusions.sub("", user_agent.strip())
    return bool(agent) and bool(_crawlers.search(agent) or _crawlers_lookaround.search(agent))


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
    return is_crawler(user_agent.decode("latin-1"))


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
