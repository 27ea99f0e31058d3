"""`manage.py kafka_topics` against a real broker: creates the topics, repairs a config that
differs from the project's, and fails clearly on what it cannot repair (partition count)."""

from __future__ import annotations

import os
import subprocess
import sys
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic

from testkit import ROOT, own_prefix, wait_until
from topics.clicks import clicks_topic
from topics.clients import admin_client
from topics.links import links_topic
from topics.provisioning import topic_specs
from topics.replicas import replicas_topic

pytestmark = pytest.mark.services

CHECKED = ["cleanup.policy", "min.insync.replicas", "unclean.leader.election.enable"]


@pytest.fixture
def fresh_prefix():
    """A user prefix of its own, so that the topics here are made by the test; deleted after."""
    with own_prefix("k") as (prefix, _):
        yield prefix


def describe(topic: str) -> dict[str, str]:
    admin = admin_client()
    try:
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, CHECKED)],
                                         config_filter="all")["topic"][topic]
        return {k: configs[k]["value"] for k in CHECKED}
    finally:
        admin.close()


def create(topic: str, partitions: int, configs: dict[str, str]) -> None:
    admin = admin_client()
    try:
        admin.create_topics([NewTopic(topic, partitions, 1, topic_configs=configs)],
                            wait_for_metadata=True)
    finally:
        admin.close()


def test_creates_missing_topics_with_the_projects_settings(fresh_prefix):
    out = StringIO()
    call_command("kafka_topics", stdout=out)
    for spec in topic_specs():
        assert f"{spec.name}: created" in out.getvalue()
        # The replicas' statuses are compacted and also deleted after a week (topics/replicas.py),
        # the clicks topic's report batches deleted after a week (topics/clicks.py); the other
        # two settings are the broker's defaults, stated or relied on.
        policy = {replicas_topic(): "compact,delete", clicks_topic(): "delete"}.get(spec.name,
                                                                                    "compact")
        assert describe(spec.name) == {"cleanup.policy": policy, "min.insync.replicas": "1",
                                       "unclean.leader.election.enable": "false"}
    out = StringIO()
    call_command("kafka_topics", stdout=out)  # again: nothing to do
    assert out.getvalue().count("settings as expected") == len(topic_specs())


def test_a_wrong_cleanup_policy_is_repaired_and_said(fresh_prefix):
    # The clicks topic as the previous version created it: compacted (single reports keyed by
    # counter); report batches need time retention (topics/clicks.py), set on the existing topic.
    create(clicks_topic(), 1, {"cleanup.policy": "compact", "retention.ms": "-1",
                               "unclean.leader.election.enable": "true"})
    out = StringIO()
    call_command("kafka_topics", stdout=out)
    said = out.getvalue()
    assert f"{clicks_topic()}: repaired cleanup.policy: was compact, now delete" in said
    assert f"{clicks_topic()}: repaired retention.ms: was -1, now 604800000" in said
    assert (f"{clicks_topic()}: repaired unclean.leader.election.enable: was true, now false"
            in out.getvalue())
    assert describe(clicks_topic())["cleanup.policy"] == "delete"
    assert describe(clicks_topic())["unclean.leader.election.enable"] == "false"



def test_check_reports_without_repairing(fresh_prefix):
    create(links_topic(), 1, {"cleanup.policy": "delete"})
    err = StringIO()
    with pytest.raises(CommandError):
        call_command("kafka_topics", "--check", stdout=StringIO(), stderr=err)
    said = err.getvalue()
    assert f"{links_topic()}: cleanup.policy=delete, the project expects compact" in said
    assert describe(links_topic())["cleanup.policy"] == "delete"


def test_a_wrong_partition_count_is_a_clear_error_and_a_non_zero_exit(fresh_prefix):
    create(links_topic(), 3, {"cleanup.policy": "compact"})
    result = subprocess.run(
        [sys.executable, "manage.py", "kafka_topics"], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "SHORTENER_ROLE": "master", "SHORTENER_USER": fresh_prefix},
        timeout=60)
    assert result.returncode == 1
    assert f"{links_topic()}: has 3 partitions, the project expects 1" in result.stderr
    assert "cannot be repaired in place" in result.stderr
    assert "Traceback" not in result.stderr  # a message, not a stack trace
    # What could be done was done: the other topic was created.
    assert f"{clicks_topic()}: created" in result.stdout
    wait_until(lambda: describe(clicks_topic())["cleanup.policy"] == "delete", timeout=10)


def partition_count(topic: str) -> int:
    admin = admin_client()
    try:
        return len(admin.describe_topics([topic])[0]["partitions"])
    finally:
        admin.close()


def test_kafka_topics_never_changes_a_partition_count(fresh_prefix):
    """A clicks topic with more partitions than the project's one is reported, not changed:
    adding or removing partitions would move keys between partitions (tests/test_bus.py)."""
    create(clicks_topic(), 2, {"cleanup.policy": "compact"})
    err = StringIO()
    with pytest.raises(CommandError):
        call_command("kafka_topics", stdout=StringIO(), stderr=err)
    assert f"{clicks_topic()}: has 2 partitions, the project expects 1" in err.getvalue()
    assert partition_count(clicks_topic()) == 2


def test_a_relied_on_default_that_was_overridden_is_repaired(fresh_prefix):
    """min.insync.replicas=1 is not set on a one-broker topic (it is Kafka's default), but a
    topic or broker override of 2 would make it unwritable: kafka_topics sets it back."""
    create(links_topic(), 1, {"cleanup.policy": "compact", "min.insync.replicas": "2"})
    out = StringIO()
    call_command("kafka_topics", stdout=out)
    assert f"{links_topic()}: repaired min.insync.replicas: was 2, now 1" in out.getvalue()
    assert describe(links_topic())["min.insync.replicas"] == "1"
