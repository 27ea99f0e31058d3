"""The role a process plays, read once from SHORTENER_ROLE.

One codebase serves two roles; the role decides which apps, URLs and stores a process has.
An unknown or missing role stops the process at start: a replica that silently came up as a
master (or the reverse) would serve the wrong endpoints and touch the wrong stores.
"""

from __future__ import annotations

import enum

from django.core.exceptions import ImproperlyConfigured


class Role(enum.Enum):
    MASTER = "master"
    REPLICA = "replica"

    @classmethod
    def parse(cls, value: str | None) -> Role:
        choices = " or ".join(repr(r.value) for r in cls)
        if not value:
            raise ImproperlyConfigured(
                f"SHORTENER_ROLE is not set: say which role this process plays ({choices})"
            )
        try:
            return cls(value.strip().lower())
        except ValueError:
            raise ImproperlyConfigured(
                f"SHORTENER_ROLE={value!r} is not a role: use {choices}"
            ) from None
