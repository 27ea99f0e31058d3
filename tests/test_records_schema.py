"""The published record schemas (docs/records/) are what the record types generate, and they say
what the decoders accept (for the rules a JSON Schema can state)."""

from __future__ import annotations

import subprocess
import sys

from testkit import ROOT


def test_published_schemas_are_what_the_types_generate():
    check = subprocess.run([sys.executable, "tools/records_schema.py", "--check"], cwd=ROOT,
                           capture_output=True, text=True)
    assert check.returncode == 0, (
        f"docs/records/ is out of step with topics/; run "
        f"tools/records_schema.py and commit the result:\n{check.stdout}{check.stderr}")


def test_every_kind_is_published_with_its_required_fields():
    from topics.schemas import json_schemas

    schemas = json_schemas()
    required = {stem: set(next(iter(s["$defs"].values()))["required"])
                for stem, s in schemas.items()}
    assert required == {
        "links-record": {"schema", "tinyurl", "version", "state", "expires_at", "created_at"},
        "click-report": {"schema", "tinyurl", "node", "incarnation", "count", "reported_at"},
        "click-batch": {"schema", "node", "incarnation", "reported_at", "counts"},
        "click-batch-bots": {"schema", "node", "incarnation", "reported_at", "counts"},
        "replica-status": {"schema", "node", "links_position", "links_end", "ready", "reason",
                           "incarnation", "redirects", "version", "reported_at"},
    }
    for stem in schemas:
        assert (ROOT / "docs" / "records" / f"{stem}.schema.json").exists()
