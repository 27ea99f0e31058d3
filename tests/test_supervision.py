"""No thread dies silently (runtime/supervision.py), shown on real processes: the
outbox relay exits non-zero when its links audit thread dies (systemd's Restart=on-failure then
starts it again), and report_clicks starts its status thread again while it keeps running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

from django.conf import settings

import testkit as support
from testkit import ROOT, sample, scrape, topic_read, wait_until
from topics.replicas import replicas_topic


def test_the_outbox_exits_non_zero_when_its_audit_thread_dies(transactional_db, test_data_dir):
    """The audit thread dies at its start (here: a Kafka address it cannot parse, a ValueError
    that is no Kafka error); the relay must not carry on without it."""
    log = test_data_dir / f"outbox-{uuid.uuid4().hex[:6]}.log"
    env = {**os.environ, "SHORTENER_ROLE": "master",
           "SHORTENER_USER": settings.SHORTENER_USER,
           "DATABASE_URL": support.test_database_url("test_outbox"),
           "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:notaport"}
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "republish_links", "--pending", "--follow",
         "--interval", "0.2"], cwd=ROOT, env=env, stdout=open(log, "ab"),
        stderr=subprocess.STDOUT)
    try:
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log.read_text(errors="replace")
    assert code == 1, output[-2000:]
    assert "CRITICAL" in output and "thread links-audit died: ValueError" in output
    assert "Traceback" in output
    assert "the links audit thread died" in output  # the command's own error line


def test_report_clicks_restarts_its_status_thread_and_keeps_running(replica_factory):
    replica = replica_factory(start=False)
    replica.env["SHORTENER_STATUS_SECONDS"] = "0.5"
    # A corrupt value where the status reads consume_links' position: collecting the status
    # raises ValueError, which kills the status thread on every start until it is repaired.
    positions = f"{settings.SHORTENER_USER}:links:positions"
    replica.redis.hset(positions, "0", "not-a-number")
    replica.start_reporter()
    metrics = f"http://127.0.0.1:{replica.reporter_metrics_port}/metrics"

    def deaths() -> float:
        return sample(scrape(metrics), "shortener_thread_deaths_total", thread="replica-status")

    wait_until(lambda: deaths() >= 2, timeout=30, what="the status thread dying twice")
    output = replica.reporter_log.read_text(errors="replace")
    assert "thread replica-status died: ValueError" in output
    assert "thread replica-status: starting it again in 1 s" in output
    assert "thread replica-status: starting it again in 2 s" in output
    assert sample(scrape(metrics), "shortener_thread_alive", thread="replica-status") == 0
    assert replica.reporter.poll() is None, "report_clicks keeps running"

    replica.redis.hset(positions, "0", "0")
    wait_until(lambda: sample(scrape(metrics), "shortener_thread_alive",
                              thread="replica-status") == 1, timeout=30,
               what="the status thread running again")
    wait_until(lambda: any(r.key == replica.name.encode()
                           for r in topic_read(replicas_topic())),
               timeout=30, what="a status published by the restarted thread")
    assert replica.stop_reporter(signal.SIGTERM) == 0


