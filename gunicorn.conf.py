"""gunicorn settings for both roles; gunicorn reads this file from the working directory.

Every value can be changed through the environment (or gunicorn's own flags, which win).
"""

import os
import shutil
import tempfile

_role = os.environ.get("SHORTENER_ROLE", "").strip().lower()

if _role == "replica":
    # A replica is served as ASGI (`gunicorn shortener_project.asgi`): a redirect is one short
    # Redis command, and an event loop keeps hundreds of them in flight per process and sends
    # them to Redis together (redirects/pipelining.py), where threads would queue on the GIL.
    # uvicorn's worker, with uvloop and httptools (installed, so "auto" picks them): 7-8x the
    # redirects per second of the gthread worker with Django's view (docs/performance.md).
    worker_class = "uvicorn_worker.UvicornWorker"
    # One process per core: each runs one event loop, busy with CPU only, and more processes
    # than cores would only take turns (docs/performance.md: workers per core).
    workers = int(os.environ.get("GUNICORN_WORKERS") or os.cpu_count() or 2)
    # Every worker listens on a socket of its own (SO_REUSEPORT) and the kernel spreads new
    # connections over them. With one shared socket, the worker that wakes first accepts all
    # the connections waiting: wrk's 32 keep-alive connections split 27/5 between two workers,
    # and a load balancer's long-lived connections would leave a worker idle the same way.
    reuse_port = True
else:
    # Threads, not only processes. A master's /create spends most of its time waiting: on
    # PostgreSQL's commit and on Kafka's acknowledgement. Many requests in flight share those
    # waits (PostgreSQL's group commit, one Kafka batch for many records): on this 2-core
    # machine, 16 threads a worker made 2.2x the new links per second of 4
    # (docs/performance.md).
    worker_class = "gthread"
    # Processes for the cores (Python runs one thread at a time per process). Two cores here,
    # shared with the consumers and the stores; on a dedicated host, 2 x cores is the usual start.
    workers = int(os.environ.get("GUNICORN_WORKERS") or 2)
    threads = int(os.environ.get("GUNICORN_THREADS") or 16)
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
# A worker stuck for this long is restarted; far above any request's normal time (/create waits
# for Kafka at most 3 x SHORTENER_PUBLISH_TIMEOUT + 1 s: on a fresh producer, connecting and the
# topic's metadata, then the delivery, each bounded by it).
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
# On SIGTERM, requests in progress get this long to finish.
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "10"))
# Keep client connections open briefly: load balancers and the load generator reuse them.
keepalive = 5

# The master: one line per request on stdout, with the time it took in microseconds (%(D)s).
# A replica: none by default (GUNICORN_ACCESSLOG=- turns them on, in uvicorn's format): a line
# per redirect cost a tenth of a worker's time in the profile (docs/performance.md), and at
# thousands of redirects a second journald's default rate limit (10,000 lines per 30 s) drops
# most of them anyway; the metrics count every redirect by status, with its latency.
# An empty GUNICORN_ACCESSLOG turns them off for either role.
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "" if _role == "replica" else "-") or None
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(D)sus'

# Prometheus' multiprocess mode: every worker writes its metrics to files in this directory and
# /metrics sums them. It must be set before prometheus_client is imported anywhere (the value
# class is chosen at import), hence here, and it must belong to this server alone.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="shortener-metrics-")


def on_starting(server):
    # Samples of a previous run's workers would be added to this run's.
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, exist_ok=True)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    # Drop a dead worker's gauges (its counters and histograms stay counted).
    multiprocess.mark_process_dead(worker.pid)


def post_fork(server, worker):
    # A worker must not outlive its master. gunicorn's threaded workers notice a dead master by
    # themselves; uvicorn's worker does not, and after a SIGKILL of the master (the OOM killer,
    # a test's cleanup) its workers would go on serving, orphaned. Linux sends this signal to
    # the worker when the master dies; SIGTERM is a graceful stop for both kinds of worker.
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != server.pid:  # the master died before the line above
        os.kill(os.getpid(), signal.SIGTERM)

# gunicorn's control socket (gunicornc) defaults to one path per user ($HOME/.gunicorn/
# gunicorn.ctl), which every server of the user shares and overwrites: `make up` alone runs three.
# Nothing here uses it; signals (systemd's reload and stop) do the same job.
control_socket_disable = True
