"""supervisord event listener (stack/supervisor/render.py): prints every program's output on
the terminal, one line at a time, prefixed by the program's name.

usage (in supervisord's configuration): python prefix.py WIDTH, subscribed to PROCESS_LOG.
supervisord hands output over in chunks that need not end at a line's end, so the unfinished
part of each (program, channel) waits here for the rest of its line. Written to stderr: stdout
is the listener protocol's channel (supervisor.childutils).
"""

from __future__ import annotations

import sys

from supervisor import childutils


def main(width: int) -> None:
    pending: dict[tuple[str, str], str] = {}
    while True:
        headers, payload = childutils.listener.wait(sys.stdin, sys.stdout)
        if headers.get("eventname", "").startswith("PROCESS_LOG"):
            meta, data = childutils.eventdata(payload)
            key = (meta.get("processname", "?"), meta.get("channel", ""))
            *lines, rest = (pending.pop(key, "") + data).split("\n")
            if rest:
                pending[key] = rest
            for line in lines:
                sys.stderr.write(f"{key[0]:<{width}} | {line}\n")
            sys.stderr.flush()
        childutils.listener.ok(sys.stdout)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
