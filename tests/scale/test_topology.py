"""A deployment's topology (testkit/scale.py: three Kafka brokers, two masters behind HAProxy,
five replicas) under client load, one fault at a time, each printing its figures: operations
acknowledged, lost (always 0), and the time to recover.

Root only (network namespaces). Part of `make test` (about 90 s here); alone: `make test-scale`
(`pytest -m scale`).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import requests
from django.conf import settings

from testkit import wait_until
from testkit.scale import ScaleCluster

pytestmark = [
    pytest.mark.scale,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.timeout(600),
]

FIGURES: list[str] = []


@pytest.fixture(scope="module")
def cluster(test_data_dir):
    c = ScaleCluster(test_data_dir, f"{settings.SHORTENER_USER}s")
    try:
        started = time.monotonic()
        c.up()
        FIGURES.append(f"topology up in {time.monotonic() - started:.0f}s: 3 brokers, "
                       f"2 masters behind HAProxy, {len(c.replicas)} replicas")
        yield c
    finally:
        c.close()
        print("\n" + "\n".join(FIGURES))
        (test_data_dir / "scale-figures.txt").write_text("\n".join(FIGURES) + "\n")


@pytest.fixture
def report(capsys):
    def say(line: str) -> None:
        FIGURES.append(line)
        with capsys.disabled():
            print(f"\n  {line}", end="")
    return say


class CreateLoad:
    """Clients creating links through the balancer until stopped; every answer is kept."""

    def __init__(self, cluster: ScaleCluster, tag: str, threads: int = 4) -> None:
        self.cluster, self.tag = cluster, tag
        self.ok: dict[str, str] = {}  # tinyurl -> longurl, answered 200
        self.refused: dict[str, tuple[int, str]] = {}  # longurl -> (status, body)
        self.answers: list[tuple[float, int]] = []  # (when, status)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(n,)) for n in range(threads)]

    def _run(self, n: int) -> None:
        session = requests.Session()
        i = 0
        while not self._stop.is_set():
            longurl = f"https://scale.example/{self.tag}/{n}/{i}"
            i += 1
            try:
                r = session.put(f"{self.cluster.lb.url}/create", json={"longurl": longurl},
                                timeout=30)
                status, body = r.status_code, r.text
            except requests.RequestException as exc:
                status, body = 0, repr(exc)
            with self._lock:
                self.answers.append((time.monotonic(), status))
                if status == 200:
                    self.ok[r.json()["tinyurl"]] = longurl
                else:
                    self.refused[longurl] = (status, body)
        session.close()

    def __enter__(self) -> CreateLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def count(self) -> int:
        with self._lock:
            return len(self.answers)

    def statuses_after(self, when: float) -> list[int]:
        with self._lock:
            return [s for t, s in self.answers if t >= when]


def served_everywhere(cluster: ScaleCluster, links: dict[str, str], timeout: float = 120) -> None:
    for host in cluster.replicas:
        wait_until(lambda h=host: cluster.served(h, links) == len(links), timeout=timeout,
                   interval=1, what=f"{host.name} to serve all {len(links)} links")


def test_0_the_topics_have_three_copies_and_one_instance_of_each_job_works(cluster, report):
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    try:
        names = [f"{cluster.user}-{t}" for t in ("links", "clicks", "replicas")]
        for topic in admin.describe_topics(names):
            for p in topic["partitions"]:
                assert len(p["replica_nodes"]) == 3 and len(p["isr_nodes"]) == 3, topic
        for name in names[:2]:  # the links and clicks topics; statuses are acks=1 by design
            configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
            assert configs["topic"][name]["min.insync.replicas"]["value"] == "2", configs
    finally:
        admin.close()
    relay = wait_until(lambda: cluster.leading("outbox-relay"), timeout=30, what="a relay")
    clicks = wait_until(lambda: cluster.leading("consume-clicks"), timeout=30,
                        what="a consume_clicks")
    for job, host in (("outbox-relay", relay), ("consume-clicks", clicks)):
        other = cluster.m2 if host is cluster.m1 else cluster.m1
        what = "outbox" if job == "outbox-relay" else "clicks"
        wait_until(lambda o=other, j=job, w=what: f"standby for {j}" in o.log(w), timeout=30,
                   what=f"{other.name}'s {job} to wait")
    report(f"scale 0: links, clicks, replicas topics at 3 copies, all in sync (links and clicks "
           f"min.insync.replicas=2); relay on "
           f"{relay.name}, consume_clicks on {clicks.name}, standbys on the other")


def test_1_one_broker_killed_under_load(cluster, report):
    victim = cluster.links_leader()
    with CreateLoad(cluster, "one-broker") as load:
        wait_until(lambda: load.count() >= 50, timeout=60, what="creates before the kill")
        killed = time.monotonic()
        cluster.broker_kill(victim)
        # Creates go on: 100 answered 200 after the kill, the last 20 of them in a row.
        wait_until(lambda: load.statuses_after(killed).count(200) >= 100
                   and load.statuses_after(killed)[-20:] == [200] * 20, timeout=120,
                   what="creates to go on with a broker down")
    cluster.broker_start(victim)
    refused_at = [t - killed for t, s in load.answers if s != 200]
    # The requests in flight when the leader died wait for the new leader (fenced after
    # broker.session.timeout.ms, elected by the controllers) up to the publish bound (5 s):
    # those answer 503 with the retry message; the link is stored, the relay sends it, and the
    # same call again answers 200 with the same tinyurl.
    assert all(s == 503 and "retry shortly" in body for s, body in load.refused.values()), \
        list(load.refused.items())[:3]
    again = {}
    for longurl in load.refused:
        r = cluster.create(longurl)
        assert r.status_code == 200, r.text
        again[r.json()["tinyurl"]] = longurl
    served_everywhere(cluster, {**load.ok, **again})
    report(f"scale 1 (broker {victim.name}, the links leader, SIGKILLed under load): creates "
           f"{len(load.answers)}, {len(load.statuses_after(killed))} after the kill: "
           f"{len(load.ok)} answered 200, {len(load.refused)} answered 503 (in flight at the "
           f"kill, the last {max(refused_at, default=0):.1f}s after it), then 200 only; all "
           f"{len(load.ok)} acknowledged and the {len(again)} refused (created again, the same "
           f"tinyurl) served by {len(cluster.replicas)} replicas: lost 0")
    assert max(refused_at, default=0) < 30, refused_at
    wait_until(lambda: tcp_ready(cluster, victim), timeout=120, what=f"{victim.name} back")


def tcp_ready(cluster: ScaleCluster, broker) -> bool:
    from testkit.scale import tcp_open

    return tcp_open(broker.ip, 9092)


def isr_full(cluster: ScaleCluster) -> bool:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    try:
        topic = admin.describe_topics([f"{cluster.user}-links"])[0]
        return all(len(p["isr_nodes"]) == 3 for p in topic["partitions"])
    finally:
        admin.close()


def test_2_two_brokers_killed_creates_refuse_then_return(cluster, report):
    wait_until(lambda: isr_full(cluster), timeout=120, what="all three copies in sync")
    leader = cluster.links_leader()
    others = [b for b in cluster.brokers if b is not leader]
    with CreateLoad(cluster, "two-brokers") as load:
        wait_until(lambda: load.count() >= 50, timeout=60, what="creates before the kills")
        killed = time.monotonic()
        for broker in others:  # the leader stays, alone: below min.insync.replicas=2
            cluster.broker_kill(broker)
        wait_until(lambda: 503 in load.statuses_after(killed), timeout=60,
                   what="a 503 while two brokers are down")
        refused_at = time.monotonic()
        cluster.broker_start(others[0])
        back = time.monotonic()
        wait_until(lambda: load.statuses_after(back)[-10:] == [200] * 10
                   and len(load.statuses_after(back)) >= 10, timeout=180,
                   what="creates to answer 200 again with two brokers")
        recovered = time.monotonic() - back
    cluster.broker_start(others[1])
    statuses = {s for s, _ in load.refused.values()}
    assert statuses <= {503}, list(load.refused.items())[:3]
    body = next(iter(load.refused.values()))[1]
    assert "error" in body.lower() or "kafka" in body.lower(), body
    # Every acknowledged link is served; every refused one, created again, is too.
    again = {}
    for longurl in load.refused:
        r = cluster.create(longurl)
        assert r.status_code == 200, r.text
        again[r.json()["tinyurl"]] = longurl
    served_everywhere(cluster, {**load.ok, **again})
    report(f"scale 2 (two brokers SIGKILLed, one left): first 503 after "
           f"{refused_at - killed:.1f}s; creates {len(load.answers)}: {len(load.ok)} answered "
           f"200, {len(load.refused)} answered 503 ({body[:80]!r}); with one broker back, 200 "
           f"again after {recovered:.1f}s; all {len(load.ok)} acknowledged and the "
           f"{len(again)} refused (created again) served by every replica: lost 0")


def test_3_a_master_app_server_killed_the_balancer_routes_to_the_other(cluster, report):
    wait_until(lambda: isr_full(cluster), timeout=120, what="all three copies in sync")
    with CreateLoad(cluster, "master-killed") as load:
        wait_until(lambda: load.count() >= 50, timeout=60, what="creates before the kill")
        killed = time.monotonic()
        cluster.m1.stop("web", signal.SIGKILL)
        wait_until(lambda: len(load.statuses_after(killed)) >= 200, timeout=120,
                   what="creates after the kill")
    after = load.statuses_after(killed)
    cluster.m1.start("web")
    served_everywhere(cluster, load.ok)
    report(f"scale 3 (m1's web SIGKILLed under load): creates {len(load.answers)}, "
           f"{len(after)} after the kill; refused {len(load.refused)}; all {len(load.ok)} "
           f"acknowledged served by every replica: lost 0")
    assert not load.refused, list(load.refused.items())[:3]
    wait_until(lambda: requests.get(f"{cluster.m1.url}/readyz", timeout=2).ok, timeout=60,
               what="m1's web back")


def test_4_the_working_relay_and_consume_clicks_killed_the_standbys_take_over(cluster, report):
    relay_host = wait_until(lambda: cluster.leading("outbox-relay"), timeout=30, what="relay")
    clicks_host = wait_until(lambda: cluster.leading("consume-clicks"), timeout=30,
                             what="consume_clicks")
    known = cluster.create("https://scale.example/failover-clicks").json()["tinyurl"]
    served_everywhere(cluster, {known: "https://scale.example/failover-clicks"})
    before = cluster.settle_clicks()
    with CreateLoad(cluster, "jobs-killed") as load:
        wait_until(lambda: load.count() >= 50, timeout=60, what="creates before the kills")
        killed = time.monotonic()
        relay_host.stop("outbox", signal.SIGKILL)
        clicks_host.stop("clicks", signal.SIGKILL)
        new_relay = wait_until(lambda: cluster.leading("outbox-relay"), timeout=60,
                               what="a standby relay to lead")
        relay_after = time.monotonic() - killed
        new_clicks = wait_until(lambda: cluster.leading("consume-clicks"), timeout=60,
                                what="a standby consume_clicks to lead")
        clicks_after = time.monotonic() - killed
        wait_until(lambda: len(load.statuses_after(killed)) >= 100, timeout=120,
                   what="creates after the kills")
    assert not load.refused, list(load.refused.items())[:3]
    served_everywhere(cluster, load.ok)
    assert new_relay is not relay_host and new_clicks is not clicks_host
    # A link Kafka never acknowledged (its /create's host died before the ack): the new relay
    # sends it.
    cluster.sql("INSERT INTO links_link (tinyurl, longurl, longurl_sha256, created_at, "
                "state_version, clicks, bot_clicks, state_changed_at) VALUES "
                "('fAiLoV1', 'https://scale.example/pending', "
                "sha256(convert_to('https://scale.example/pending', 'UTF8')), "
                "now() - interval '1 hour', 1, 0, 0, now())")
    served_everywhere(cluster, {"fAiLoV1": "https://scale.example/pending"}, timeout=60)
    made = 0
    session = requests.Session()
    for host in cluster.replicas:
        for _ in range(20):
            made += session.get(f"{host.url}/{known}", allow_redirects=False,
                                timeout=5).status_code == 302
    recorded = cluster.settle_clicks(timeout=120) - before
    relay_host.start("outbox")
    clicks_host.start("clicks")
    report(f"scale 4 (the working relay on {relay_host.name} and consume_clicks on "
           f"{clicks_host.name} SIGKILLed): {new_relay.name}'s relay led after "
           f"{relay_after:.1f}s, {new_clicks.name}'s consume_clicks after {clicks_after:.1f}s; "
           f"creates meanwhile {len(load.answers)}, refused 0, all served everywhere; a pending "
           f"link sent by the new relay and served everywhere; clicks made {made}, recorded "
           f"{recorded}")
    assert recorded == made


def test_5_a_sixth_replica_joins_under_load_and_one_leaves(cluster, report):
    with CreateLoad(cluster, "joining") as load:
        wait_until(lambda: load.count() >= 50, timeout=60, what="creates before the join")
        r6 = cluster.replica_add("r6", 16)
        joined = time.monotonic()
        cluster.start_replica(r6)
        codes: list[int] = []

        def ready() -> bool:
            try:
                code = requests.get(f"{r6.url}/readyz", timeout=2).status_code
            except requests.RequestException:
                return False
            codes.append(code)
            return code == 200

        wait_until(ready, timeout=180, interval=0.2, what="r6 ready")
        ready_after = time.monotonic() - joined
        acknowledged = dict(load.ok)
    # Everything acknowledged before r6 said it was ready is served by it at once.
    missing = len(acknowledged) - cluster.served(r6, acknowledged)
    leaving = cluster.replicas[4]
    for what in ("web", "report", "links"):
        leaving.stop(what, signal.SIGTERM)
    cluster.replicas.remove(leaving)
    served_everywhere(cluster, load.ok)
    report(f"scale 5 (r6 joined under load): /readyz 503 {codes.count(503)} times, then 200 "
           f"after {ready_after:.1f}s; of the {len(acknowledged)} links acknowledged by then "
           f"it lacked {missing}; creates {len(load.answers)}, refused {len(load.refused)}; "
           f"{leaving.name} left (SIGTERM), the other {len(cluster.replicas)} serve all "
           f"{len(load.ok)}")
    assert missing == 0
    assert not load.refused, list(load.refused.items())[:3]


def test_6_the_working_masters_host_cut_off_the_other_takes_over(cluster, report):
    """A host that vanishes (its cable unplugged) does not close its lock's session: PostgreSQL
    ends it by TCP keepalives (runtime/leadership.py: about 11 s), then the other master's
    standby takes the lock. The cut-off holder finds its lock gone and exits non-zero (systemd
    would start it again, as a standby)."""
    host = wait_until(lambda: cluster.leading("outbox-relay"), timeout=30, what="a relay")
    other = cluster.m2 if host is cluster.m1 else cluster.m1
    jobs = [job for job in ("outbox-relay", "consume-clicks") if cluster.leading(job) is host]
    names = {"outbox-relay": "outbox", "consume-clicks": "clicks"}
    # Logs are appended across restarts: the other's earlier leads do not count.
    before = {job: other.log(names[job]).count(f"leading {job}") for job in jobs}
    load = CreateLoad(cluster, "host-cut").__enter__()
    wait_until(lambda: load.count() >= 50, timeout=60, what="creates before the cut")
    cut = time.monotonic()
    host.link(False)
    try:
        took = {}
        for job in jobs:
            # The other's own word (the cut-off one still believes it leads until its check
            # fails).
            wait_until(lambda j=job: other.log(names[j]).count(f"leading {j}") > before[j],
                       timeout=90, interval=0.2, what=f"{other.name} to lead {job}")
            took[job] = time.monotonic() - cut
        # The new holder works: a link Kafka never acknowledged is sent by its relay.
        cluster.sql("INSERT INTO links_link (tinyurl, longurl, longurl_sha256, created_at, "
                    "state_version, clicks, bot_clicks, state_changed_at) VALUES "
                    "('cUtOfF1', 'https://scale.example/cut-off', "
                    "sha256(convert_to('https://scale.example/cut-off', 'UTF8')), "
                    "now() - interval '1 hour', 1, 0, 0, now())")
        served_everywhere(cluster, {"cUtOfF1": "https://scale.example/cut-off"}, timeout=60)
        wait_until(lambda: len(load.statuses_after(cut)) >= 100, timeout=120,
                   what="creates after the cut")
    finally:
        load.__exit__(None, None, None)
        host.link(True)
    # Requests in flight to the cut-off master are retried on the other by the balancer
    # (after its 10 s server timeout): none refused, and each one acknowledged is served.
    assert not load.refused, list(load.refused.items())[:3]
    served_everywhere(cluster, load.ok)
    for job in jobs:
        what = names[job]
        wait_until(lambda w=what: host.procs[w].poll() is not None, timeout=60,
                   what=f"{host.name}'s {job} to stop after losing its lock")
        assert host.procs[what].returncode == 1, host.log(what)[-2000:]
        assert f"lost the lead of {job}" in host.log(what)
        standbys = host.log(what).count(f"standby for {job}")
        host.start(what)  # as systemd would: now a standby
        wait_until(lambda w=what, j=job, n=standbys: host.log(w).count(f"standby for {j}") > n,
                   timeout=60, what=f"{host.name}'s {job} to wait as a standby")
    report(f"scale 6 ({host.name}'s cable unplugged while it ran {', '.join(jobs)}): "
           + ", ".join(f"{other.name} led {job} after {took[job]:.1f}s" for job in jobs)
           + f"; creates meanwhile {len(load.answers)} (through the balancer), refused 0, all "
             f"served everywhere; a pending link sent by the new relay and served everywhere; "
             f"{host.name}'s "
             f"instances exited 1 (lost the lead) and came back as standbys")
    assert all(t < 60 for t in took.values()), took
