"""/create while Kafka accepts connections and never answers: every request gets its 503, and a
burst gets it together. The producer is made under a lock; the requests that waited for one
failed attempt used to make their own in turn, one publish timeout each."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from testkit import MasterWeb

PUBLISH_TIMEOUT = 2.0


def test_a_burst_of_creates_during_a_kafka_outage_fails_together(transactional_db,
                                                                  test_data_dir):
    silent = socket.socket()  # the kernel completes the handshake; nothing ever answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    web = MasterWeb(test_data_dir, workers=1,
                    KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{silent.getsockname()[1]}",
                    SHORTENER_PUBLISH_TIMEOUT=str(PUBLISH_TIMEOUT))
    try:
        def create(i: int) -> tuple[int, float]:
            started = time.monotonic()
            response = requests.put(f"{web.url}/create", json={"longurl": f"https://x.com/{i}"},
                                    timeout=60)
            return response.status_code, time.monotonic() - started

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(create, range(6)))
        assert [status for status, _ in answers] == [503] * 6
        # One attempt, shared: the slowest waits about one publish timeout for the producer
        # (and perhaps one more if it arrived after that attempt ended), never six in turn.
        assert max(took for _, took in answers) < 3 * PUBLISH_TIMEOUT + 2, answers
    finally:
        web.close()
        silent.close()
