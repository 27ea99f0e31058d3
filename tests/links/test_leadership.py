"""One working instance of each master background job across master hosts
(runtime/leadership.py), shown on real processes and the real PostgreSQL and Kafka: a standby
waits while another instance works, takes over when that one is killed (and says how fast),
a holder whose lock session ends stops and exits non-zero, consume_clicks fails over without
counting a click twice, and prune skips while another run prunes."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection, connections

from links.models import ClickCounter, Link
from links.selectors import longurl_digest
from links.services import tinyurl_generate
from runtime.leadership import Leadership, lock_key
from testkit import ROOT, ClicksConsumerProcess, link_records, wait_until
from testkit import test_database_url as database_url
from topics.clicks import click_report_encode, clicks_topic
from topics.links import links_topic, producer_get

RELAY_APP = "test_leader_relay"


def test_each_job_has_its_own_stable_key():
    keys = {job: lock_key(job) for job in ("outbox-relay", "consume-clicks", "prune")}
    assert len(set(keys.values())) == 3
    assert all(-(2 ** 63) <= k < 2 ** 63 for k in keys.values())  # a PostgreSQL bigint
    assert lock_key("outbox-relay") == keys["outbox-relay"]  # the same on every host


class Relay:
    """`republish_links --pending --follow` (the outbox relay and its audit), as a process."""

    def __init__(self, data_dir: Path, **env: str) -> None:
        self.log = data_dir / f"relay-{uuid.uuid4().hex[:8]}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "republish_links", "--pending", "--follow",
             "--interval", "0.2"], cwd=ROOT,
            env={**os.environ, "SHORTENER_ROLE": "master",
                 "SHORTENER_USER": settings.SHORTENER_USER,
                 "DATABASE_URL": database_url(RELAY_APP), **env},
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def sessions(application_name: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                       "AND datname = current_database()", [application_name])
        return cursor.fetchone()[0]


@pytest.fixture
def relays(transactional_db, test_data_dir, kafka_topics):
    started: list[Relay] = []

    def start(**env: str) -> Relay:
        started.append(Relay(test_data_dir, **env))
        return started[-1]

    yield start
    for relay in started:
        relay.close()
    wait_until(lambda: sessions(RELAY_APP) == 0, timeout=10, what="the relays' sessions")


def pending_link(longurl: str) -> Link:
    """A link Kafka has not acknowledged, old enough for the relay (not left to its /create)."""
    return Link.objects.create(tinyurl=tinyurl_generate(), longurl=longurl,
                               longurl_sha256=longurl_digest(longurl),
                               created_at=datetime.now(timezone.utc) - timedelta(hours=1))


def published(link: Link) -> bool:
    return (Link.objects.get(pk=link.pk).published_at is not None
            and any(r is not None for r in link_records(links_topic(), link.tinyurl)))


def holder_pid(job: str) -> int | None:
    key = lock_key(job)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND "
                       "classid = %s AND objid = %s AND objsubid = 1 AND database = "
                       "(SELECT oid FROM pg_database WHERE datname = current_database())",
                       [(key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF])
        row = cursor.fetchone()
    return row[0] if row else None


@pytest.mark.slow
def test_the_outbox_relay_works_on_one_host_and_the_standby_takes_over_when_it_is_killed(
        relays):
    first = relays()
    wait_until(lambda: "leading outbox-relay" in first.output(), timeout=30,
               what="the first relay to take the lead")
    second = relays()
    wait_until(lambda: "standby for outbox-relay" in second.output(), timeout=30,
               what="the second relay to wait as a standby")

    before = pending_link("https://example.com/leader/before")
    wait_until(lambda: published(before), timeout=30, what="the working relay to send a link")
    assert "republish: 1 sent" in first.output()
    assert "sent" not in second.output()  # the standby did nothing
    assert second.proc.poll() is None

    first.proc.kill()
    killed = time.monotonic()
    wait_until(lambda: "leading outbox-relay" in second.output(), timeout=30,
               what="the standby to take the lead")
    takeover = time.monotonic() - killed
    print(f"outbox relay takeover after a SIGKILL: {takeover:.2f}s "
          f"(retry interval {settings.SHORTENER_LEADER_RETRY_SECONDS}s)")
    after = pending_link("https://example.com/leader/after")
    wait_until(lambda: published(after), timeout=30, what="the new holder to send a link")
    # The standby tries every SHORTENER_LEADER_RETRY_SECONDS and the killed holder's session
    # ends as its socket closes: a takeover within a few intervals, however loaded the machine.
    assert takeover < 10 * settings.SHORTENER_LEADER_RETRY_SECONDS + 5, takeover
    second.proc.send_signal(signal.SIGTERM)
    assert second.proc.wait(30) == 0, second.output()[-2000:]


@pytest.mark.slow
def test_a_holder_whose_lock_session_ends_stops_and_the_standby_takes_over(relays):
    first = relays()
    wait_until(lambda: "leading outbox-relay" in first.output(), timeout=30,
               what="the first relay to take the lead")
    second = relays()
    wait_until(lambda: "standby for outbox-relay" in second.output(), timeout=30,
               what="the second relay to wait as a standby")
    pid = holder_pid("outbox-relay")
    assert pid is not None
    with connection.cursor() as cursor:  # an administrator's pg_terminate_backend, a restart
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    # It may no longer be the only one working: it stops and exits non-zero (systemd restarts it).
    assert first.proc.wait(60) == 1, first.output()[-2000:]
    assert "lost the lead of outbox-relay" in first.output()
    wait_until(lambda: "leading outbox-relay" in second.output(), timeout=30,
               what="the standby to take the lead")
    link = pending_link("https://example.com/leader/after-loss")
    wait_until(lambda: published(link), timeout=30, what="the new holder to send a link")


def report(tinyurl: str, node: str, incarnation: str, count: int) -> None:
    key, value = click_report_encode(tinyurl=tinyurl, node=node, incarnation=incarnation,
                                     count=count, reported_at=datetime.now(timezone.utc))
    producer_get().send(clicks_topic(), key=key, value=value).get(timeout=10)


@pytest.mark.slow
def test_consume_clicks_fails_over_to_the_standby_and_counts_each_click_once(
        clicks_consumer, test_data_dir):
    standby = ClicksConsumerProcess(test_data_dir)
    standby.start()
    try:
        wait_until(lambda: "standby for consume-clicks" in standby.output(), timeout=30,
                   what="the second consume_clicks to wait as a standby")
        link = Link.objects.create(tinyurl=tinyurl_generate(),
                                   longurl="https://example.com/leader/clicks",
                                   longurl_sha256=longurl_digest(
                                       "https://example.com/leader/clicks"))
        report(link.tinyurl, "10.0.0.2", "i1", 100)
        wait_until(lambda: Link.objects.get(pk=link.pk).clicks == 100, timeout=30,
                   what="the working consume_clicks to apply a report")

        clicks_consumer.stop(signal.SIGKILL)
        wait_until(lambda: "leading consume-clicks" in standby.output(), timeout=30,
                   what="the standby to take the lead")
        # The new holder reads on from the position in PostgreSQL: the report already applied
        # is not counted again, a replayed one neither, the next ones are.
        report(link.tinyurl, "10.0.0.2", "i1", 100)
        report(link.tinyurl, "10.0.0.2", "i1", 150)
        report(link.tinyurl, "10.0.0.3", "i2", 40)
        wait_until(lambda: Link.objects.get(pk=link.pk).clicks == 190, timeout=30,
                   what="the new holder to apply the reports")
        assert sorted(ClickCounter.objects.filter(link=link).values_list("incarnation",
                                                                         "count")) == [
            ("i1", 150), ("i2", 40)]
    finally:
        if standby.alive():
            standby.stop(signal.SIGTERM)


@pytest.mark.slow
def test_prune_skips_while_another_master_host_prunes(clicks_consumer):
    other = Leadership("prune")
    assert other.try_once()  # another host's prune, running
    try:
        out = io.StringIO()
        call_command("prune", "--catch-up-seconds", "0.1", stdout=out)
        assert out.getvalue().strip() == "skipped: another master host is pruning"
    finally:
        other.release()
    out = io.StringIO()
    # Once the lock is free it prunes (consume_clicks runs: the catch-up it waits for comes).
    call_command("prune", "--catch-up-seconds", "60", stdout=out)
    assert out.getvalue().startswith("buckets:"), out.getvalue()
    assert holder_pid("prune") is None  # released at its end


class BlackholeProxy:
    """A TCP proxy to PostgreSQL that can turn into a black hole: the server's side closed (so
    PostgreSQL ends the session and frees its locks), the client's kept open and never answered,
    as a proxy or tunnel whose upstream died may do."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.holed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.pairs.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                return
            if not data:
                return
            if self.holed.is_set():
                continue  # swallowed: the client's bytes go nowhere, nothing comes back
            try:
                sink.sendall(data)
            except OSError:
                return

    def blackhole(self) -> None:
        self.holed.set()
        for _, upstream in self.pairs:
            try:  # shut down first: close() alone waits for the pump blocked on it
                upstream.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            upstream.close()

    def close(self) -> None:
        self.listener.close()
        for client, upstream in self.pairs:
            client.close()
            upstream.close()


def test_a_holder_whose_session_stops_answering_stops_within_its_deadline(transactional_db,
                                                                          monkeypatch):
    """Found by a tester: the check waited for ever on a session whose server was gone behind a
    proxy, and the old holder worked on beside the new one. Every wait on the lock's session
    now has a deadline of this side's (the larger of 5 s and three checks)."""
    db = connections["default"].settings_dict
    proxy = BlackholeProxy(db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432))
    real = connections.create_connection

    def through_proxy(alias):
        wrapper = real(alias)
        wrapper.settings_dict = {**wrapper.settings_dict, "HOST": "127.0.0.1",
                                 "PORT": str(proxy.port)}
        return wrapper

    holder = Leadership("test-blackhole", check_seconds=0.2)
    other = Leadership("test-blackhole")
    stop = threading.Event()
    try:
        with monkeypatch.context() as patch:
            patch.setattr(connections, "create_connection", through_proxy)
            assert holder.acquire(stop)
        holder.watch(stop)
        assert not other.try_once()
        proxy.blackhole()
        holed = time.monotonic()
        wait_until(stop.is_set, timeout=30, what="the old holder to stop")
        stopped = time.monotonic() - holed
        wait_until(other.try_once, timeout=10, what="PostgreSQL to free the lock")
        assert holder.lost and ("within" in holder.lost or "failed" in holder.lost), holder.lost
        assert stopped < holder.deadline + 3 * holder.check_seconds + 2, stopped
        released = time.monotonic()
        holder.release()  # returns: nothing waits on the dead session
        assert time.monotonic() - released < holder.deadline + 2
    finally:
        stop.set()
        other.release()
        holder.release()
        proxy.close()


def test_libpq_keepalive_parameters_in_database_url_are_kept(transactional_db):
    """Found by a tester: DATABASE_URL's own keepalives_idle made every leader job crash
    (psycopg2.connect got it twice)."""
    options = connections.settings["default"].setdefault("OPTIONS", {})
    options["keepalives_idle"] = 30
    try:
        leadership = Leadership("test-keepalive-options")
        assert leadership.try_once()
        leadership.release()
    finally:
        options.pop("keepalives_idle")


def test_prune_stops_at_the_first_step_after_losing_its_lock(transactional_db):
    """Found by a tester: a prune whose lock session ended went on, beside the next run that
    took the lock. Each step now asks first."""
    from links import pruning

    report = pruning.prune(catch_up_seconds=0.1, still_leading=lambda: False)
    assert report.errors and all("lost prune's lock" in e for e in report.errors), report.errors
    assert report.bucket_rows_rolled == 0 and report.incarnations_ended == []


@pytest.mark.slow
def test_a_stopped_holder_is_cut_off_and_the_standby_takes_over(relays):
    """Found by a tester: a holder stopped (SIGSTOP) or hung keeps its session alive (its kernel
    answers the keepalives) and blocked the takeover for ever. A standby now ends the session
    of a holder whose last check is older than SHORTENER_LEADER_STALE_SECONDS."""
    first = relays(SHORTENER_LEADER_STALE_SECONDS="7")
    wait_until(lambda: "leading outbox-relay" in first.output(), timeout=30,
               what="the first relay to take the lead")
    second = relays(SHORTENER_LEADER_STALE_SECONDS="7")
    wait_until(lambda: "standby for outbox-relay" in second.output(), timeout=30,
               what="the second relay to wait as a standby")
    first.proc.send_signal(signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        wait_until(lambda: "leading outbox-relay" in second.output(), timeout=60,
                   what="the standby to cut off the stopped holder and lead")
        took = time.monotonic() - stopped
        assert "has not checked its lock" in second.output()
        link = pending_link("https://example.com/leader/after-stop")
        wait_until(lambda: published(link), timeout=30, what="the new holder to send a link")
    finally:
        first.proc.send_signal(signal.SIGCONT)
    # Woken, the old holder finds its session gone and exits non-zero.
    assert first.proc.wait(60) == 1, first.output()[-2000:]
    assert "lost the lead of outbox-relay" in first.output()
    print(f"stopped holder cut off after {took:.1f}s (stale bound 7 s)")
