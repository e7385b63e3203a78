"""`python -m supervisor.blendfile.child`: parse one untrusted .blend file under hard limits.

`supervisor.blendfile.isolation` starts this ahead of need (starting Python and importing
BAT is most of its cost). It waits for one JSON request line on stdin, caps its own address
space, parses, writes one JSON reply line on stdout and exits: one process per file, so
nothing a hostile file does outlives its parse. What the parse logs at WARNING and above
travels in the reply, for the parent to log under its own configuration.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import resource
import signal
import sys
import traceback
from dataclasses import asdict
from typing import Any

from supervisor.blendfile.reader import parse_scene_range
from supervisor.errors import BlendFileError

_MAX_LOG_RECORDS = 20
_MAX_LOG_CHARS = 300


class _Kept(logging.Handler):
    """The first few records logged in this process, for the reply."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[tuple[str, int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < _MAX_LOG_RECORDS:
            message = record.getMessage()[:_MAX_LOG_CHARS]
            self.records.append((record.name, record.levelno, message))


def limit_resources(memory_limit: int) -> None:
    """Cap the address space at what this process maps now plus `memory_limit`; no cores."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            mapped = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        mapped = 0
    limit = mapped + memory_limit
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def main() -> int:
    """Serve one request; the exit code is 1 when the parser itself failed."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a Ctrl-C meant for the parent ends us quietly
    line = sys.stdin.buffer.readline()
    if not line:
        return 0  # the parent went away without asking
    request = json.loads(line)
    memory_limit = request["memory_limit"]
    kept = _Kept()
    logging.getLogger().addHandler(kept)
    gc.disable()  # short-lived; BAT's DNA objects would trigger full collections
    code = 0
    try:
        limit_resources(memory_limit)
        scene = parse_scene_range(
            request["path"], max_uncompressed_bytes=request["max_uncompressed_bytes"]
        )
        reply: dict[str, Any] = {"ok": asdict(scene)}
    except BlendFileError as exc:
        reply = {"error": str(exc)}
    except MemoryError:
        reply = {"error": f"parsing needs more than {memory_limit} bytes of memory"}
    except BaseException as exc:  # noqa: BLE001 - every failure becomes the reply
        reply = {
            "error": f"parser failed unexpectedly ({type(exc).__name__})",
            "traceback": traceback.format_exc()[-4000:],
        }
        code = 1
    reply["logs"] = kept.records
    sys.stdout.buffer.write(json.dumps(reply).encode() + b"\n")
    sys.stdout.buffer.flush()
    return code


if __name__ == "__main__":
    # Nothing to tear down: skip the interpreter's exit, the reader waits for it.
    os._exit(main())
