"""Django settings, all from the environment (see .env.example for every variable).

Names and defaults follow the design brief §2 and the assignment: one user prefix for every
shared name, Postgres on 5432, Redis on 26379, Kafka on 9092 (or the embedded stack's ports,
SHORTENER_PG_PORT, SHORTENER_REDIS_PORTS, SHORTENER_KAFKA_PORT, when they are moved).
"""

from __future__ import annotations

import getpass
import re
import secrets
import socket
import subprocess
from pathlib import Path

import environ
import limits
from django.core.exceptions import ImproperlyConfigured
from django.utils.http import MAX_URL_REDIRECT_LENGTH

from shortener_project.roles import Role

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()
# A local .env (git-ignored) is a convenience for development; real deployments use the
# systemd EnvironmentFile or the process environment, which take precedence.
if (BASE_DIR / ".env").is_file():
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

ROLE = Role.parse(env.str("SHORTENER_ROLE", default=""))

# The prefix of every name other users could share: topics, consumer groups, Redis keys and the
# database. Kafka topic names allow [a-zA-Z0-9._-]; keeping to that keeps every name legal.
SHORTENER_USER = env.str("SHORTENER_USER", default="") or getpass.getuser()
if not re.fullmatch(r"[A-Za-z0-9._-]{1,100}", SHORTENER_USER):
    raise ImproperlyConfigured(
        f"SHORTENER_USER={SHORTENER_USER!r}: use letters, digits, '.', '_' or '-' (it names "
        "Kafka topics, consumer groups, Redis keys and the database)"
    )


def _primary_ipv4() -> str:
    """This host's primary IPv4 address: the first one `hostname -I` lists, else the resolver's."""
    try:
        out = subprocess.run(
            ["hostname", "-I"], capture_output=True, text=True, timeout=2, check=False
        ).stdout.split()
        for addr in out:
            if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", addr):
                return addr
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


# This server's id in consumer-group names and click reports. The assignment suggests the IP.
SHORTENER_NODE_ID = env.str("SHORTENER_NODE_ID", default="") or _primary_ipv4()
if not re.fullmatch(r"[A-Za-z0-9._-]{1,100}", SHORTENER_NODE_ID):
    raise ImproperlyConfigured(
        f"SHORTENER_NODE_ID={SHORTENER_NODE_ID!r}: use letters, digits, '.', '_' or '-'"
    )

DEBUG = env.bool("DJANGO_DEBUG", default=False)

_secret = env.str("DJANGO_SECRET_KEY", default="")
if not _secret:
    if ROLE is Role.MASTER and not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set: the master signs admin sessions with it. "
            "Generate one with: python -c 'import secrets; print(secrets.token_urlsafe(50))'"
        )
    # A replica signs nothing (no sessions, no admin, no forms), so a per-process key is enough.
    _secret = secrets.token_urlsafe(50)
SECRET_KEY = _secret

ALLOWED_HOSTS = env.list(
    "DJANGO_ALLOWED_HOSTS",
    default=["localhost", "127.0.0.1", "[::1]", SHORTENER_NODE_ID],
)

# --- the stores -----------------------------------------------------------------------------

# The default addresses are the embedded stack's (stack/lib.sh), on the ports it is told to use:
# SHORTENER_KAFKA_PORT, SHORTENER_PG_PORT and the first of SHORTENER_REDIS_PORTS (the first local
# replica's Redis). So a checkout whose services run on other ports reaches its own services, not
# another checkout's on the assignment's ports. KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL and
# REDIS_URL, when set, win.


def _port(name: str, default: str) -> int:
    words = env.str(name, default=default).split()
    if not words or not words[0].isdigit() or not 0 < int(words[0]) < 65536:
        raise ImproperlyConfigured(f"{name}={env.str(name)!r}: use a TCP port (1 to 65535)")
    return int(words[0])


STACK_PG_PORT = _port("SHORTENER_PG_PORT", "5432")
STACK_KAFKA_PORT = _port("SHORTENER_KAFKA_PORT", "9092")
STACK_REDIS_PORT = _port("SHORTENER_REDIS_PORTS", "26379 26380")

KAFKA_BOOTSTRAP_SERVERS = env.list("KAFKA_BOOTSTRAP_SERVERS",
                                   default=[f"127.0.0.1:{STACK_KAFKA_PORT}"])
# Replication factor of the topics the project creates. The assignment's cluster has a single
# broker, so 1 is the only value that works there; a real cluster sets 3.
KAFKA_REPLICATION_FACTOR = env.int("KAFKA_REPLICATION_FACTOR", default=1)
REDIS_URL = env.str("REDIS_URL", default=f"redis://127.0.0.1:{STACK_REDIS_PORT}/0")

if ROLE is Role.MASTER:
    DATABASES = {
        "default": env.db_url(
            "DATABASE_URL",
            default=f"postgres://postgres@127.0.0.1:{STACK_PG_PORT}/{SHORTENER_USER}",
        )
    }
    # Keep connections between requests (gunicorn workers are long-lived). No health check
    # before each request: it is a round trip more on every /create (27% of a worker's time in
    # the profile, docs/performance.md). After a PostgreSQL restart, a dead connection fails one
    # request with 503 and Django discards it at the end of that request.
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = env.bool("DATABASE_HEALTH_CHECKS", default=False)
    # Fail fast when PostgreSQL is down, so /create answers 503 instead of hanging.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", 5)
    DATABASES["default"]["TEST"] = {"NAME": f"test_{SHORTENER_USER}"}
else:
    # A replica never touches PostgreSQL: with no database configured, any ORM use raises.
    DATABASES = {}

# The replica's Redis, through django-redis' connection pool (get_redis_connection()).
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": SHORTENER_USER,
        "OPTIONS": {
            # Fail fast when Redis is down: a redirect answers 503 instead of hanging.
            "SOCKET_CONNECT_TIMEOUT": 2,
            "SOCKET_TIMEOUT": 5,
        },
    }
}

# --- the product's own settings -------------------------------------------------------------

# Longest longurl accepted, in characters of its stored form: as it is sent in Location, after
# IDNA and percent-encoding (topics/longurls.py). Real links with long query strings
# go past 2,048, and 8 KiB is what common servers accept in a request line. At most Django's
# MAX_URL_REDIRECT_LENGTH (16,384): HttpResponseRedirect refuses longer targets.
SHORTENER_MAX_URL_LENGTH = env.int("SHORTENER_MAX_URL_LENGTH", default=8192)
if not 20 <= SHORTENER_MAX_URL_LENGTH <= MAX_URL_REDIRECT_LENGTH:
    raise ImproperlyConfigured(
        f"SHORTENER_MAX_URL_LENGTH={SHORTENER_MAX_URL_LENGTH}: use 20 to {MAX_URL_REDIRECT_LENGTH} "
        "(replicas cannot redirect to longer URLs)"
    )
# The one bound on publishing a link, in seconds: the master producer's delivery_timeout_ms, and
# what /create waits for (plus a second) before answering 503 (topics/).
SHORTENER_PUBLISH_TIMEOUT = env.float("SHORTENER_PUBLISH_TIMEOUT", default=5.0)

# --- /create's protection (links/protection.py; README "The API") ---------------------------

# The service's own public hosts: /create refuses longurls on them (short links to short links
# make chains without end). Django's ALLOWED_HOSTS syntax: "sho.rt" is that host, ".sho.rt" it
# and its subdomains; any port. Default: the hosts this server answers to (DJANGO_ALLOWED_HOSTS,
# less "*"). On the master, list the replicas' public names too: the master cannot know them.
SHORTENER_PUBLIC_HOSTS = env.list(
    "SHORTENER_PUBLIC_HOSTS", default=[h for h in ALLOWED_HOSTS if h != "*"])
# Longurls whose host is a loopback, private, link-local or otherwise non-global address, or
# "localhost", lead every clicker to their own machine or network, not the creator's: refused
# unless this is true (a shortener for an intranet).
SHORTENER_ALLOW_PRIVATE_TARGETS = env.bool("SHORTENER_ALLOW_PRIVATE_TARGETS", default=False)
# "open": anyone may PUT /create (the homework's contract). "key": only with
# "Authorization: Bearer <key>", keys being made and revoked in the admin.
SHORTENER_CREATE_AUTH = env.str("SHORTENER_CREATE_AUTH", default="open").lower()
if SHORTENER_CREATE_AUTH not in ("open", "key"):
    raise ImproperlyConfigured(
        f"SHORTENER_CREATE_AUTH={SHORTENER_CREATE_AUTH!r}: use open or key")
# Limits of /create per client (its API key, else its address; an IPv6 address by its /64), in
# the `limits` library's notation, several separated by ";". Empty: no limit. The default lets
# the homework's load generator (10,000 creates, sequential at ~80/s) run five times an hour
# from one address, and keeps a single client from flooding the links table.
SHORTENER_CREATE_RATE_LIMIT = env.str("SHORTENER_CREATE_RATE_LIMIT",
                                      default="200/second;50000/hour")
# Where the counters live, shared by every gunicorn worker: "database" (an UNLOGGED table in
# the master's PostgreSQL), or a `limits` storage URI such as redis://127.0.0.1:26379/0
# ("memory://" counts per process: tests only).
SHORTENER_RATE_LIMIT_STORAGE = env.str("SHORTENER_RATE_LIMIT_STORAGE", default="database")
if SHORTENER_CREATE_RATE_LIMIT.strip():
    try:
        limits.parse_many(SHORTENER_CREATE_RATE_LIMIT)
    except ValueError as exc:
        raise ImproperlyConfigured(f"SHORTENER_CREATE_RATE_LIMIT: {exc}") from None
if SHORTENER_RATE_LIMIT_STORAGE != "database" and "://" not in SHORTENER_RATE_LIMIT_STORAGE:
    raise ImproperlyConfigured(
        f"SHORTENER_RATE_LIMIT_STORAGE={SHORTENER_RATE_LIMIT_STORAGE!r}: use database or a "
        "storage URI of the limits library (redis://host:port/db)")
# Proxies in front of the master that append the client's address to X-Forwarded-For. 0: the
# address is the connection's peer (REMOTE_ADDR), and X-Forwarded-For is ignored (a client can
# write anything there).
SHORTENER_TRUSTED_PROXIES = env.int("SHORTENER_TRUSTED_PROXIES", default=0)
# Each gunicorn worker keeps the host blocklist in memory this many seconds; an admin's change
# reaches every worker within it (at once in the worker that served the admin).
SHORTENER_BLOCKLIST_CACHE_SECONDS = env.float("SHORTENER_BLOCKLIST_CACHE_SECONDS", default=5.0)

# PUT /create/bulk (links/bulk.py): most items in one call. Each item is one create for the rate
# limit, so a larger call is no way around it; the bound keeps one call's memory and time (one
# INSERT, one Kafka batch) to about a second.
SHORTENER_BULK_MAX_ITEMS = env.int("SHORTENER_BULK_MAX_ITEMS", default=10000)
if SHORTENER_BULK_MAX_ITEMS < 1:
    raise ImproperlyConfigured(
        f"SHORTENER_BULK_MAX_ITEMS={SHORTENER_BULK_MAX_ITEMS}: use 1 or more")
# Largest body of PUT /create/bulk, in bytes: the server (runtime/serving.py) answers 413 past it
# before the application runs, and the view refuses it again (413) if it arrives otherwise.
# Read from the environment by both (runtime/serving.py's Limits); the default is serving.py's.
SHORTENER_BULK_MAX_BODY_BYTES = env.int("SHORTENER_BULK_MAX_BODY_BYTES", default=4 * 1024 * 1024)

# Most links-topic records a replica applies in one Redis transaction. Large batches make a
# fresh replica's catch-up fast; tests lower it to interrupt a catch-up half-way.
SHORTENER_LINKS_BATCH = env.int("SHORTENER_LINKS_BATCH", default=5000)
# How long a replica keeps an expired link (answering 410 Gone) before the key leaves its Redis
# by itself (PEXPIREAT = expires_at + this). After that the link answers 404.
SHORTENER_GONE_KEEP_SECONDS = env.int("SHORTENER_GONE_KEEP_SECONDS", default=30 * 24 * 3600)
# A replica's /readyz answers 503 once consume_links' heartbeat (written every round, <= 0.5 s,
# and every <= ~8 s while Kafka is unreachable) is older than this: stopped, dead or stuck.
# It is also the ready mark's life in Redis, renewed by each beat (redirects/services.py), and
# must outlast a beat's longest gap while Kafka is away (~8 s), or the replica flaps.
SHORTENER_READY_STALE_SECONDS = env.float("SHORTENER_READY_STALE_SECONDS", default=15.0)
if not 10 <= SHORTENER_READY_STALE_SECONDS <= 86400:
    raise ImproperlyConfigured(
        f"SHORTENER_READY_STALE_SECONDS={SHORTENER_READY_STALE_SECONDS}: must be in [10, 86400] "
        "(beats are up to ~8 s apart while Kafka is unreachable)")

# Clicks below the next hundred are reported by `report_clicks` at least this often (and when it
# stops gracefully). It bounds how far the master's totals lag, and what a wiped Redis can lose.
SHORTENER_CLICKS_FLUSH_SECONDS = env.float("SHORTENER_CLICKS_FLUSH_SECONDS", default=10.0)
# Every counter a replica holds is reported again this often (redirects/sweep.py), whether it
# changed or not: the clicks topic keeps records for 7 days (its retention.ms, Kafka's default),
# and a master away longer than that finds every live counter in what is left. At most 3 days,
# so that a sweep is in the topic even when the last one before it ran late (a reporter away).
SHORTENER_CLICKS_SWEEP_SECONDS = env.float("SHORTENER_CLICKS_SWEEP_SECONDS", default=86400.0)
if not 0 < SHORTENER_CLICKS_SWEEP_SECONDS <= 3 * 86400:
    raise ImproperlyConfigured(
        f"SHORTENER_CLICKS_SWEEP_SECONDS={SHORTENER_CLICKS_SWEEP_SECONDS}: must be in (0, 259200] "
        "(3 days, under the clicks topic's 7-day retention)")
# Most click records the master applies in one PostgreSQL transaction (a report batch counts as
# one record; the consumer's fetch size bounds the counters: topics/clicks.py).
SHORTENER_CLICKS_BATCH = env.int("SHORTENER_CLICKS_BATCH", default=5000)

# Master jobs (relay, consume_clicks, prune): one instance works, the others wait for its lock
# (runtime/leadership.py). A standby tries this often (seconds: the takeover time after a
# holder's death); the holder checks its lock this often.
SHORTENER_LEADER_RETRY_SECONDS = env.float("SHORTENER_LEADER_RETRY_SECONDS", default=1.0)
SHORTENER_LEADER_CHECK_SECONDS = env.float("SHORTENER_LEADER_CHECK_SECONDS", default=1.0)
# A holder whose last check is older than this (seconds) is stopped or hung: a standby ends its
# session. Above a check's interval plus its deadline (max(5 s, three intervals)).
SHORTENER_LEADER_STALE_SECONDS = env.float("SHORTENER_LEADER_STALE_SECONDS", default=15.0)
if not (SHORTENER_LEADER_RETRY_SECONDS > 0 and SHORTENER_LEADER_CHECK_SECONDS > 0):
    raise ImproperlyConfigured(
        f"SHORTENER_LEADER_RETRY_SECONDS={SHORTENER_LEADER_RETRY_SECONDS} and "
        f"SHORTENER_LEADER_CHECK_SECONDS={SHORTENER_LEADER_CHECK_SECONDS}: both must be above 0")
if SHORTENER_LEADER_STALE_SECONDS <= SHORTENER_LEADER_CHECK_SECONDS + max(
        5.0, 3 * SHORTENER_LEADER_CHECK_SECONDS):
    raise ImproperlyConfigured(
        f"SHORTENER_LEADER_STALE_SECONDS={SHORTENER_LEADER_STALE_SECONDS}: must be above "
        f"SHORTENER_LEADER_CHECK_SECONDS plus a check's deadline (the larger of 5 s and three "
        f"checks): {SHORTENER_LEADER_CHECK_SECONDS + max(5.0, 3 * SHORTENER_LEADER_CHECK_SECONDS)}")

# Replicas' status (redirects/status.py, links/replicas.py): each replica's report_clicks
# publishes one this often (seconds); the admin shows a replica not heard from for
# SHORTENER_REPLICA_MISSING_SECONDS as missing, and waits at most
# SHORTENER_REPLICAS_READ_SECONDS for Kafka when it reads them.
SHORTENER_STATUS_SECONDS = env.float("SHORTENER_STATUS_SECONDS", default=5.0)
SHORTENER_REPLICA_MISSING_SECONDS = env.float("SHORTENER_REPLICA_MISSING_SECONDS", default=60.0)
SHORTENER_REPLICAS_READ_SECONDS = env.float("SHORTENER_REPLICAS_READ_SECONDS", default=3.0)
# A replica also sends a status soon after it applied links records, so that the master's
# create-and-wait learns it in well under a second (redirects/status.py): it looks for new
# applied positions every SHORTENER_STATUS_POLL_SECONDS (0: never; only the regular status),
# and sends at most one status every SHORTENER_STATUS_MIN_SECONDS.
SHORTENER_STATUS_POLL_SECONDS = env.float("SHORTENER_STATUS_POLL_SECONDS", default=0.05)
SHORTENER_STATUS_MIN_SECONDS = env.float("SHORTENER_STATUS_MIN_SECONDS", default=0.1)
# Create-and-wait (links/propagation_wait.py): the longest wait a caller may ask for, the wait
# when it names none, and how many waits one master process holds at once (each holds a
# request thread: gunicorn.conf.py's 16 threads a worker; a wait past the limit is answered at
# once, not waited). Samples of the replicas' applied positions are kept this long at full
# resolution, then one a minute per replica until SHORTENER_REPLICA_GONE_SECONDS
# (links/propagation.py).
SHORTENER_PROPAGATION_WAIT_MAX_SECONDS = env.float("SHORTENER_PROPAGATION_WAIT_MAX_SECONDS",
                                                   default=30.0)
SHORTENER_PROPAGATION_WAIT_SECONDS = env.float("SHORTENER_PROPAGATION_WAIT_SECONDS", default=10.0)
SHORTENER_PROPAGATION_WAITS = env.int("SHORTENER_PROPAGATION_WAITS", default=8)
SHORTENER_PROPAGATION_FINE_SECONDS = env.float("SHORTENER_PROPAGATION_FINE_SECONDS",
                                               default=3600.0)
# Password-protected links on a replica (redirects/protected.py). The cookie that lets a browser
# through after the right password is an HMAC with SHORTENER_LINK_COOKIE_SECRET: every web worker
# of a replica (and every replica that should accept another's cookies) needs the same one; unset,
# it is derived from DJANGO_SECRET_KEY, and with neither set no cookie is given (the password is
# then asked at every visit: a per-process key would fail on the next worker). The cookie lasts
# SHORTENER_LINK_COOKIE_SECONDS (default 12 hours). Wrong passwords: at most
# SHORTENER_PASSWORD_TRIES per link and client address every SHORTENER_PASSWORD_TRIES_SECONDS
# (then 429), counted in the replica's own Redis.
SHORTENER_LINK_COOKIE_SECRET = env.str("SHORTENER_LINK_COOKIE_SECRET", default="") or (
    f"derived:{env.str('DJANGO_SECRET_KEY', default='')}"
    if env.str("DJANGO_SECRET_KEY", default="") else "")
SHORTENER_LINK_COOKIE_SECONDS = env.int("SHORTENER_LINK_COOKIE_SECONDS", default=12 * 3600)
SHORTENER_PASSWORD_TRIES = env.int("SHORTENER_PASSWORD_TRIES", default=5)
SHORTENER_PASSWORD_TRIES_SECONDS = env.int("SHORTENER_PASSWORD_TRIES_SECONDS", default=60)
if (SHORTENER_LINK_COOKIE_SECONDS < 1 or SHORTENER_PASSWORD_TRIES < 1
        or SHORTENER_PASSWORD_TRIES_SECONDS < 1):
    raise ImproperlyConfigured("SHORTENER_LINK_COOKIE_SECONDS, SHORTENER_PASSWORD_TRIES and "
                               "SHORTENER_PASSWORD_TRIES_SECONDS must be at least 1")
# Bounded growth (links/pruning.py, run by `manage.py prune`; docs/storage.md).
# A replica whose newest status is older than this (seconds; default 7 days) is gone: the prune
# writes a tombstone for its key on the replicas topic, and the admin's replicas page no longer
# shows it.
SHORTENER_REPLICA_GONE_SECONDS = env.float("SHORTENER_REPLICA_GONE_SECONDS",
                                           default=7 * 24 * 3600.0)
# An incarnation that no replica status names as current and none of whose counters rose for
# this long (seconds; default 7 days) has ended: its counters are folded and their clicks-topic
# keys tombstoned, and later reports of it are refused. It is the time a replica's leftover
# reports of an earlier incarnation (sent within one flush after its Redis restarted) may still
# take to arrive: a reporter or a Kafka outage longer than this loses them.
SHORTENER_INCARNATION_QUIET_SECONDS = env.float("SHORTENER_INCARNATION_QUIET_SECONDS",
                                                default=7 * 24 * 3600.0)
# Days of daily click rows kept (0, the default: every day, as the per-day CSV shows them all).
# Otherwise at least the daily chart's 90 days (links.selectors.CHART_DAYS).
SHORTENER_CLICKS_DAYS_KEEP = env.int("SHORTENER_CLICKS_DAYS_KEEP", default=0)
if SHORTENER_CLICKS_DAYS_KEEP != 0 and SHORTENER_CLICKS_DAYS_KEEP < 90:
    raise ImproperlyConfigured(
        f"SHORTENER_CLICKS_DAYS_KEEP={SHORTENER_CLICKS_DAYS_KEEP}: use 0 (keep every day) or "
        "at least 90 (the admin's daily chart shows 90 days)")
# The code version a replica's status names; by default the checkout's git commit.
SHORTENER_VERSION = env.str("SHORTENER_VERSION", default="")

# --- Django plumbing ------------------------------------------------------------------------

if ROLE is Role.MASTER:
    INSTALLED_APPS = [
        "django.contrib.admin",
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "django.contrib.sessions",
        "django.contrib.messages",
        "django.contrib.staticfiles",
        # The JSON API (links/api/): installed so that its docs page uses the Swagger UI files
        # django-ninja ships as static files (served by whitenoise), not a CDN.
        "ninja",
        "topics",
        "links",
    ]
    MIDDLEWARE = [
        "django.middleware.security.SecurityMiddleware",
        "whitenoise.middleware.WhiteNoiseMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
        "django.middleware.clickjacking.XFrameOptionsMiddleware",
    ]
    ROOT_URLCONF = "shortener_project.urls_master"
else:
    # The replica exposes nothing but what it serves: no admin, no sessions, no static files.
    INSTALLED_APPS = ["topics", "redirects"]
    MIDDLEWARE = ["django.middleware.security.SecurityMiddleware"]
    ROOT_URLCONF = "shortener_project.urls_replica"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "shortener_project.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env.path("DJANGO_STATIC_ROOT", default=BASE_DIR / ".local" / "static")
STORAGES = {
    # Compressed but not hashed: the only static files are the admin's, and a manifest storage
    # turns a forgotten `collectstatic` into a 500 on every admin page. Unhashed files are
    # served with short cache lifetimes instead, which suits an internal admin.
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# Behind a TLS-terminating proxy, set these so the admin's cookies never travel in clear.
SESSION_COOKIE_SECURE = env.bool("DJANGO_SECURE_COOKIES", default=False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "line": {
            "format": f"%(asctime)s %(levelname)s role={ROLE.value} node={SHORTENER_NODE_ID} "
            "%(name)s %(message)s"
        }
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "line"}},
    "root": {"handlers": ["console"], "level": env.str("SHORTENER_LOG_LEVEL", default="INFO")},
    "loggers": {
        # kafka-python logs every reconnect attempt at INFO/WARNING; ours say what matters.
        "kafka": {"level": env.str("KAFKA_LOG_LEVEL", default="ERROR")},
    },
}
