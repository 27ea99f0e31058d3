"""gunicorn settings for both roles; gunicorn reads this file from the working directory.

Every value can be changed through the environment (or gunicorn's own flags, which win).
"""

import os
import shutil
import tempfile

_role = os.environ.get("SHORTENER_ROLE", "").strip().lower()

# Both roles: gunicorn's arbiter with uvicorn's worker on uvloop and httptools, and a protocol
# of ours that bounds what a client can hold (runtime/serving.py): a connection is a
# few objects on an event loop until its request has arrived whole, so slow or silent clients
# take no thread and no task. gunicorn's threaded worker (the master's before) gave a thread to
# a connection at its first byte and waited on it without a limit: connections holding half a
# request, as many as its threads, froze the master (tests/test_slow_clients.py; what the
# bounds cost: docs/performance.md).
worker_class = "runtime.serving.Worker"
# Every worker listens on a socket of its own (SO_REUSEPORT) and the kernel spreads new
# connections over them. With one shared socket, the worker that wakes first accepts all
# the connections waiting: wrk's 32 keep-alive connections split 27/5 between two workers,
# and a load balancer's long-lived connections (or a flood of slow ones) would land on one
# worker the same way.
reuse_port = True
if _role == "replica":
    # A replica is served as ASGI (`gunicorn shortener_project.asgi`): a redirect is one short
    # Redis command, and an event loop keeps hundreds of them in flight per process and sends
    # them to Redis together (redirects/pipelining.py), where threads would queue on the GIL:
    # 7-8x the redirects per second of the gthread worker with Django's view
    # (docs/performance.md).
    # One process per core: each runs one event loop, busy with CPU only, and more processes
    # than cores would only take turns (docs/performance.md: workers per core).
    workers = int(os.environ.get("GUNICORN_WORKERS") or os.cpu_count() or 2)
else:
    # The master is WSGI (`gunicorn shortener_project.wsgi`): the worker runs Django on a2wsgi's
    # thread pool, `threads` threads a worker, each given a request only once it is complete.
    # PUT /create no longer takes one of them: it is answered on the event loop in front of
    # Django, its links made in batches by a few threads of its own (links/asgi.py,
    # links/batching.py). The pool serves the rest (the admin, /metrics, /readyz), whose
    # requests wait on PostgreSQL; 16 threads, as when /create ran on them (16 made 2.2x the
    # new links per second of 4: docs/performance.md).
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
# A connection that sends nothing for this long (before its first request, or after a
# response) is closed. Load balancers and the load generator reuse connections within it.
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE") or 5)
# Connections per worker process. Past it, the connection that has waited longest without a
# request in progress is closed to make room (serving.py). Each is a file descriptor: the
# systemd units' LimitNOFILE covers it (deploy/systemd), and below the soft limit is raised to
# fit (see the end of this file).
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS") or 2048)
# What one request may be and take (serving.Limits; read by the worker from the environment):
# SHORTENER_MAX_HEADER_BYTES (16,384: request line and header fields, else 431),
# SHORTENER_MAX_BODY_BYTES (131,072, else 413, on every path) and SHORTENER_REQUEST_TIMEOUT
# (10 s from a request's first byte to its last, else 408 and the connection closed).

# The master: one line per request on stdout, with the time it took in microseconds
# (serving.ACCESS_LINE).
# A replica: none by default (GUNICORN_ACCESSLOG=- turns them on, in uvicorn's format): a line
# per redirect cost a tenth of a worker's time in the profile (docs/performance.md), and at
# thousands of redirects a second journald's default rate limit (10,000 lines per 30 s) drops
# most of them anyway; the metrics count every redirect by status, with its latency.
# An empty GUNICORN_ACCESSLOG turns them off for either role.
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "" if _role == "replica" else "-") or None

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


def _descriptors_fit() -> None:
    # Every connection is a file descriptor, and a worker past its soft limit cannot accept
    # (EMFILE). Raise the soft limit to what worker_connections needs, up to the hard limit
    # (`make up` inherits a shell's 1024); under systemd, LimitNOFILE sets both.
    global worker_connections
    import resource

    from runtime.serving import DESCRIPTORS_BESIDES_CONNECTIONS

    need = worker_connections + DESCRIPTORS_BESIDES_CONNECTIONS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        soft = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft != resource.RLIM_INFINITY and soft < need:
        worker_connections = max(1, soft - DESCRIPTORS_BESIDES_CONNECTIONS)
        print(f"gunicorn.conf.py: file descriptor limit {soft}: worker_connections lowered "
              f"to {worker_connections}", flush=True)


_descriptors_fit()
