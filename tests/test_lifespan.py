"""runtime/lifespan.py on its own (no service): the startup freezes what is loaded out of the
garbage collector, and the shutdown is acknowledged only once the application has closed."""

from __future__ import annotations

import asyncio
import gc


def test_startup_freezes_and_shutdown_waits_for_close():
    from runtime.lifespan import lifespan_serve

    events: list[str] = []
    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def receive() -> dict:
        return next(incoming)

    async def send(message: dict) -> None:
        events.append(message["type"])
        if message["type"] == "lifespan.startup.complete":
            events.append(f"frozen={gc.get_freeze_count() > 0}")

    async def close() -> None:
        await asyncio.sleep(0)  # a real close awaits something
        events.append("closed")

    try:
        asyncio.run(lifespan_serve(receive, send, close=close))
    finally:
        gc.unfreeze()
    assert events == ["lifespan.startup.complete", "frozen=True", "closed",
                      "lifespan.shutdown.complete"]
