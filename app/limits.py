"""Where Flask's and Werkzeug's defaults let a hostile request through, the app draws the line.

- A body without Content-Length (chunked) is held to `MAX_REQUEST_BYTES` like any other:
  413. Werkzeug stops reading such a body at the limit and parses what it read, so a 20 MB
  form became a 64 KB form and a 400 about its truncated field.
- JSON nested deeper than the interpreter's recursion limit is a 400 `Invalid input`, logged
  in one line; the standard library raises RecursionError for it, which was a 500.
- A redirect names a path, never a host. Werkzeug's slash redirects (`//` merged, a missing
  trailing `/`) are absolute URLs built from the request's Host header, which the client
  chooses.

The gunicorn side (slow headers, gunicorn's own errors) is in app/served.py.
"""

from __future__ import annotations

import io
import logging
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

from flask import Flask, Request, Response, has_request_context, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.utils import cached_property

from supervisor.errors import InvalidInput

logger = logging.getLogger(__name__)

TOO_DEEP = "the JSON body is nested too deeply"


def read_at_most(stream: IO[bytes], size: int) -> bytes:
    """Up to `size` bytes of `stream`, fewer only at its end."""
    data = bytearray()
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


class BoundedRequest(Request):
    """A request whose body is refused with 413 when it is longer than
    `max_content_length`, whether or not it announced its length."""

    @cached_property
    def stream(self) -> IO[bytes]:
        limit = self.max_content_length
        if (
            self.shallow
            or limit is None
            or self.content_length is not None
            # Without this the server promises no end to the stream: Werkzeug reads none of it.
            or "wsgi.input_terminated" not in self.environ
        ):
            return super().stream
        # One byte past the limit tells a body of exactly the limit from a longer one.
        body = read_at_most(self.environ["wsgi.input"], limit + 1)
        if len(body) > limit:
            raise RequestEntityTooLarge()
        return io.BytesIO(body)


class DepthLimitedJSONProvider(DefaultJSONProvider):
    """The standard library's JSON, with too deep a body refused as invalid input."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            # InvalidInput is no ValueError: get_json(silent=True) passes it on as a 400.
            logger.warning(
                "request refused",
                extra={
                    "reason": TOO_DEEP,
                    "path": request.path if has_request_context() else None,
                },
            )
            raise InvalidInput(TOO_DEEP) from None


def path_only_location(response: Response) -> Response:
    """Rewrite an absolute (or scheme-relative) Location to the path on the host the client
    asked, so no Host header can send it elsewhere."""
    location = response.headers.get("Location")
    if not location:
        return response
    parts = urlsplit(location)
    if parts.scheme or parts.netloc or parts.path.startswith(("//", "/\\")):
        path = "/" + parts.path.lstrip("/\\")
        response.headers["Location"] = urlunsplit(("", "", path, parts.query, parts.fragment))
    return response


def install_limits(app: Flask) -> None:
    """Before anything else touches `app.json`: it is replaced here."""
    app.request_class = BoundedRequest
    app.json = DepthLimitedJSONProvider(app)
    app.after_request(path_only_location)
