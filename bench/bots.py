"""Benchmark: what the bot check (redirects/bots.py) costs a redirect, in CPU time of this one
process (no network, no server: the check alone, as the replica's worker calls it).

Usage: .local/venv/bin/python bench/bots.py [--rounds 5] [--n 20000]

Per round, CPU µs a check for:
  * hit: the same browser User-Agent each time (the cache: what real traffic nearly always is);
  * hit, a bot (Googlebot);
  * no User-Agent header;
  * miss, real User-Agents: browsers and bots of 80-200 characters, each made new by a
    version number (the list's two regular expressions run every time);
  * miss, hostile: 8,000 random characters a header, a new one every time (matched on the
    first USER_AGENT_CHARS characters only);
  * the same hostile flood through the miss budget (as a worker meets it: past MISS_BUDGET
    checks a second, a new User-Agent is counted as human unchecked);
  * for comparison, crawlerdetect itself (Python's re for the whole list) on real and random
    User-Agents, truncated and whole.
The budget is lifted for the miss rows (they measure the check itself).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import string
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BROWSER = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
           "Chrome/120.0.0.0 Safari/537.36")
REAL = [
    BROWSER,
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.6099.144 Mobile Safari/537.36 [FBAN/EMA;FBLC/en_US;FBAV/390.0.0.0]",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
]


def cpu_per_call(call, items) -> float:
    started = time.process_time()
    for item in items:
        call(item)
    return (time.process_time() - started) / len(items) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=20_000, help="checks a row (hits)")
    args = parser.parse_args()
    os.environ.setdefault("SHORTENER_ROLE", "replica")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shortener_project.settings")
    import django

    django.setup()
    from crawlerdetect import CrawlerDetect

    from redirects import bots

    rng = random.Random(1)
    alphabet = string.ascii_letters + string.digits + " /;.()_-"
    misses = max(200, args.n // 50)
    rows: dict[str, list[float]] = {}
    print(f"bot check, CPU µs a check (process time), {args.rounds} rounds; "
          f"USER_AGENT_CHARS {bots.USER_AGENT_CHARS}, CACHE_SIZE {bots.CACHE_SIZE}, "
          f"MISS_BUDGET {bots.MISS_BUDGET}/s")
    for _ in range(args.rounds):
        bots._listed.cache_clear()
        bots.user_agent_is_bot(BROWSER.encode())
        bots.user_agent_is_bot(REAL[4].encode())
        results = {
            "hit, a browser": cpu_per_call(bots.user_agent_is_bot, [BROWSER.encode()] * args.n),
            "hit, Googlebot": cpu_per_call(bots.user_agent_is_bot, [REAL[4].encode()] * args.n),
            "no User-Agent": cpu_per_call(bots.user_agent_is_bot, [None] * args.n),
            "ASGI scope, 6 headers, hit": cpu_per_call(bots.scope_is_bot, [{"headers": [
                (b"host", b"127.0.0.1:8001"), (b"accept", b"*/*"),
                (b"accept-language", b"en"), (b"accept-encoding", b"gzip"),
                (b"connection", b"keep-alive"), (b"user-agent", BROWSER.encode())]}] * args.n),
        }
        unlimited = bots._Bucket(10**12)
        budget, bots._bucket = bots._bucket, unlimited
        try:
            new_real = [f"{rng.choice(REAL)} v{rng.random()}".encode() for _ in range(misses)]
            results["miss, real User-Agents (80-200 chars)"] = cpu_per_call(
                bots.user_agent_is_bot, new_real)
            hostile = ["".join(rng.choices(alphabet, k=8000)).encode() for _ in range(misses)]
            results["miss, hostile 8,000 chars (truncated)"] = cpu_per_call(
                bots.user_agent_is_bot, hostile)
        finally:
            bots._bucket = budget
        # Through the budget, as a worker meets a flood: after MISS_BUDGET checks, skipped.
        bots._bucket = bots._Bucket(bots.MISS_BUDGET)
        flood = ["".join(rng.choices(alphabet, k=8000)).encode() for _ in range(misses * 5)]
        results["hostile flood through the budget"] = cpu_per_call(bots.user_agent_is_bot,
                                                                    flood)
        # crawlerdetect itself on the same kinds of text (its own cache defeated: new texts).
        detector = CrawlerDetect()
        results["crawlerdetect: miss, real User-Agents"] = cpu_per_call(
            detector.is_crawler, [t.decode() + " x" for t in new_real[:200]])
        results["crawlerdetect: miss, 256 random chars"] = cpu_per_call(
            detector.is_crawler, [t[:bots.USER_AGENT_CHARS].decode() for t in hostile[:100]])
        results["crawlerdetect: whole 8,000 random chars"] = cpu_per_call(
            detector.is_crawler, [t.decode() for t in hostile[:10]])
        for name, value in results.items():
            rows.setdefault(name, []).append(value)
    for name, values in rows.items():
        print(f"  {name:44} median {statistics.median(values):10.2f} µs "
              f"(min {min(values):.2f}, max {max(values):.2f})")


if __name__ == "__main__":
    main()
