"""Which redirects count as a bot's (redirects/bots.py): the list's crawlers, link-preview bots
and mail scanners; browsers are human; no User-Agent is a bot; what a User-Agent may cost is
bounded (its length matched, the checks of new ones a second)."""

from __future__ import annotations

import random
import re
import string

import pytest
from crawlerdetect import CrawlerDetect
from crawlerdetect.providers.crawlers import data as CRAWLERS
from crawlerdetect.providers.exclusions import data as EXCLUSIONS

from redirects import bots
from runtime.metrics import BOT_CHECKS_SKIPPED

BOTS = [
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like "
    "Gecko) Chrome/120.0.6099.71 Mobile Safari/537.36 (compatible; Googlebot/2.1; "
    "+http://www.google.com/bot.html)",
    "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "Twitterbot/1.0",
    "Discordbot/2.0; +https://discordapp.com",
    "LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)",
    "WhatsApp/2.23.20.0",
    "TelegramBot (like TwitterBot)",
    # Mail scanners: Barracuda's link protection, Outlook's and Office's link previews.
    "Mozilla/5.0 (compatible; Barracuda Sentinel (EE))",
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.4266; Pro)",
    "curl/8.4.0",
    "python-requests/2.32.3",
]
BROWSERS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.1 Safari/605.1.15",
]


@pytest.mark.parametrize("user_agent", BOTS)
def test_crawlers_link_previews_and_mail_scanners_are_bots(user_agent):
    assert bots.user_agent_is_bot(user_agent.encode())


@pytest.mark.parametrize("user_agent", BROWSERS)
def test_browsers_are_human(user_agent):
    assert not bots.user_agent_is_bot(user_agent.encode())


@pytest.mark.parametrize("user_agent", [None, b"", b"   "])
def test_no_user_agent_is_a_bot(user_agent):
    assert bots.user_agent_is_bot(user_agent)


def test_the_asgi_scope_is_read_for_its_user_agent_header():
    assert bots.scope_is_bot({"headers": []})
    assert bots.scope_is_bot({"headers": [(b"user-agent", BOTS[0].encode())]})
    assert not bots.scope_is_bot({"headers": [(b"accept", b"*/*"),
                                              (b"user-agent", BROWSERS[0].encode())]})


def test_only_the_first_characters_are_matched_and_any_bytes_are_read():
    # A bot token past USER_AGENT_CHARS is not seen: what a hostile 8 kB header costs is what a
    # long browser User-Agent costs. Any octets decode (latin-1), none raises.
    padded = BROWSERS[0] + " " * bots.USER_AGENT_CHARS + " Googlebot/2.1"
    assert not bots.user_agent_is_bot(padded.encode())
    assert bots.user_agent_is_bot(b"Googlebot/2.1 " + bytes(range(256)) * 40)
    assert not bots.user_agent_is_bot(BROWSERS[1].encode() + b"\xff\xfe" * 4000)


def test_new_user_agents_past_the_budget_are_human_unchecked_and_checked_later(monkeypatch):
    monkeypatch.setattr(bots, "_bucket", bots._Bucket(3))
    bots._listed.cache_clear()
    skipped = BOT_CHECKS_SKIPPED._value.get()
    assert [bots.user_agent_is_bot(f"Googlebot/{i}".encode()) for i in range(5)] == [
        True, True, True, False, False]
    assert BOT_CHECKS_SKIPPED._value.get() == skipped + 2
    # What was checked stays known without a check; what was not is not remembered as human.
    assert bots.user_agent_is_bot(b"Googlebot/0")
    monkeypatch.setattr(bots._bucket, "tokens", 3.0)
    assert bots.user_agent_is_bot(b"Googlebot/4")


def test_the_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(bots, "_bucket", bots._Bucket(10**9))
    bots._listed.cache_clear()
    for i in range(bots.CACHE_SIZE + 100):
        bots.user_agent_is_bot(f"{BROWSERS[0]} n{i}".encode())
    assert bots._listed.cache_info().currsize == bots.CACHE_SIZE


def corpus() -> list[str]:
    """User-Agents to compare the two matchers on: the lists above; each pattern of the list made
    into text (its escapes and anchors dropped: a bot's word, or near it) inside a browser's
    User-Agent and alone; the exclusions' words; the look-ahead's both sides; random text."""
    rng = random.Random(18)
    out = [*BOTS, *BROWSERS, "YandexBot/3.0", "YandexSearch/8.0 Mobile", "yandex"]
    for pattern in [*CRAWLERS, *EXCLUSIONS]:
        word = re.sub(r"\\(.)", r"\1", pattern).strip("^$")
        word = re.sub(r"[\[\](){}*+?|]", "", word)
        out += [word, f"{BROWSERS[0]} {word}/1.0", f"Mozilla/5.0 (compatible; {word.lower()})"]
    alphabet = string.ascii_letters + string.digits + " /;.()_-"
    out += ["".join(rng.choices(alphabet, k=rng.randint(1, 300))) for _ in range(300)]
    return out


def test_the_re2_matcher_decides_as_crawlerdetect_on_every_user_agent_we_have():
    detector = CrawlerDetect()
    texts = corpus()
    assert len(texts) > 4000
    differ = [t for t in texts if bots.is_crawler(t) != detector.is_crawler(t)]
    assert differ == []
    # Both kinds are in the corpus, plenty of each.
    assert 1000 < sum(map(bots.is_crawler, texts)) < len(texts) - 500
