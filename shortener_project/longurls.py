"""What a longurl is: the one definition used by the master when it accepts a link (/create)
and by every replica when it applies the link's record. Whatever the master accepts, every
replica serves; a record that fails here on a replica is a bug or a newer schema, never a
quiet 404 (it is logged with its offset and counted).

Pure functions, no Django models: the replica imports this without a database.
"""

from __future__ import annotations

# NOTE: the minimal rule of schema 2's first cut; "Safe links" replaces the body of
# longurl_problem with the full definition (IDNA, userinfo, length as sent, own hosts...).


def longurl_problem(value: str) -> str | None:
    """None if `value` can be served as a redirect target as it is; else what is wrong with it.

    `value` is the longurl exactly as stored and as it goes into a replica's Location header.
    """
    if not value:
        return "empty"
    scheme = value.split(":", 1)[0].lower() if ":" in value else ""
    if scheme not in ("http", "https"):
        return "not an absolute http:// or https:// URL"
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        return "whitespace or control characters"
    return None
