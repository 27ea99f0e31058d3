"""A chaos run: the three-host cluster in network namespaces (testkit/netns.py; or, with
--topology scale, three brokers, two masters behind HAProxy and five replicas: testkit/scale.py),
client load
(tools/chaos/load.py), faults on a schedule drawn from a seed (tools/chaos/schedule.py,
injected by tools/chaos/nemesis.py), then every fault healed and the checker's verdict on what
the clients saw (tools/chaos/checker.py).

    sudo .local/venv/bin/python -m tools.chaos --minutes 10 --seed 7     (or: make chaos)
    sudo .local/venv/bin/python -m tools.chaos --topology scale --minutes 10 --seed 7

Prints the seed and the schedule first (the same seed replays the same schedule), then the
summary; writes both, with every violation, to <data>/chaos-<seed>-<id>/summary.txt. Exit
status 1 if the checker found a violation. Needs root (network namespaces).
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import secrets
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from testkit import ROOT, wait_until
from testkit.netns import NetnsCluster
from testkit.scale import ScaleCluster
from tools.chaos import checker
from tools.chaos.history import Final, History, State
from tools.chaos.load import Load
from tools.chaos.nemesis import Nemesis
from tools.chaos.schedule import TOPOLOGIES, draw

log = logging.getLogger("chaos")
READY_LIMIT = 120.0  # seconds after healing within which every replica must serve everything


def api_key(cluster: NetnsCluster) -> str:
    """A new API key, made on the master host as an operator would (the admin's code path)."""
    code = ("from links import protection; "
            "print(protection.api_key_create(name='chaos')[1])")
    done = subprocess.run(["ip", "netns", "exec", cluster.master.ns, sys.executable, "manage.py",
                           "shell", "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**cluster.env, "SHORTENER_ROLE": "master"}, check=True)
    return done.stdout.strip().splitlines()[-1]


def master_states(cluster: NetnsCluster) -> dict[str, State]:
    rows = cluster.sql("SELECT tinyurl, longurl, disabled_at IS NULL FROM links_link")
    return {tinyurl: State(longurl, active) for tinyurl, longurl, active in rows}


def sweep(url: str, tinyurls: list[str]) -> dict[str, tuple[int | None, str | None]]:
    """Each link's answer to a HEAD on one replica (HEAD: not a click)."""
    def one(tinyurl: str) -> tuple[str, tuple[int | None, str | None]]:
        try:
            answer = requests.head(f"{url}/{tinyurl}", allow_redirects=False, timeout=5)
            return tinyurl, (answer.status_code, answer.headers.get("Location"))
        except requests.RequestException:
            return tinyurl, (None, None)

    with ThreadPoolExecutor(4) as pool:
        return dict(pool.map(one, tinyurls))


def serves(answers: dict, states: dict[str, State]) -> bool:
    return all(answers[t] == (302, s.target) if s.active else answers[t][0] in (404, 410)
               for t, s in states.items())


def ready_wait(host, states: dict[str, State], healed: float) -> tuple[float | None, dict]:
    """Poll one replica until it says ready and serves every link's state (or READY_LIMIT has
    passed since `healed`): (seconds since `healed`, or None; its last answers). Measured to
    within one sweep of every link (about 7 s for 27,000 links on 2 cores)."""
    tinyurls = sorted(states)
    answers: dict = {}
    while time.monotonic() - healed < READY_LIMIT:
        try:
            ready = requests.get(f"{host.url}/readyz", timeout=5).ok
        except requests.RequestException:
            ready = False
        if ready:
            answers = sweep(host.url, tinyurls)
            if serves(answers, states):
                return round(time.monotonic() - healed, 1), answers
        time.sleep(0.5)  # a poll of a replica that is catching up
    return None, answers or sweep(host.url, tinyurls)


def final_read(cluster: NetnsCluster, healed: float) -> Final:
    """The master's states, each replica's answers once it serves them all (or the limit
    passed; both replicas at once), and the master's click totals once the clicks path is
    quiet."""
    final = Final()
    wait_until(lambda: cluster.sql("SELECT 1"), timeout=60, what="PostgreSQL")
    # Every acknowledged state published (the outbox relay), so that "ready" has a target.
    wait_until(lambda: not cluster.sql("SELECT 1 FROM links_link WHERE published_at IS NULL "
                                       "LIMIT 1"), timeout=READY_LIMIT, what="the outbox")
    final.master = master_states(cluster)
    with ThreadPoolExecutor(len(cluster.replicas)) as pool:
        waits = {host.name: pool.submit(ready_wait, host, final.master, healed)
                 for host in cluster.replicas}
        for name, wait in waits.items():
            final.ready_after[name], final.served[name] = wait.result()
    try:
        cluster.settle_clicks(timeout=180)
    except AssertionError as exc:
        log.error("the clicks path did not settle: %s", exc)
    names = {host.ip: host.name for host in cluster.replicas}
    for node, tinyurl, count in cluster.sql(
            "SELECT c.node, l.tinyurl, sum(c.count) FROM links_clickcounter c "
            "JOIN links_link l ON l.id = c.link_id GROUP BY 1, 2"):
        final.recorded.setdefault(names.get(node, node), {})[tinyurl] = int(count)
    return final


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=None, help="default: drawn and printed")
    parser.add_argument("--data", type=Path, default=ROOT / ".local" / "chaos")
    parser.add_argument("--topology", choices=sorted(TOPOLOGIES), default="three-hosts",
                        help="scale: three brokers, two masters behind HAProxy, five replicas")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if os.geteuid() != 0:
        print("chaos: needs root (network namespaces)", file=sys.stderr)
        return 2
    # SIGTERM (a timeout's kill, a service manager) and SIGINT, even where a shell started this
    # with SIGINT ignored, end the run through `finally`: the namespaces, routes and processes
    # of the cluster are removed, not left behind.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _interrupted)
    seed = args.seed if args.seed is not None else secrets.randbelow(10**6)
    seconds = args.minutes * 60
    plan = draw(seed, seconds, topology=TOPOLOGIES[args.topology])
    lines = [f"chaos run: seed {seed}, {args.minutes:g} min, {len(plan)} faults"
             + ("" if args.topology == "three-hosts" else f", topology {args.topology}"),
             *map(str, plan)]
    print("\n".join(lines), flush=True)
    args.data.mkdir(parents=True, exist_ok=True)
    scale = args.topology == "scale"
    cluster = (ScaleCluster if scale else NetnsCluster)(args.data, f"chaos{seed}")
    history = History()
    try:
        cluster.up()
        # On the scale topology the clients reach the masters through the load balancer.
        master_url = cluster.lb.url if scale else cluster.master.url
        load = Load(master=master_url, api_key=api_key(cluster), history=history,
                    replicas={h.name: h.url for h in cluster.replicas}, seed=seed)
        load.start()
        wait_until(lambda: load.created >= 20, timeout=60, what="the first links")
        nemesis = Nemesis(cluster, history)
        nemesis.run(plan, time.monotonic(), stop=lambda: False)
        nemesis.heal_all()
        load.close()
        healed = time.monotonic()
        final = final_read(cluster, healed)
        verdict = checker.check(history, final, ready_limit=READY_LIMIT)
    finally:
        cluster.close()
    summary = "\n".join([*lines, "", checker.report(verdict)])
    print(summary)
    (cluster.dir / "summary.txt").write_text(summary + "\n")
    # Everything, for a second look or a changed checker (tools.chaos.checker.check on it).
    (cluster.dir / "violations.txt").write_text("".join(f"{v}\n" for v in verdict.violations))
    with open(cluster.dir / "history.pickle", "wb") as out:
        history.lock = None  # type: ignore[assignment]  (a lock does not pickle)
        pickle.dump((history, final), out)
    return 1 if verdict.violations else 0
