"""What the benchmark scripts share: Django set up under a prefix of their own, a throwaway
database, and cleaning up their topics."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup(kind: str, **env: str) -> str:
    """Configure Django as a master with a fresh prefix `<kind><time>`; returns the prefix."""
    prefix = f"{kind}{int(time.time())}"
    sys.path.insert(0, str(ROOT))
    os.environ.update(SHORTENER_ROLE="master", SHORTENER_USER=prefix,
                      DJANGO_SECRET_KEY="bench-only",
                      DJANGO_SETTINGS_MODULE="shortener_project.settings", **env)
    import django

    django.setup()
    return prefix


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def admin_sql(sql: str) -> None:
    """Run SQL on the server's `postgres` database (CREATE/DROP DATABASE)."""
    import psycopg2
    from django.conf import settings

    db = settings.DATABASES["default"]
    conn = psycopg2.connect(host=db["HOST"], port=db["PORT"], user=db["USER"], dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(sql)
    conn.close()


def database_create() -> None:
    """Create the prefix's database and migrate it."""
    from django.conf import settings
    from django.core.management import call_command

    admin_sql(f'CREATE DATABASE "{settings.DATABASES["default"]["NAME"]}"')
    call_command("migrate", verbosity=0)


def cleanup() -> None:
    """Drop the prefix's database and delete its topics."""
    from django.conf import settings
    from django.db import connection

    from topics.clients import admin_client
    from topics.links import producer_reset
    from topics.provisioning import topic_specs

    producer_reset()
    connection.close()
    try:
        admin = admin_client()
        admin.delete_topics([s.name for s in topic_specs()])
        admin.close()
    except Exception as exc:  # noqa: BLE001 - clean-up must not hide the figures
        print(f"  (could not delete the topics: {exc})")
    admin_sql(f'DROP DATABASE IF EXISTS "{settings.DATABASES["default"]["NAME"]}" WITH (FORCE)')
