"""topics/ keeps its promises: fewer than ten non-default settings per topic (the links topic:
ten with replication factor >= 2),
none that restates a default, every client built from its kind's base, the status producer
unable to create a topic (against a broker of the test's own that would create one), and
adding partitions sending a key elsewhere (why kafka_topics never adds any)."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.test import override_settings
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import KafkaError
from kafka.partitioner.default import DefaultPartitioner

from testkit import ROOT, free_port, port_open, wait_until
from topics.clicks import (
    clicks_consumer_make,
    clicks_consumer_settings,
    clicks_producer_make,
    clicks_producer_settings,
    clicks_topic,
)
from topics.clients import (
    CONSUMER_BASE,
    PRODUCER_BASE,
    admin_client,
)
from topics.links import (
    links_audit_consumer_make,
    links_audit_consumer_settings,
    links_consumer_make,
    links_consumer_settings,
    links_producer_settings,
    links_topic,
    producer_get,
    producer_reset,
)
from topics.provisioning import topic_client_settings, topic_specs
from topics.replicas import (
    links_end_reader_make,
    links_end_reader_settings,
    replicas_reader_make,
    replicas_reader_settings,
    replicas_topic,
    status_producer_make,
    status_producer_settings,
)
from topics.specs import KAFKA_TOPIC_DEFAULTS

# Where and who a client is, not how it behaves: not counted as settings.
IDENTITY = {"bootstrap_servers", "client_id", "group_id"}


def own_settings_per_topic() -> dict[str, tuple[dict, set, set]]:
    """{topic: (topic configs set, producers' own setting names, consumers' own names)}."""
    clients = topic_client_settings()
    out = {}
    for spec in topic_specs():
        producers = set().union(*(own.keys() for own in clients[spec.name]["producers"]))
        consumers = set().union(*(own.keys() for own in clients[spec.name]["consumers"]))
        out[spec.name] = (spec.configs, producers, consumers)
    return out


@pytest.mark.parametrize("replication_factor", [1, 3])
def test_every_topic_has_fewer_than_ten_settings_that_differ_from_the_defaults(
    replication_factor,
):
    """Per topic: its topic configs + its producer's + its consumers' settings beyond their
    kind's base. The bases (shared by every client of a kind) are counted on their own."""
    with override_settings(KAFKA_REPLICATION_FACTOR=replication_factor):
        counts = {topic: len(configs) + len(producers) + len(consumers)
                  for topic, (configs, producers, consumers) in own_settings_per_topic().items()}
    assert set(counts) == {links_topic(), clicks_topic(), replicas_topic()}
    # The assignment: "certainly fewer than ten per topic", on any cluster.
    assert all(count < 10 for count in counts.values()), counts
    assert len(PRODUCER_BASE) + len(CONSUMER_BASE) < 10


def test_no_setting_restates_a_default():
    """Topic configs against Kafka's defaults (KAFKA_TOPIC_DEFAULTS, checked against the broker
    below); client settings against kafka-python's own DEFAULT_CONFIG."""
    for replication_factor in (1, 2):
        with override_settings(KAFKA_REPLICATION_FACTOR=replication_factor):
            for spec in topic_specs():
                for key, value in spec.configs.items():
                    assert key in KAFKA_TOPIC_DEFAULTS, key  # its default is cited
                    assert KAFKA_TOPIC_DEFAULTS[key] != value, (spec.name, key)
                for key, value in spec.relied.items():
                    assert KAFKA_TOPIC_DEFAULTS[key] == value, (spec.name, key)
    for key, value in PRODUCER_BASE.items():
        assert KafkaProducer.DEFAULT_CONFIG[key] != value, key
    for key, value in CONSUMER_BASE.items():
        assert KafkaConsumer.DEFAULT_CONFIG[key] != value, key
    for topic, clients in topic_client_settings().items():
        for kind, defaults, base in (
                ("producers", KafkaProducer.DEFAULT_CONFIG, PRODUCER_BASE),
                ("consumers", KafkaConsumer.DEFAULT_CONFIG, CONSUMER_BASE)):
            for own in clients[kind]:
                assert not set(own) & IDENTITY
                for key, value in own.items():
                    assert defaults[key] != value, (topic, key)
                    assert base.get(key, defaults[key]) != value or key == "bootstrap_timeout_ms", \
                        (topic, key)  # stated once, in the base (the publish bound aside)


@pytest.mark.services
def test_the_cited_topic_defaults_are_the_brokers():
    """KAFKA_TOPIC_DEFAULTS (quoted from Kafka's documentation) is what the broker gives a
    topic created without configs."""
    topic = f"{settings.SHORTENER_USER}-defaults-{uuid.uuid4().hex[:6]}"
    admin = admin_client()
    try:
        admin.create_topics([NewTopic(topic, 1, 1)], wait_for_metadata=True)
        keys = list(KAFKA_TOPIC_DEFAULTS)
        found = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, keys)],
                                       config_filter="all")["topic"][topic]
        assert {key: found[key]["value"] for key in keys} == KAFKA_TOPIC_DEFAULTS
    finally:
        admin.delete_topics([topic])
        admin.close()


FACTORIES = {
    "links producer": (producer_get, PRODUCER_BASE, links_producer_settings),
    "clicks producer": (clicks_producer_make, PRODUCER_BASE, clicks_producer_settings),
    "status producer": (status_producer_make, PRODUCER_BASE, status_producer_settings),
    "links consumer": (links_consumer_make, CONSUMER_BASE, links_consumer_settings),
    "links audit consumer": (links_audit_consumer_make, CONSUMER_BASE,
                             links_audit_consumer_settings),
    "clicks consumer": (clicks_consumer_make, CONSUMER_BASE, clicks_consumer_settings),
    "links end reader": (links_end_reader_make, CONSUMER_BASE,
                         links_end_reader_settings),
    "replicas reader": (replicas_reader_make, CONSUMER_BASE, replicas_reader_settings),
}


@pytest.mark.services
@pytest.mark.parametrize("name", list(FACTORIES))
def test_every_client_is_built_from_its_base_and_its_own_settings(name):
    make, base, own = FACTORIES[name]
    client = make()
    try:
        for key, value in {**base, **own()}.items():
            assert client.config[key] == value, key
        assert client.config["allow_auto_create_topics"] is False
        if name in ("links producer", "clicks producer"):
            # The defaults relied on for durability, as the producer applies them.
            assert client.config["acks"] == -1
            assert client.config["enable_idempotence"] is True
    finally:
        if name == "links producer":
            producer_reset()  # the process's shared producer: closed and forgotten
        else:
            client.close()


@pytest.mark.services
def test_the_admin_clients_own_setting():
    admin = admin_client()
    try:
        assert admin.config["bootstrap_timeout_ms"] == 10_000
    finally:
        admin.close()


# --- the status producer cannot create a topic: a broker of this test's own that would ------


@pytest.fixture(scope="module")
def auto_creating_broker():
    """A one-node KRaft broker on free ports with auto.create.topics.enable=true (the shared
    broker has it off, so it could not tell a producer that may create topics from one that
    cannot). Runs from the same jars as the shared broker. Yields its bootstrap address."""
    libs = Path(os.environ.get("SHORTENER_DATA") or ROOT / ".local") / "kafka" / "libs"
    if not (libs / ".pom").exists():
        pytest.skip(f"no Kafka jars in {libs}")
    port, controller = free_port(), free_port()
    home = Path(tempfile.mkdtemp(prefix="kafka-autocreate-"))
    conf = home / "server.properties"
    conf.write_text("\n".join([
        "process.roles=broker,controller", "node.id=1",
        f"controller.quorum.bootstrap.servers=127.0.0.1:{controller}",
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        f"log.dirs={home / 'data'}", "offsets.topic.replication.factor=1",
        "transaction.state.log.replication.factor=1", "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "auto.create.topics.enable=true", ""]))
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    java = ["java", "-Xms128m", "-Xmx256m", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={ROOT / 'stack' / 'kafka' / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={home / 'logs'}", "-cp", f"{libs}/*"]
    subprocess.run([*java, "kafka.tools.StorageTool", "format", "-t", cluster_id,
                    "-c", str(conf), "--standalone"], check=True, capture_output=True,
                   timeout=90)
    with open(home / "stdout.log", "wb") as log:
        broker = subprocess.Popen([*java, "kafka.Kafka", str(conf)], stdout=log,
                                  stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: port_open(port), timeout=90, what="the test's own Kafka broker")
        yield f"127.0.0.1:{port}"
    finally:
        broker.terminate()
        try:
            broker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait()
        shutil.rmtree(home, ignore_errors=True)


def topics_of(bootstrap: str) -> set[str]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        return consumer.topics()
    finally:
        consumer.close()


@pytest.mark.services
def test_the_status_producer_cannot_create_the_replicas_topic(auto_creating_broker):
    """kafka-python 3.0.12 ignores allow_auto_create_topics=False by itself (see
    _auto_create_apply): without the fix the send below creates the topic."""
    with override_settings(KAFKA_BOOTSTRAP_SERVERS=[auto_creating_broker],
                           SHORTENER_USER=f"t{uuid.uuid4().hex[:8]}"):
        topic = replicas_topic()
        producer = status_producer_make()
        try:
            # The topic's metadata never comes: send() gives up after max_block_ms.
            with pytest.raises(KafkaError):
                producer.send(topic, key=b"node", value=b"{}").get(timeout=10)
        finally:
            producer.close(timeout=1)
        assert topic not in topics_of(auto_creating_broker)
        # Nor does a consumer asking for the topic's partitions (the admin's replicas page).
        reader = replicas_reader_make()
        try:
            assert not reader.partitions_for_topic(topic)
        finally:
            reader.close()
        assert topic not in topics_of(auto_creating_broker)
        # The same send from a producer at kafka-python's default creates the topic: the
        # broker would have made it, with its defaults rather than the replicas topic's.
        control = KafkaProducer(bootstrap_servers=[auto_creating_broker])
        try:
            control.send(topic, key=b"node", value=b"{}").get(timeout=30)
        finally:
            control.close(timeout=5)
        assert topic in topics_of(auto_creating_broker)


# --- partitions: why the clicks topic's count must never grow -------------------------------


class Cluster:
    """The metadata the default partitioner reads: a topic with `n` partitions, all available."""

    def __init__(self, topic: str, n: int) -> None:
        self.topic, self.n = topic, n

    def topics(self) -> set[str]:
        return {self.topic}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.n))

    available_partitions_for_topic = partitions_for_topic


def test_adding_partitions_sends_a_counters_later_reports_to_another_partition():
    """kafka-python's default partitioner: murmur2(key) modulo the partition count. So a key's
    partition depends on the count, and a counter's reports before and after an increase are in
    two partitions, in no order between them (the reason kafka_topics never adds partitions,
    tests/links/test_kafka_topics.py)."""
    partitioner = DefaultPartitioner()
    keys = [f"incarnation{i}:tiny{i}".encode() for i in range(100)]
    moved = [key for key in keys
             if partitioner.partition("t", key, key, None, None, Cluster("t", 1))
             != partitioner.partition("t", key, key, None, None, Cluster("t", 2))]
    assert len(moved) > 20  # about half of them
    assert all(partitioner.partition("t", key, key, None, None, Cluster("t", 1)) == 0
               for key in keys)
