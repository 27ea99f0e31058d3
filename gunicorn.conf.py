"""gunicorn settings for both roles; gunicorn reads this file from the working directory.

Every value can be changed through the environment (or gunicorn's own flags, which win).
"""

import os
import shutil
import tempfile

# Threads, not only processes. A master's /create spends most of its time waiting: on
# PostgreSQL's commit and on Kafka's acknowledgement. Many requests in flight share those waits
# (PostgreSQL's group commit, one Kafka batch for many records): on this 2-core machine, 16
# threads a worker made 2.2x the new links per second of 4 (docs/performance.md). A replica's
# request is one Redis round trip of ~0.2 ms and otherwise CPU (Django), so more threads than a
# few would only queue on the GIL.
worker_class = "gthread"
# Processes for the cores (Python runs one thread at a time per process). Two cores here, shared
# with the consumers and the stores; on a dedicated host, 2 x cores is the usual start.
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
_default_threads = "16" if os.environ.get("SHORTENER_ROLE", "").lower() == "master" else "4"
threads = int(os.environ.get("GUNICORN_THREADS", _default_threads))
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
# A worker stuck for this long is restarted; far above any request's normal time (/create waits
# for Kafka at most 3 x SHORTENER_PUBLISH_TIMEOUT + 1 s: on a fresh producer, connecting and the
# topic's metadata, then the delivery, each bounded by it).
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
# On SIGTERM, requests in progress get this long to finish.
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "10"))
# Keep client connections open briefly: load balancers and the load generator reuse them.
keepalive = 5

# One line per request on stdout, with the time it took in microseconds (%(D)s). An empty
# GUNICORN_ACCESSLOG turns it off (benchmarks: a line per request costs a few percent).
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-") or None
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
