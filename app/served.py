"""The gunicorn worker of the Procfile's `web` process: `--worker-class app.served.Worker`.

gunicorn's gthread worker hands a connection to one of its threads as soon as the first
bytes arrive, and the thread then waits for the rest of the headers: forty connections
sending a header line every five seconds held every thread, and status requests timed out.
This worker is gunicorn's own asyncio worker (`asgi`): an event loop reads and parses every
connection, with gunicorn's limits on the request line and headers, and only a complete
request reaches the app. The Flask app runs on `--threads` threads behind a2wsgi's
WSGI-to-ASGI adapter, so the app keeps a few long-lived threads (supervisor/db.py keeps one
read connection per thread). Measurements and the alternatives tried: docs/RELIABILITY.md,
"Hostile traffic".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from a2wsgi import WSGIMiddleware
from gunicorn.workers.gasgi import ASGIWorker

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def input_terminated(app: WSGIApp) -> WSGIApp:
    """Mark the body stream as ending with the request's body: a2wsgi's stream does (the
    ASGI server frames it, chunked or not). Werkzeug reads a body without Content-Length
    only when told so, and then holds it to MAX_CONTENT_LENGTH (app/limits.py)."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        environ["wsgi.input_terminated"] = True
        return app(environ, start_response)

    return wrapped


class Worker(ASGIWorker):
    """gunicorn's asyncio worker serving the WSGI app on `cfg.threads` threads."""

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """`--threads` sizes the app's thread pool here; the parent warns that it is unused."""

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self.asgi = WSGIMiddleware(input_terminated(self.asgi), workers=self.cfg.threads)
