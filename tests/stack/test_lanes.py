"""The fast lane (`make test-fast`, stack/test-fast.sh) selects no test that needs a service:
none of its tests requests a database, the live server, this run's Kafka topics or the product's
processes, whichever fixture they come through. Collected by the lane's own script, so its
selection (`-m "not services"`) and tests/conftest.py's marking are checked together."""

from __future__ import annotations

import json
import os
import subprocess

from testkit import ROOT

# What needs a service, written here independently of tests/conftest.py's SERVICE_FIXTURES:
# pytest-django's database and live server, the Kafka topics, and the fixtures that start the
# product's processes or use PostgreSQL and Kafka.
NEEDS_SERVICES = {
    "db", "transactional_db", "django_db_setup", "live_server", "kafka_topics", "master",
    "make_links", "replica_factory", "clicks_consumer", "test_data_dir",
}

PROBE = '''
import json, os


def pytest_collection_finish(session):
    with open(os.environ["LANE_PROBE_OUT"], "w") as out:
        json.dump([{"id": item.nodeid, "fixtures": list(item.fixturenames),
                    "django_db": item.get_closest_marker("django_db") is not None}
                   for item in session.items], out)
'''


def test_the_fast_lane_selects_no_test_that_needs_a_service(tmp_path):
    (tmp_path / "lane_probe.py").write_text(PROBE)
    out = tmp_path / "selected.json"
    env = {**os.environ, "LANE_PROBE_OUT": str(out),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path),
                                                       os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(["bash", "stack/test-fast.sh", "--collect-only", "-q",
                             "-p", "lane_probe", "-p", "no:cacheprovider"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    selected = json.loads(out.read_text())
    needing = [(t["id"], sorted(NEEDS_SERVICES.intersection(t["fixtures"])))
               for t in selected if t["django_db"] or NEEDS_SERVICES.intersection(t["fixtures"])]
    assert not needing, needing
    ids = [t["id"] for t in selected]
    # It is a lane, not an empty one: the pure functions' tests are in it, and this module too.
    assert sum(i.startswith("tests/links/test_longurls.py::") for i in ids) > 100
    assert any(i.startswith("tests/stack/test_lanes.py::") for i in ids)
    assert not any(i.startswith("tests/netns/") for i in ids)
