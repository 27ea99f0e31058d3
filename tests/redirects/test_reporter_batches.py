"""report_clicks sends report batches (topics/clicks.py, schema 4): a flush of many counters is
a few records, a counter crossing a hundred still goes out promptly, and the sweep re-reports
every counter it holds. Real processes: the replica's redis-server, web and report_clicks; real
Kafka."""

from __future__ import annotations

import pytest

from testkit import tinyurl_new, topic_read, wait_until
from tests.redirects.test_bots import BROWSERS
from tests.redirects.test_reporter_kafka import start, store
from topics.clicks import ClickBatchBots, clicks_record_decode, clicks_topic
from topics.records import MessageError

pytestmark = pytest.mark.timeout(300)


def batches_of(tinyurls: set[str]) -> list[ClickBatchBots]:
    """The batches in the clicks topic that carry any of `tinyurls`, in order."""
    out = []
    for record in topic_read(clicks_topic()):
        try:
            report = clicks_record_decode(record.key, record.value)
        except MessageError:  # other tests' deliberately malformed records
            continue
        if isinstance(report, ClickBatchBots) and any(c[0] in tinyurls for c in report.counts):
            out.append(report)
    return out


def test_a_flush_of_many_counters_is_one_batch_and_a_hundred_goes_out_at_once(replica_factory):
    replica = replica_factory(start=False)
    replica.start_web()
    links = [tinyurl_new() for _ in range(40)]
    hot = links[0]
    for t in links:
        store(replica, t)
    for i, t in enumerate(links[1:]):
        replica.click(t, 1 + i % 3)
    # 100 bot clicks (requests' User-Agent), then 30 of a browser: a milestone of 100 whose bots
    # are a lower bound (100 now, less the 30 clicks since the hundred), then the exact pair.
    replica.click(hot, 100)
    replica.click(hot, 30, user_agent=BROWSERS[0])
    start(replica)  # flush timer: an hour, so only the hundred goes out while it runs
    wait_until(lambda: [b.counts for b in batches_of({hot})] == [[(hot, 100, 70)]], timeout=20,
               what="the hundred, promptly and alone")
    assert replica.stop_reporter() == 0  # the final flush: every dirty counter, exactly
    batches = batches_of(set(links))
    assert len(batches) == 2, [b.counts for b in batches]
    flush = batches[1]
    assert flush.incarnation == replica.incarnation() and flush.node == replica.name
    assert {t: (n, b) for t, n, b in flush.counts} == {
        hot: (130, 100), **{t: (1 + i % 3,) * 2 for i, t in enumerate(links[1:])}}
    assert len(flush.counts) == 40  # each counter once


def test_the_sweep_re_reports_every_counter_of_the_incarnation_unchanged_or_not(
    replica_factory,
):
    replica = replica_factory(start=False)
    replica.start_web()
    links = [tinyurl_new() for _ in range(5)]
    for t in links:
        store(replica, t)
        replica.click(t, 3)
    start(replica)
    assert replica.stop_reporter() == 0
    assert [set(b.counts) for b in batches_of(set(links))] == [{(t, 3, 3) for t in links}]
    # No click since: only the sweep (due at once: the last one is older than a second) makes
    # the next flush report them again, with the same counts.
    start(replica, flush_seconds=0.5, SHORTENER_CLICKS_SWEEP_SECONDS="1")
    wait_until(lambda: len(batches_of(set(links))) >= 2, timeout=20, what="the sweep's flush")
    assert set(batches_of(set(links))[1].counts) == {(t, 3, 3) for t in links}
    assert "click counters swept: 5 marked dirty" in replica.reporter_log.read_text()
    assert replica.stop_reporter() == 0
