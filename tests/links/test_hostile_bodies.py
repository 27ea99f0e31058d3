"""Hostile /create bodies: every one must be a 400 with a message that stores nothing, never a
500 (README, "The API": bad input is `400 {"error": ...}`, nothing stored)."""

from __future__ import annotations

import pytest

from links.models import Link


@pytest.mark.parametrize("name,body", [
    # Deep nesting well under the body limit (12 * 8192 + 4096 bytes): json.loads raises
    # RecursionError, which is not a JSONDecodeError.
    ("deep array beside longurl",
     '{"longurl": "https://example.com/deep", "x": ' + "[" * 20000 + "]" * 20000 + "}"),
    ("deep array as longurl", '{"longurl": ' + "[" * 20000 + "]" * 20000 + "}"),
    # An integer of more than 4,300 digits: Python refuses to convert it (ValueError, not
    # a JSONDecodeError).
    ("huge integer longurl", '{"longurl": ' + "7" * 5000 + "}"),
    ("huge integer expires_at",
     '{"longurl": "https://example.com/huge-int", "expires_at": ' + "7" * 5000 + "}"),
])
def test_hostile_json_is_a_400_not_a_500(master, transactional_db, name, body):
    response = master.put(body.encode(), headers={"Content-Type": "application/json"})
    assert response.status_code == 400, (name, response.status_code, response.text[:300])
    assert response.json()["error"]
    assert Link.objects.count() == 0
