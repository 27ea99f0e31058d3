"""The JSON API on a live master process (gunicorn with the project's server, as deployed): its
docs page and the page's assets served offline, schemathesis' generated requests against every
operation, and a change made through the API reaching a replica."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from links import protection, services
from testkit import ROOT, MasterWeb, wait_until


OPERATIONS = ["POST /api/v1/links", "GET /api/v1/links", "POST /api/v1/links/bulk",
              "GET /api/v1/links/{tinyurl}", "PATCH /api/v1/links/{tinyurl}",
              "POST /api/v1/links/{tinyurl}/takedown", "POST /api/v1/links/{tinyurl}/restore",
              "GET /api/v1/links/{tinyurl}/clicks", "GET /api/v1/replicas"]


@pytest.fixture
def live_master(transactional_db, kafka_topics, test_data_dir):
    """A master process with its static files collected (as a deployment does: `manage.py
    collectstatic`, then whitenoise serves them), into this run's own folder, and an API key."""
    static = test_data_dir / "api-static"
    subprocess.run([sys.executable, "manage.py", "collectstatic", "--no-input", "-v0"],
                   cwd=ROOT, check=True, env={**os.environ, "SHORTENER_ROLE": "master",
                                              "DJANGO_STATIC_ROOT": str(static)})
    # No rate limit: schemathesis' requests then get the same answers whatever the machine's
    # speed (the limit itself is tests/api/test_api.py's).
    web = MasterWeb(test_data_dir, workers=1, DJANGO_STATIC_ROOT=str(static),
                    SHORTENER_CREATE_RATE_LIMIT="",
                    # A generated "wait": "replicas" waits at most this: no replica is ready
                    # here, so each would wait its whole timeout (the waits with replicas are
                    # tests/test_propagation_e2e.py's).
                    SHORTENER_PROPAGATION_WAIT_MAX_SECONDS="0.01")
    _, token = protection.api_key_create(name="live")
    yield web, token
    web.close()


def test_the_docs_page_and_its_assets_are_served_without_a_network(live_master):
    web, _ = live_master
    page = requests.get(f"{web.url}/api/v1/docs", timeout=30)
    assert page.status_code == 200 and "swagger-ui" in page.text
    assets = re.findall(r'(?:href|src)="([^"]+)"', page.text)
    # Every asset from the master itself: nothing from a CDN the machine may not reach.
    assert assets and all(a.startswith("/static/") for a in assets), assets
    for asset in assets:
        response = requests.get(web.url + asset, timeout=30)
        assert response.status_code == 200 and response.content, asset
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    document = requests.get(f"{web.url}/api/v1/openapi.json", timeout=30)
    assert document.status_code == 200 and document.json()["info"]["title"] == "shortener"


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(live_master, test_data_dir):
    """Generated requests (examples, boundaries, random; valid and invalid) to every operation,
    with a valid key: no 5xx, and every answer's status, content type and body as the document
    says. Deterministic (derandomized): a failure is found again on a rerun."""
    web, token = live_master
    report = test_data_dir / "schemathesis"
    # The operations on one link get an existing one: random tinyurls would only meet 404s
    # (tests/api/test_api.py has those) and never reach the handlers' logic.
    tinyurl = services.link_create(longurl="https://example.com/schemathesis").link.tinyurl
    config = test_data_dir / "schemathesis.toml"
    config.write_text(f'[parameters]\n"path.tinyurl" = "{tinyurl}"\n')
    run = subprocess.run(
        [str(Path(sys.executable).with_name("st")), "--config-file", str(config), "run",
         f"{web.url}/api/v1/openapi.json",
         "--header", f"Authorization: Bearer {token}",
         "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                     "response_schema_conformance",
         "--phases", "examples,coverage,fuzzing", "--max-examples", "50",
         "--generation-deterministic", "--workers", "1",
         "--request-timeout", "30", "--no-color", "--report", "junit",
         "--report-dir", str(report)],
        # Run in this run's folder: schemathesis keeps a cache (.schemathesis/) where it runs.
        cwd=test_data_dir, capture_output=True, text=True, timeout=110)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "Tested: 9" in run.stdout, run.stdout[-3000:]
    junit = "".join(path.read_text() for path in report.glob("junit*.xml"))
    for operation in OPERATIONS:  # each one exercised, none failed
        assert f'name="{operation}"' in junit, operation
    assert "<failure" not in junit and "<error" not in junit


def test_changes_made_through_the_api_reach_a_replica(master, replica_factory, transactional_db):
    replica = replica_factory()
    _, token = protection.api_key_create(name="e2e")
    auth = {"Authorization": f"Bearer {token}"}
    api = f"{master.url}/api/v1"
    created = requests.post(f"{api}/links", json={"longurl": "https://example.com/e2e/a"},
                            headers=auth, timeout=30).json()
    t = created["tinyurl"]
    wait_until(lambda: replica.get(t).status_code == 302, timeout=20, what="created")
    assert replica.get(t).headers["Location"] == "https://example.com/e2e/a"

    requests.patch(f"{api}/links/{t}", json={"longurl": "https://example.com/e2e/b"},
                   headers=auth, timeout=30).raise_for_status()
    wait_until(lambda: replica.get(t).headers.get("Location") == "https://example.com/e2e/b",
               timeout=20, what="the new target")
    requests.post(f"{api}/links/{t}/takedown", headers=auth, timeout=30).raise_for_status()
    wait_until(lambda: replica.get(t).status_code == 404, timeout=20, what="taken down")
    requests.post(f"{api}/links/{t}/restore", headers=auth, timeout=30).raise_for_status()
    wait_until(lambda: replica.get(t).status_code == 302, timeout=20, what="put back")
