"""The product's processes started for real: a replica (its Redis, consume_links, web, reporter),
consume_clicks, the master's web under gunicorn."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
import requests
from django.conf import settings

from testkit.waits import ROOT, free_port, port_open, wait_until


def link_value_split(raw: bytes | None) -> tuple[int, int | None, str | None] | None:
    """A replica's Redis value of a link, `<version>|<expires_at ms>|<longurl>` (written by the
    replica's code; parsed here independently of it), as (version, expires_at, longurl). A
    password-protected link's `|<hash>|` before its longurl is left out (link_hash has it)."""
    if raw is None:
        return None
    version, expires_at, longurl = raw.decode().split("|", 2)
    if longurl.startswith("|"):
        longurl = longurl[1:].partition("|")[2]
    return int(version), int(expires_at) if expires_at else None, longurl or None


def redis_links_ready(client: redis.Redis) -> None:
    """What consume_links' catch-up leaves, for a test that writes links into Redis itself (no
    consume_links): the ready mark set, the restarted mark gone, and this server life checked
    (the run id stored), so that the incarnation check (on the web's next connection, a
    NOSCRIPT, report_clicks' round) finds nothing to distrust (redirects/incarnation.py)."""
    from redirects import keys

    with client.pipeline() as pipe:
        pipe.set(keys.clicks_runid_key(), client.info("server")["run_id"])
        pipe.set(keys.links_ready_key(), "1")
        pipe.delete(keys.links_restarted_key())
        pipe.execute()


class Replica:
    """One replica as on its own host: its own redis-server, `consume_links` and its web server
    (gunicorn + uvicorn's worker)."""

    def __init__(self, name: str, data_dir: Path, redis_of: Replica | None = None) -> None:
        """redis_of: share that replica's Redis (two hosts on one Redis) instead of running one."""
        self.name = name
        self.dir = data_dir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.redis_port = redis_of.redis_port if redis_of is not None else free_port()
        self.http_port = free_port()
        self.consumer_metrics_port = free_port()
        self.reporter_metrics_port = free_port()
        self.redis_proc: subprocess.Popen | None = None
        self.consumer: subprocess.Popen | None = None
        self.web: subprocess.Popen | None = None
        self.reporter: subprocess.Popen | None = None
        self.env = {
            **os.environ,
            "SHORTENER_ROLE": "replica",
            "SHORTENER_USER": settings.SHORTENER_USER,
            "SHORTENER_NODE_ID": name,
            "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            # A replica never needs the master's secrets or database.
            "DJANGO_SECRET_KEY": "",
            "DATABASE_URL": "postgres://nobody@127.0.0.1:1/none",
        }
        self.redis = redis.Redis(port=self.redis_port)
        self.http = requests.Session()

    # --- Redis ----------------------------------------------------------------------------

    def start_redis(self) -> None:
        # free_port() only found a port free a moment ago: another run on this machine may have
        # bound it since. A ping would then be answered by that other Redis, so wait for OUR
        # process to answer (INFO's process_id); if it exited (port taken) on a first start,
        # take another port. A restart must keep its port (the replica's processes use it).
        first = self.redis_proc is None
        for _ in range(5 if first else 1):
            proc = subprocess.Popen(
                # No persistence: these tests want a Redis that can lose everything.
                ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", str(self.dir)],
                stdout=open(self.dir / "redis.log", "ab"), stderr=subprocess.STDOUT,
            )
            self.redis_proc = proc

            def answered() -> str | bool:
                if proc.poll() is not None:
                    return "exited"
                try:
                    return self.redis.info("server")["process_id"] == proc.pid and "ours"
                except redis.ConnectionError:
                    return False

            if wait_until(answered, timeout=10, what=f"redis on {self.redis_port}") == "ours":
                return
            if first:
                self._redis_port_set(free_port())
        raise AssertionError(f"redis-server could not listen on {self.redis_port} "
                             f"(see {self.dir / 'redis.log'})")

    def _redis_port_set(self, port: int) -> None:
        self.redis_port = port
        self.env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        self.redis = redis.Redis(port=port)

    def restart_redis_empty(self) -> None:
        self._stop(self.redis_proc, signal.SIGKILL)
        (self.dir / "dump.rdb").unlink(missing_ok=True)
        self.start_redis()

    def snapshot_redis(self) -> Path:
        """SAVE, and keep a copy of the snapshot (a backup)."""
        self.redis.save()
        backup = self.dir / f"backup-{time.monotonic_ns()}.rdb"
        shutil.copyfile(self.dir / "dump.rdb", backup)
        return backup

    def restore_redis(self, backup: Path) -> None:
        """Kill redis-server and start it again on the same port and dir from `backup`."""
        self._stop(self.redis_proc, signal.SIGKILL)
        shutil.copyfile(backup, self.dir / "dump.rdb")
        self.start_redis()

    # --- consume_links --------------------------------------------------------------------

    def start_consumer(self, **extra_env: str) -> None:
        assert self.consumer is None or self.consumer.poll() is not None, "already running"
        self.consumer_log = self.dir / "consume_links.log"
        self.consumer = subprocess.Popen(
            [sys.executable, "manage.py", "consume_links",
             "--metrics-port", str(self.consumer_metrics_port)],
            cwd=ROOT, env={**self.env, **extra_env},
            stdout=open(self.consumer_log, "ab"), stderr=subprocess.STDOUT,
        )

    def stop_consumer(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.consumer is not None
        return self._stop(self.consumer, sig, timeout)

    def consumer_alive(self) -> bool:
        return self.consumer is not None and self.consumer.poll() is None

    def consumer_output(self) -> str:
        return self.consumer_log.read_text(errors="replace")

    # --- report_clicks --------------------------------------------------------------------

    def start_reporter(self, flush_seconds: float = 3600, **extra_env: str) -> None:
        """By default the flush timer never fires within a test: clicks below a hundred are
        reported when the reporter stops (SIGTERM), which the tests do on purpose."""
        assert self.reporter is None or self.reporter.poll() is not None, "already running"
        self.reporter_log = self.dir / "report_clicks.log"
        self.reporter = subprocess.Popen(
            [sys.executable, "manage.py", "report_clicks",
             "--metrics-port", str(self.reporter_metrics_port)],
            cwd=ROOT, env={**self.env, "SHORTENER_CLICKS_FLUSH_SECONDS": str(flush_seconds),
                           **extra_env},
            stdout=open(self.reporter_log, "ab"), stderr=subprocess.STDOUT,
        )
        # Its metrics port opens just before its signal handlers are installed: from then on a
        # SIGTERM is a graceful stop (with the final flush), not the default death.
        wait_until(lambda: port_open(self.reporter_metrics_port), timeout=20,
                   what=f"{self.name} report_clicks")

    def stop_reporter(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        return self._stop(self.reporter, sig, timeout)

    def start_web_again(self, **extra_env: str) -> None:
        """Stop the web server and start it again (e.g. with another SHORTENER_NODE_ID)."""
        self._stop(self.web)
        self.env.update(extra_env)
        self.start_web()

    def links_ready(self) -> None:
        """What consume_links' catch-up leaves (links_ready_set): see redis_links_ready."""
        redis_links_ready(self.redis)

    def click(self, tinyurl: str, times: int, *, user_agent: str | None = None) -> None:
        """`times` GETs answered 302. user_agent: the header sent (default: requests' own,
        python-requests/..., which the bot list names: a bot's click)."""
        headers = None if user_agent is None else {"User-Agent": user_agent}
        for _ in range(times):
            response = self.get(tinyurl, headers=headers)
            assert response.status_code == 302, response.status_code

    def click_through(self, tinyurl: str, times: int, timeout: float = 30) -> None:
        """`times` counted clicks, riding out 503s (Redis just restarted: nothing counted)."""
        deadline = time.monotonic() + timeout
        done = 0
        while done < times:
            assert time.monotonic() < deadline, f"only {done} of {times} clicks answered 302"
            status = self.get(tinyurl).status_code
            assert status in (302, 503), status
            done += status == 302

    def incarnation(self) -> str | None:
        raw = self.redis.get(f"{settings.SHORTENER_USER}:clicks:incarnation")
        return raw.decode() if raw is not None else None

    def clicks_count(self, tinyurl: str) -> int:
        """The link's clicks counted in the current incarnation."""
        incarnation = self.incarnation()
        key = f"{settings.SHORTENER_USER}:clicks:count:{incarnation}:{tinyurl}"
        return int(self.redis.get(key) or 0) if incarnation else 0

    def clicks_counts(self, tinyurl: str) -> dict[str, int]:
        """Every counter of the link in this Redis: incarnation -> count."""
        prefix = f"{settings.SHORTENER_USER}:clicks:count:"
        return {k.decode()[len(prefix):].rpartition(":")[0]: int(self.redis.get(k) or 0)
                for k in self.redis.scan_iter(match=f"{prefix}*:{tinyurl}")}

    # --- web ------------------------------------------------------------------------------

    def start_web(self, workers: int = 1) -> None:
        """The replica's web server as deployed: gunicorn with the project's gunicorn.conf.py
        (uvicorn's worker for the replica role) serving shortener_project.asgi."""
        # As for Redis: the port may have been taken since free_port() found it, and then
        # port_open() would see another server. gunicorn's arbiter logs "Listening at: ...
        # (<its pid>)" once it holds the socket, and exits if it cannot bind; a first start
        # then takes another port (gunicorn retries a bind 5 times, a second apart).
        first = self.web is None
        log = self.dir / "web.log"
        for _ in range(3 if first else 1):
            proc = self.web = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "--workers", str(workers),
                 "-b", f"127.0.0.1:{self.http_port}", "shortener_project.asgi"],
                cwd=ROOT, env=self.env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
            )
            listening = "Listening at: "

            def bound() -> str | bool:
                if proc.poll() is not None:
                    return "exited"
                return any(listening in line and line.endswith(f"({proc.pid})")
                           for line in log.read_text(errors="replace").splitlines()) and "ours"

            if wait_until(bound, timeout=30, what=f"{self.name} web") == "ours":
                wait_until(lambda: port_open(self.http_port), timeout=20,
                           what=f"{self.name} web")
                return
            if first:
                self.http_port = free_port()
        raise AssertionError(f"{self.name}'s web server could not listen on {self.http_port} "
                             f"(see {log})")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str, method: str = "GET", headers: dict | None = None
            ) -> requests.Response:
        return self.http.request(method, f"{self.url}/{path}", allow_redirects=False, timeout=10,
                                 headers=headers)

    # --- state ----------------------------------------------------------------------------

    def link(self, tinyurl: str) -> tuple[int, int | None, str | None] | None:
        """(version, expires_at ms, longurl or None if disabled) as this replica holds it."""
        return link_value_split(self.redis.get(f"{settings.SHORTENER_USER}:link:{tinyurl}"))

    def link_hash(self, tinyurl: str) -> str | None:
        """The password hash this replica holds for the link; None if it holds none."""
        raw = self.redis.get(f"{settings.SHORTENER_USER}:link:{tinyurl}")
        rest = raw.decode().split("|", 2)[2] if raw else ""
        return rest[1:].partition("|")[0] if rest.startswith("|") else None

    def target(self, tinyurl: str) -> str | None:
        """The longurl this replica redirects to; None if it holds no active link."""
        link = self.link(tinyurl)
        return link[2] if link is not None else None

    def targets(self, tinyurls: list[str]) -> list[str | None]:
        keys = [f"{settings.SHORTENER_USER}:link:{t}" for t in tinyurls]
        return [link[2] if (link := link_value_split(v)) is not None else None
                for v in self.redis.mget(keys)]

    def has_all(self, links: dict[str, str]) -> bool:
        return self.targets(list(links)) == list(links.values())

    def position(self, partition: int = 0) -> int | None:
        raw = self.redis.hget(f"{settings.SHORTENER_USER}:links:positions", partition)
        return int(raw) if raw is not None else None

    def stats(self) -> dict[str, int]:
        """The links consumer's counters (rejected_last left out: it is not a count)."""
        raw = self.redis.hgetall(f"{settings.SHORTENER_USER}:links:stats")
        return {k.decode(): int(v) for k, v in raw.items() if k != b"rejected_last"}

    def readyz(self) -> tuple[int, dict]:
        response = self.get("readyz")
        return response.status_code, response.json()

    # --- teardown -------------------------------------------------------------------------

    @staticmethod
    def _stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                return proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError(f"process {proc.args} did not stop within {timeout}s")
        return proc.returncode

    def close(self) -> None:
        for proc in (self.web, self.reporter, self.consumer, self.redis_proc):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        self.http.close()


class ClicksConsumerProcess:
    """The master's `manage.py consume_clicks`, on the test database."""

    APP_NAME = "test_consume_clicks"

    def __init__(self, data_dir: Path) -> None:
        from django.db import connection

        db = connection.settings_dict
        self.log = data_dir / f"consume_clicks-{os.getpid()}-{time.monotonic_ns()}.log"
        self.env = {
            **os.environ,
            "SHORTENER_ROLE": "master",
            "SHORTENER_USER": settings.SHORTENER_USER,
            # Named, so that the fixture can wait for its sessions to end after a SIGKILL.
            "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:"
                            f"{db['PORT'] or 5432}/{db['NAME']}?application_name={self.APP_NAME}",
        }
        self.proc: subprocess.Popen | None = None
        self.metrics_port = free_port()

    def start(self, **extra_env: str) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "consume_clicks", "--metrics-port",
             str(self.metrics_port)], cwd=ROOT,
            env={**self.env, **extra_env},
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        return Replica._stop(self.proc, sig, timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def sessions(self) -> int:
        """Open database sessions of consume_clicks processes (a killed one's may linger)."""
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                           "AND datname = current_database()",
                           [self.APP_NAME])
            return cursor.fetchone()[0]


def test_database_url(application_name: str) -> str:
    from django.db import connection

    db = connection.settings_dict
    return (f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/"
            f"{db['NAME']}?application_name={application_name}")


class MasterWeb:
    """The master's web under gunicorn (several workers), on the test database."""

    APP_NAME = "test_master_web"

    def __init__(self, data_dir: Path, workers: int = 2, **extra_env: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--workers", str(workers),
             "-b", f"127.0.0.1:{self.port}", "shortener_project.wsgi"],
            cwd=ROOT,
            env={**os.environ, "SHORTENER_ROLE": "master",
                 "SHORTENER_USER": settings.SHORTENER_USER,
                 "DATABASE_URL": test_database_url(self.APP_NAME),
                 # Sessions are not kept between requests, so none outlives the test.
                 "DATABASE_CONN_MAX_AGE": "0", **extra_env},
            stdout=open(data_dir / f"master-web-{self.port}.log", "ab"), stderr=subprocess.STDOUT,
        )
        wait_until(lambda: port_open(self.port), timeout=20, what="master web")
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        Replica._stop(self.proc, signal.SIGTERM)
