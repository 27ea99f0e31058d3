"""The clients of a chaos run: creates on the master, changes of target, takedowns and
put-backs through the API, and redirects on every replica, each recorded as the client saw it
(tools/chaos/history.py).

One operation at a time per link, so that a link's states form a sequence the checker can hold
replicas to. An operation whose outcome the client cannot know (no answer, a 5xx) is the link's
last: the link keeps being read, never changed again.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

import requests

from tools.chaos.history import History, Op, Read, State

TIMEOUT = 10.0  # seconds a client waits for an answer before it counts the call as unknown


@dataclass
class Slot:
    """A link the load made: its last acknowledged state; `frozen` after an unknown outcome."""
    tinyurl: str
    state: State
    base: str  # the longurl it was created with; new targets are paths under it
    versions: int = 0
    busy: bool = False
    frozen: bool = False


class Load:
    def __init__(self, *, master: str, replicas: dict[str, str], api_key: str,
                 history: History, seed: int) -> None:
        self.master, self.replicas, self.history = master, replicas, history
        self.api_headers = {"Authorization": f"Bearer {api_key}"}
        self.seed = seed
        self.slots: list[Slot] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.created = 0
        self.threads: list[threading.Thread] = []

    # --- operations on the master ------------------------------------------------------------

    def _call(self, session: requests.Session, method: str, url: str,
              **kwargs) -> tuple[float, float, requests.Response | None]:
        invoked = time.monotonic()
        try:
            answer = session.request(method, url, timeout=TIMEOUT, **kwargs)
        except requests.RequestException:
            answer = None
        return invoked, time.monotonic(), answer

    @staticmethod
    def _outcome(answer: requests.Response | None) -> str:
        if answer is None or answer.status_code >= 500:
            return "unknown"
        return "ok" if answer.status_code < 300 else "refused"

    def _creating(self, worker: int) -> None:
        session = requests.Session()
        n = 0
        while not self.stop.is_set():
            longurl = f"https://chaos.example/{self.seed}/{worker}/{n}"
            n += 1
            invoked, completed, answer = self._call(session, "PUT", f"{self.master}/create",
                                                    json={"longurl": longurl})
            outcome = self._outcome(answer)
            tinyurl = answer.json()["tinyurl"] if outcome == "ok" else ""
            # The stored form, which replicas send in Location.
            state = State(answer.json()["longurl"] if outcome == "ok" else longurl, True)
            self.history.op(Op(tinyurl, "create", state, invoked, completed, outcome))
            if outcome == "ok":
                with self.lock:
                    self.slots.append(Slot(tinyurl, state, longurl))
                    self.created += 1
            elif outcome == "unknown":
                self.stop.wait(0.2)  # the master is down: do not spin on it

    def _take(self, rng: random.Random) -> Slot | None:
        with self.lock:
            free = [s for s in self.slots[-500:] if not s.busy and not s.frozen]
            if not free:
                return None
            slot = rng.choice(free)
            slot.busy = True
            return slot

    def _changing(self) -> None:
        session = requests.Session()
        rng = random.Random(self.seed + 1)
        api = f"{self.master}/api/v1/links"
        while not self.stop.is_set():
            slot = self._take(rng)
            if slot is None:
                self.stop.wait(0.1)
                continue
            if not slot.state.active:
                kind, state = "putback", State(slot.state.target, True)
                request = ("POST", f"{api}/{slot.tinyurl}/restore", {})
            elif rng.random() < 0.6:
                slot.versions += 1
                target = f"{slot.base}/v{slot.versions}"
                kind, state = "retarget", State(target, True)
                request = ("PATCH", f"{api}/{slot.tinyurl}", {"json": {"longurl": target}})
            else:
                kind, state = "takedown", State(slot.state.target, False)
                request = ("POST", f"{api}/{slot.tinyurl}/takedown", {})
            method, url, kwargs = request
            invoked, completed, answer = self._call(session, method, url,
                                                    headers=self.api_headers, **kwargs)
            outcome = self._outcome(answer)
            if outcome == "ok" and kind == "retarget":
                state = State(answer.json()["longurl"], True)  # the stored form
            self.history.op(Op(slot.tinyurl, kind, state, invoked, completed, outcome))
            with self.lock:
                if outcome == "ok":
                    slot.state = state
                slot.frozen = outcome == "unknown"
                slot.busy = False
            self.stop.wait(0.05)

    # --- redirects on the replicas -----------------------------------------------------------

    def _reading(self, replica: str, url: str, worker: int) -> None:
        session = requests.Session()
        rng = random.Random(f"{self.seed}-{replica}-{worker}")
        while not self.stop.is_set():
            with self.lock:
                slot = rng.choice(self.slots) if self.slots else None
            if slot is None:
                self.stop.wait(0.1)
                continue
            method = "HEAD" if rng.random() < 0.1 else "GET"
            started = time.monotonic()
            try:
                answer = session.request(method, f"{url}/{slot.tinyurl}", allow_redirects=False,
                                         timeout=TIMEOUT)
                status, location = answer.status_code, answer.headers.get("Location")
            except requests.RequestException:
                status, location = None, None
                session.close()
                session = requests.Session()
            self.history.read(Read(replica, slot.tinyurl, method, started, time.monotonic(),
                                   status, location))
            if status is None or status >= 500:
                self.stop.wait(0.1)

    def start(self, *, creators: int = 2, readers: int = 2) -> None:
        targets = [(self._creating, (i,)) for i in range(creators)] + [(self._changing, ())]
        targets += [(self._reading, (name, url, i)) for name, url in self.replicas.items()
                    for i in range(readers)]
        for target, args in targets:
            thread = threading.Thread(target=target, args=args, daemon=True)
            thread.start()
            self.threads.append(thread)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(TIMEOUT + 5)
