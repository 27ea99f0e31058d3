"""A deployment's topology on one machine (issue "Beyond one machine"), in network namespaces:

    bridge <id>br  <net>.1/24                 - PostgreSQL listens here (one, shared)
      |- <id>lb   <net>.5   HAProxy :8000 in front of both masters' web (health-checked)
      |- <id>m1   <net>.10  master:  gunicorn :8000, consume_clicks, outbox relay (+ audit)
      |- <id>m2   <net>.9   master:  the same (the background jobs wait as standbys:
      |                              runtime/leadership.py)
      |- <id>k1-3 <net>.21-23  Kafka: three combined broker+controller nodes (KRaft quorum of 3)
      |- <id>r1-5 <net>.11-15  replicas: redis :26379, consume_links, report_clicks, gunicorn
      `- <id>r6   <net>.16  a replica that joins later (ScaleCluster.replica_add)

The project's topics get replication factor 3 (KAFKA_REPLICATION_FACTOR), which makes them
min.insync.replicas=2 (topics/specs.py): an acknowledged record is on two brokers at least.
Built on testkit/netns.py (the network, PostgreSQL, the replicas' processes); needs root.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import requests

from testkit import ROOT, wait_until
from testkit.netns import Host, NetnsCluster

KAFKA_LIBS = ROOT / ".local" / "kafka" / "libs"


def tcp_open(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=0.3):
            return True
    except OSError:
        return False


class ScaleCluster(NetnsCluster):
    def __init__(self, data_dir: Path, user: str, replicas: int = 5) -> None:
        super().__init__(data_dir, user)
        self.lb = Host(self, "lb", 5)
        self.m1 = self.master = Host(self, "m1", 10)
        self.m2 = Host(self, "m2", 9)
        self.masters = [self.m1, self.m2]
        self.brokers = [Host(self, f"k{i}", 20 + i) for i in (1, 2, 3)]
        self.replicas = [Host(self, f"r{i}", 10 + i) for i in range(1, replicas + 1)]
        self.r1, self.r2 = self.replicas[0], self.replicas[1]
        self.hosts = [self.lb, *self.masters, *self.brokers, *self.replicas]
        self.kafka_cluster_id = ""

    def _addresses_set(self, subnet) -> None:
        super()._addresses_set(subnet)
        self.bootstrap = ",".join(f"{k.ip}:9092" for k in self.brokers)
        self.env.update({"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
                         "KAFKA_REPLICATION_FACTOR": "3",
                         # Every host that may ever join, so that a new replica needs no
                         # restart of the others.
                         "DJANGO_ALLOWED_HOSTS": ",".join(str(subnet[n]) for n in range(2, 40))})

    # --- Kafka: three brokers --------------------------------------------------------------

    def _java(self, broker: Host) -> list[str]:
        logs = self.dir / f"{broker.name}-kafka-logs"
        return ["java", "-Xms128m", "-Xmx384m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={ROOT / 'stack' / 'kafka' / 'log4j2.properties'}",
                f"-Dkafka.logs.dir={logs}", "-cp", f"{KAFKA_LIBS}/*"]

    def _broker_config(self, number: int, broker: Host) -> Path:
        voters = ",".join(f"{i}@{k.ip}:9093" for i, k in enumerate(self.brokers, 1))
        data = self.dir / f"{broker.name}-kafka-data"
        conf = self.dir / f"{broker.name}-server.properties"
        conf.write_text(f"""\
# testkit/scale.py: one of three combined broker+controller nodes (a static KRaft quorum).
process.roles=broker,controller
node.id={number}
controller.quorum.voters={voters}
listeners=PLAINTEXT://{broker.ip}:9092,CONTROLLER://{broker.ip}:9093
advertised.listeners=PLAINTEXT://{broker.ip}:9092
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data}
# Kafka's internal topics as the project's: three copies, two in sync for a write.
offsets.topic.replication.factor=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
unclean.leader.election.enable=false
# A broker that stops heartbeating is fenced (its partitions get new leaders) after 3 s, not
# the default 9 s: a killed broker's partitions would refuse writes for longer than /create's
# 5 s publish wait. The price: a broker paused for 3 s (a long GC) is fenced too and rejoins.
broker.session.timeout.ms=3000
broker.heartbeat.interval.ms=500
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.cleaner.enable=true
""")
        return conf

    def kafka(self, action: str) -> None:
        if action == "start":  # the brokers not running (a chaos run's heal_all calls it)
            for broker in self.brokers:
                proc = broker.procs.get("kafka")
                if proc is None or proc.poll() is not None:
                    self.broker_start(broker)
            for broker in self.brokers:
                wait_until(lambda b=broker: tcp_open(b.ip, 9092), timeout=120,
                           what=f"Kafka on {broker.name}")
        elif action == "stop":
            for broker in self.brokers:
                broker.stop("kafka", signal.SIGKILL)

    def broker_start(self, broker: Host) -> None:
        number = self.brokers.index(broker) + 1
        conf = self._broker_config(number, broker)
        if not self.kafka_cluster_id:
            self.kafka_cluster_id = subprocess.run(
                [*self._java(broker), "kafka.tools.StorageTool", "random-uuid"], check=True,
                capture_output=True, text=True).stdout.strip()
        if not (self.dir / f"{broker.name}-kafka-data" / "meta.properties").exists():
            subprocess.run([*self._java(broker), "kafka.tools.StorageTool", "format", "-t",
                            self.kafka_cluster_id, "-c", str(conf), "--ignore-formatted"],
                           check=True, capture_output=True)
        broker.start("kafka", [*self._java(broker), "kafka.Kafka", str(conf)])

    def broker_kill(self, broker: Host) -> None:
        broker.stop("kafka", signal.SIGKILL)

    def links_leader(self) -> Host:
        """The broker that leads the links topic's partition 0."""
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            topic = admin.describe_topics([f"{self.user}-links"])[0]
            leader = next(p["leader_id"] for p in topic["partitions"]
                          if p["partition_index"] == 0)
        finally:
            admin.close()
        return self.brokers[leader - 1]

    # --- masters behind HAProxy ------------------------------------------------------------

    def start_master(self) -> None:
        for host in self.masters:
            self.master_start(host)
        self.lb_start()

    def master_start(self, host: Host) -> None:
        env = {"SHORTENER_ROLE": "master", "GUNICORN_BIND": f"{host.ip}:8000",
               "SHORTENER_CREATE_RATE_LIMIT": ""}
        host.start("web", [sys.executable, "-m", "gunicorn", "shortener_project.wsgi"], env)
        host.start("clicks", [sys.executable, "manage.py", "consume_clicks"], env)
        host.start("outbox", [sys.executable, "manage.py", "republish_links", "--pending",
                              "--follow", "--interval", "1"], env)

    def lb_start(self) -> None:
        servers = "\n".join(f"    server {m.name} {m.ip}:8000 check" for m in self.masters)
        conf = self.dir / "haproxy.cfg"
        conf.write_text(f"""\
# testkit/scale.py: the load balancer in front of the master app servers.
global
    maxconn 2000
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    # /create answers within its publish bound (5 s) plus PostgreSQL's; a master silent for
    # 10 s is gone (a cut cable), and its request is retried on the other (retry-on below).
    timeout server 10s
    # A master that died with a request in hand: the request goes to the other (every retry
    # to another server). /create is idempotent (the same longurl gets the same tinyurl), so a
    # retry never makes two links. A retry needs the whole request kept: bodies are buffered.
    retries 3
    option redispatch 1
    option http-buffer-request
    retry-on conn-failure empty-response junk-response response-timeout
frontend masters_in
    bind {self.lb.ip}:8000
    default_backend masters
backend masters
    balance roundrobin
    option httpchk GET /healthz
    http-check expect status 200
    default-server inter 500ms fall 2 rise 2
{servers}
""")
        self.lb.start("haproxy", ["haproxy", "-db", "-f", str(conf)])
        wait_until(lambda: tcp_open(self.lb.ip, 8000), timeout=30, what="HAProxy")

    def create(self, longurl: str) -> requests.Response:
        return requests.put(f"{self.lb.url}/create", json={"longurl": longurl}, timeout=30)

    def leading(self, job: str) -> Host | None:
        """The master host whose running instance of `job` last said it leads (its log is
        appended across restarts: a later "standby" or "lost the lead" line outranks it)."""
        what = {"outbox-relay": "outbox", "consume-clicks": "clicks"}[job]
        for host in self.masters:
            proc = host.procs.get(what)
            if proc is None or proc.poll() is not None:
                continue
            text = host.log(what)
            lead = text.rfind(f"leading {job}")
            if lead >= 0 and lead > max(text.rfind(f"standby for {job}"),
                                        text.rfind(f"lost the lead of {job}")):
                return host
        return None

    # --- replicas joining and leaving -------------------------------------------------------

    def replica_add(self, name: str, number: int) -> Host:
        """A new host on the network, not started (start_replica starts it)."""
        host = Host(self, name, number)
        host.ip = str(self.subnet[number])
        self.hosts.append(host)
        self.replicas.append(host)
        self.host_plug(host)
        return host

    def up(self) -> None:
        self.build()
        self.postgres("start")
        self.postgres("createdb", self.database)
        self.kafka("start")
        self.manage(self.m1, "migrate", "--no-input")
        self.manage(self.m1, "kafka_topics")
        self.start_master()
        for host in self.replicas:
            self.start_replica(host)
        for host in [*self.masters, *self.replicas]:
            wait_until(lambda h=host: requests.get(f"{h.url}/readyz", timeout=2).ok,
                       timeout=120, what=f"{host.name} ready")

    def clicks_topic_end(self) -> int:
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap)
        try:
            tp = TopicPartition(f"{self.user}-clicks", 0)
            return consumer.end_offsets([tp])[tp]
        finally:
            consumer.close()
