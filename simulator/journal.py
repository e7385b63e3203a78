"""A journal of the HTTP requests the peers received, for tests that check what a client sent:
method, path, query, headers and the whole body, in arrival order.

Off unless `SimulatorConfig(journal=True)`: it keeps every body in memory, which a demo or a
benchmark moving gigabytes of frames must not. Requests to the `/simulator/` pages are not
kept, nor those a `down` fault dropped (a peer that is down receives nothing); requests
answered by an injected `error` or counted failure are, as the peer received them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

if TYPE_CHECKING:
    from werkzeug.wrappers import Request


@dataclass(frozen=True)
class Call:
    """One request as received. `query` keeps every value of a repeated name; `headers` has
    lower-case names."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


class Journal:
    """Thread-safe, in arrival order; `clear` empties it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[Call] = []

    def record(self, request: Request, body: bytes) -> None:
        call = Call(
            method=request.method,
            path=request.path,
            query=parse_qs(request.query_string.decode("latin-1"), keep_blank_values=True),
            headers={name.lower(): value for name, value in request.headers.items()},
            body=body,
        )
        with self._lock:
            self._calls.append(call)

    def calls(self, path_suffix: str = "") -> list[Call]:
        """The requests whose path ends with `path_suffix` (all of them by default)."""
        with self._lock:
            return [call for call in self._calls if call.path.endswith(path_suffix)]

    def clear(self) -> None:
        with self._lock:
            self._calls.clear()
