"""consume_links and its worker process under kills, stops, signals and bad records: every link ends up served as the master holds it, no process is left behind, readiness stays honest."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from testkit import link_produce, scrape, tinyurl_new, wait_until
from tests.conftest import links_topic_end


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True).stdout
    return [int(p) for p in out.split()]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def worker_of(replica) -> int:
    return wait_until(lambda: (c := children(replica.consumer.pid)) and c[0], timeout=30,
                      interval=0.005, what="the consume_links worker")


def serves_all(replica, links) -> bool:
    return replica.has_all(links)


def test_kill_9_of_consume_links_mid_catch_up_leaves_no_worker_behind(make_links, replica_factory):
    links = make_links(20_000)
    end = links_topic_end()
    replica = replica_factory(start=False)
    replica.start_consumer(SHORTENER_LINKS_BATCH="200")
    worker = worker_of(replica)
    wait_until(lambda: (p := replica.position()) is not None and p > 0, timeout=30,
               interval=0.005, what="the first batch")
    replica.stop_consumer(signal.SIGKILL)
    wait_until(lambda: not alive(worker), timeout=15, what="the orphaned worker to exit")
    replica.start_consumer()
    replica.start_web()
    wait_until(lambda: replica.position() == end, timeout=60, what="catch-up after SIGKILL")
    assert replica.has_all(links)
    wait_until(lambda: replica.readyz()[0] == 200, timeout=30, what="ready")


def test_kill_9_of_the_worker_mid_catch_up_and_while_following(master, make_links, replica_factory):
    links = make_links(20_000)
    end = links_topic_end()
    replica = replica_factory(start=False)
    replica.start_consumer(SHORTENER_LINKS_BATCH="200")
    replica.start_web()
    worker = worker_of(replica)
    wait_until(lambda: (p := replica.position()) is not None and p > 0, timeout=30,
               interval=0.005, what="the first batch")
    os.kill(worker, signal.SIGKILL)
    wait_until(lambda: replica.position() == end, timeout=60, what="catch-up after the kill")
    assert replica.consumer_alive()
    assert replica.has_all(links)
    wait_until(lambda: replica.readyz()[0] == 200, timeout=30, what="ready")
    # while following: kill the (new) worker, then create a link
    worker2 = worker_of(replica)
    assert worker2 != worker
    os.kill(worker2, signal.SIGKILL)
    tinyurl = master.create("https://example.com/after-worker-kill")
    wait_until(lambda: replica.target(tinyurl) == "https://example.com/after-worker-kill",
               timeout=30, what="the link after the worker's kill")
    assert replica.get(tinyurl).status_code == 302
    # no zombie left
    assert all(alive(c) for c in children(replica.consumer.pid))


def test_sigterm_while_the_worker_is_stopped_exits(make_links, replica_factory):
    links = make_links(20_000)
    replica = replica_factory(start=False)
    replica.start_consumer(SHORTENER_LINKS_BATCH="200")
    worker = worker_of(replica)
    wait_until(lambda: (p := replica.position()) is not None and p > 0, timeout=30,
               interval=0.005, what="the first batch")
    os.kill(worker, signal.SIGSTOP)
    try:
        wait_until(lambda: open(f"/proc/{worker}/stat").read().split(") ")[1][0] == "T",
                   timeout=10, what="the worker stopped")
        replica.consumer.send_signal(signal.SIGTERM)
        try:
            rc = replica.consumer.wait(timeout=20)
        except subprocess.TimeoutExpired:
            rc = None
        assert rc == 0, "consume_links did not stop within 20 s of SIGTERM (worker stopped)"
        # The stuck worker was killed on the way out (LinksWrites.stop_grace_seconds), not left.
        wait_until(lambda: not alive(worker), timeout=10, what="the stopped worker gone")
    finally:
        try:
            os.kill(worker, signal.SIGCONT)
        except ProcessLookupError:
            pass


def test_sigstop_of_the_worker_makes_the_replica_unready_and_sigcont_recovers(make_links,
                                                                               replica_factory):
    links = make_links(2_000)
    replica = replica_factory()
    wait_until(lambda: replica.readyz()[0] == 200, timeout=60, what="ready")
    worker = worker_of(replica)
    os.kill(worker, signal.SIGSTOP)
    try:
        more = make_links(50)
        wait_until(lambda: replica.readyz()[0] == 503, timeout=40,
                   what="503 while the worker is stopped")
    finally:
        os.kill(worker, signal.SIGCONT)
    wait_until(lambda: replica.has_all(more) and replica.readyz()[0] == 200, timeout=40,
               what="recovery")


def _rejected_metric(replica, topic) -> float:
    metrics = scrape(f"http://127.0.0.1:{replica.consumer_metrics_port}/metrics")
    return sum(value for (name, labels), value in metrics.items()
               if name == "shortener_records_rejected_total" and dict(labels)["topic"] == topic)


def _valid(code: str, **over) -> bytes:
    value = {"schema": 2, "tinyurl": code, "version": 1, "state": "active",
             "longurl": f"https://example.com/{code}", "expires_at": None,
             "created_at": "2026-01-01T00:00:00Z"}
    value.update(over)
    return json.dumps(value).encode()


@pytest.mark.parametrize("phase", ["following", "catch-up"])
def test_malformed_records_are_logged_counted_and_skipped(master, make_links, replica_factory,
                                                           phase):
    from topics.links import links_topic, producer_get

    t = [tinyurl_new() for _ in range(30)]
    poison = [
        (t[0].encode(), b"{"),
        (t[1].encode(), b"null"),
        (t[2].encode(), b'"a string"'),
        (t[3].encode(), b"[" * 200_000 + b"]" * 200_000),
        (t[4].encode(), _valid(t[4], version="1")),
        (t[5].encode(), _valid(t[5], version=2 ** 64)),
        (t[6].encode(), _valid(t[6], version=-1)),
        (t[7].encode(), _valid(t[7], version=1.5)),
        (t[8].encode(), _valid(t[8], version=None)),
        (t[9].encode(), _valid(t[9], longurl=None)),
        (t[10].encode(), _valid(t[10], longurl=12345)),
        (t[11].encode(), _valid(t[11], longurl="https://example.com/" + "a" * 900_000)),
        (t[12].encode(), _valid(t[12], expires_at=2 ** 63)),
        (t[13].encode(), _valid(t[13], expires_at="tomorrow")),
        (t[14].encode(), _valid(t[14], created_at=None)),
        (t[15].encode(), _valid(t[15], state="deleted")),
        (t[16].encode(), _valid(t[16], state=None)),
        (t[17].encode(), _valid(t[17], tinyurl=t[18])),
        (b"\xff\xfe\xfd\xfc\xfb\xfa\xf9", _valid("abcdefg")),
        (t[19].encode(), b"\xff\xfe" + _valid(t[19])),
        (t[20].encode(), _valid(t[20], schema=None)),
        (t[21].encode(), _valid(t[21], schema="2")),
        (t[22].encode(), json.dumps({"schema": 2}).encode()),
        (t[23].encode(), _valid(t[23], state="disabled")),  # a disabled link with a longurl
        (t[24].encode(), _valid(t[24], longurl="https://example.com/\x00")),
        (t[25].encode(), _valid(t[25], version=2 ** 53)),
        (t[26].encode(), _valid(t[26], expires_at=-5)),
        (t[27].encode(), b"\x00" * 900_000),
        (t[28].encode(), _valid(t[28], tinyurl=None)),
    ]
    if phase == "following":
        replica = replica_factory()
        wait_until(lambda: replica.readyz()[0] == 200, timeout=60, what="ready")
    producer = producer_get()
    for key, value in poison:
        producer.send(links_topic(), key=key, value=value).get(timeout=10)
    links = make_links(500)
    tinyurl = master.create("https://example.com/after-the-poison-" + t[29])
    if phase == "catch-up":
        replica = replica_factory()
    wait_until(lambda: replica.has_all(links) and replica.target(tinyurl) is not None,
               timeout=60, what="the links after the poison")
    wait_until(lambda: replica.readyz()[0] == 200, timeout=60, what="ready")
    assert replica.consumer_alive()
    for key, _ in poison:
        try:
            code = key.decode()
        except UnicodeDecodeError:
            continue
        assert replica.get(code).status_code == 404, (code, replica.link(code))
    # (The log lines follow the batch's reply, which may be read a poll after the links serve.)
    wait_until(lambda: replica.consumer_output().count("rejected record") >= len(poison),
               timeout=15, what="a log line for every rejected record")
    if phase == "following":
        status, body = replica.readyz()
        # Counted: every poison record once (the tombstone-free list above).
        wait_until(lambda: _rejected_metric(replica, links_topic()) >= len(poison), timeout=10,
                   what="the metric counting every rejected record")


def test_redis_wiped_and_a_link_taken_down_during_a_large_catch_up(master, make_links,
                                                                    replica_factory):
    from links.models import Link
    from links.services import link_update

    links = make_links(20_000)
    replica = replica_factory(start=False)
    replica.start_consumer(SHORTENER_LINKS_BATCH="200")
    replica.start_web()
    wait_until(lambda: (p := replica.position()) is not None and p > 2000, timeout=60,
               interval=0.005, what="part of the catch-up")
    replica.redis.flushall()
    down, changed = list(links)[:2], list(links)[-2:]
    for tinyurl in down:
        link_update(link=Link.objects.get(tinyurl=tinyurl), disabled=True)
    for tinyurl in changed:
        link_update(link=Link.objects.get(tinyurl=tinyurl),
                    longurl=f"https://example.com/changed/{tinyurl}")
    wait_until(lambda: (p := replica.position()) is not None and p > 1000, timeout=60,
               interval=0.005, what="part of the second catch-up")
    replica.restart_redis_empty()
    # never ready while the state is partial
    seen_ready_partial = []
    def done() -> bool:
        status, _ = replica.readyz()
        complete = (all(replica.target(t) is None for t in down)
                    and all(replica.target(t) == f"https://example.com/changed/{t}" for t in changed))
        if status == 200 and not complete:
            seen_ready_partial.append(True)
        return status == 200 and complete
    wait_until(done, timeout=120, what="ready with the current state")
    assert not seen_ready_partial
    rest = {t: u for t, u in links.items() if t not in down and t not in changed}
    assert replica.has_all(rest)
    for t in down:
        assert replica.get(t).status_code == 404
    assert replica.consumer_alive()
