"""The ASGI lifespan protocol as both roles' web applications speak it (links/asgi.py,
redirects/asgi.py; Django's own application does not speak it): at startup, what the process
has loaded frozen out of the garbage collector; at shutdown, the application's own closing."""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable


async def lifespan_serve(receive: Callable, send: Callable, *,
                         close: Callable[[], Awaitable[None]],
                         gc_thresholds: tuple[int, int, int] | None = None) -> None:
    """Answer the server's lifespan messages until shutdown; `close()` is awaited at shutdown,
    before it is acknowledged. `gc_thresholds`: the collector's thresholds from startup on
    (gc.set_threshold), if the application sets its own (the master's: links/asgi.py)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            # Everything loaded so far (Django, settings, modules: about 70,000 objects in a
            # replica) lives as long as the process: keep it out of the garbage collector's full
            # collections, which would otherwise walk all of it every so many requests, a
            # pause of milliseconds for the requests in flight.
            gc.collect()
            gc.freeze()
            if gc_thresholds is not None:
                gc.set_threshold(*gc_thresholds)
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await close()
            await send({"type": "lifespan.shutdown.complete"})
            return
