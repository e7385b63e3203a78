"""One HTTP server for the four HTTP peers (catalog, Blob Service, User Service, User Manager
registration) under their contract prefixes, plus `/simulator/...` pages for inspection and
fault injection.

Connections are kept alive (HTTP/1.1, as the real peers). Bodies are streamed: downloads
with sendfile(2), multipart uploads parsed 1 MiB at a time (simulator/multipart.py) straight
into a spool file that is then renamed into its bucket.

Injected faults are decided once per request, by the request handler, before any of the
request's body is read: `down` closes the connection there without any response; `error` and
counted failures reach the application as `environ["simulator.fault"]` (a `Refusal`) and are
answered with their status, nothing done. With the journal on (tests), the application keeps
each peer request, body included, before answering it (simulator/journal.py).
"""

from __future__ import annotations

import html
import http.client
import json
import logging
import os
import re
import socket
import struct
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

from werkzeug.datastructures import FileStorage, Headers
from werkzeug.exceptions import (
    BadRequest,
    ClientDisconnected,
    HTTPException,
    RequestEntityTooLarge,
)
from werkzeug.formparser import FormDataParser
from werkzeug.routing import Map, Rule
from werkzeug.serving import BaseWSGIServer, DechunkedInput, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response
from werkzeug.wsgi import FileWrapper, LimitedStream, wrap_file

from simulator.blobs import (
    BLEND_BUCKET,
    CHUNK_BYTES,
    FRAMES_BUCKET,
    TEMP_BUCKET,
    BadKey,
    UnknownBucket,
    check_key,
)
from simulator.catalog import OBJECT_STATES
from simulator.faults import (
    INJECTED_MESSAGE,
    RESTART_MODE,
    SERVICE_PREFIXES,
    Faults,
    Refusal,
    check_fault,
    service_of,
)
from simulator.multipart import FormTooLarge, MultipartError, parse_form
from simulator.users import BadMessage, NoAnswer

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from simulator.core import Simulator

logger = logging.getLogger(__name__)

CATALOG = "/api/mongodb-service/blender-objects"
BLOB = "/api/blob-service"
USER_SERVICE = "/api/user-service/user"
USER_MANAGER = "/api/user-manager/session-supervisor"
MAX_ID_CHARS = 256
FAULT_KEY = "simulator.fault"
FORM_READ_BYTES = 1024 * 1024
KEEP_ALIVE_SECONDS = 30  # an idle kept connection's thread ends after this
_FINAL_NAME = re.compile(r"(-?\d+)\.([A-Za-z0-9]{1,10})")
_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "exr": "image/x-exr"}
_IMAGE_TYPE = re.compile(r"[A-Za-z0-9]{1,10}")

URL_MAP = Map(
    [
        Rule(f"{CATALOG}/get-blend-file-name/<object_id>", methods=["GET"], endpoint="blend_name"),
        Rule(f"{CATALOG}/add-rendered-image", methods=["POST"], endpoint="add_rendered_image"),
        Rule(f"{CATALOG}/change-state", methods=["PUT"], endpoint="change_state"),
        Rule(f"{BLOB}/retrieve-blend", methods=["GET"], endpoint="retrieve_blend"),
        Rule(f"{BLOB}/retrieve-temp", methods=["GET"], endpoint="retrieve_temp"),
        Rule(f"{BLOB}/retrieve-image", methods=["GET"], endpoint="retrieve_image"),
        Rule(f"{BLOB}/delete-temp", methods=["DELETE"], endpoint="delete_temp"),
        Rule(f"{BLOB}/store-image", methods=["POST"], endpoint="store_image"),
        Rule(f"{USER_SERVICE}/send-msg-to-user", methods=["POST"], endpoint="send"),
        Rule(
            f"{USER_SERVICE}/send-msg-to-user-with-acknowledgement",
            methods=["POST"],
            endpoint="send_with_ack",
        ),
        Rule(
            f"{USER_SERVICE}/send-msg-to-user-with-acknowledgment",
            methods=["POST"],
            endpoint="send_with_ack_misspelled",
        ),
        Rule(f"{USER_MANAGER}/new-session", methods=["POST"], endpoint="new_session"),
        Rule(f"{USER_MANAGER}/cleanup-session", methods=["DELETE"], endpoint="cleanup_session"),
        Rule("/simulator/state", methods=["GET"], endpoint="state"),
        Rule("/simulator/faults", methods=["GET"], endpoint="faults"),
        Rule("/simulator/faults", methods=["POST"], endpoint="inject_fault"),
        Rule("/simulator/faults", methods=["DELETE"], endpoint="clear_faults"),
        Rule("/simulator/frames/<path:key>", methods=["GET"], endpoint="frame"),
        Rule("/simulator/", methods=["GET"], endpoint="gallery"),
    ],
    merge_slashes=False,
)


def _json(status: int, body: Any) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


def _error(status: int, message: str) -> Response:
    return _json(status, {"message": message})


def _final_key_problem(key: str, kind: str) -> str | None:
    """Why `key` is not `<customer_id>/<object_id>/<frame>.<type>` with the frame formatted
    as `{:03d}` (CONTRACT.md section 3), or None. Stricter than the real service on purpose:
    a supervisor that passes here sends what the catalog's readers expect."""
    parts = key.split("/")
    match = _FINAL_NAME.fullmatch(parts[-1])
    if len(parts) != 3 or match is None:
        return "key must be <customer_id>/<object_id>/<frame>.<ext>"
    frame, ext = match.groups()
    if f"{int(frame):03d}" != frame:
        return "the frame in the key must be zero-padded to at least 3 digits"
    if not kind or kind != ext:
        return "type must be the key's extension"
    return None


class _StreamingFormParser(FormDataParser):
    """werkzeug's form parser with multipart bodies parsed by simulator/multipart.py, which
    finds each upload's fresh boundary without compiling a pattern for it, reading the body
    `FORM_READ_BYTES` (1 MiB) at a time so a large frame costs few reads. A malformed body
    is a 400 saying why, not the empty form werkzeug's silent parser leaves."""

    def _parse_multipart(
        self,
        stream: IO[bytes],
        mimetype: str,
        content_length: int | None,
        options: dict[str, str],
    ) -> tuple[IO[bytes], Any, Any]:
        boundary = options.get("boundary", "").encode("latin-1", "replace")

        def open_file(name: str, filename: str, headers: Headers) -> IO[bytes]:
            return self.stream_factory(
                total_content_length=content_length,
                content_type=headers.get("content-type"),
                filename=filename,
                content_length=0,
            )

        try:
            form = parse_form(
                stream.read,
                boundary,
                open_file,
                read_bytes=FORM_READ_BYTES,
                max_field_bytes=self.max_form_memory_size,
                max_parts=self.max_form_parts,
            )
        except FormTooLarge as exc:
            raise RequestEntityTooLarge(str(exc)) from exc
        except MultipartError as exc:
            raise BadRequest(f"malformed multipart/form-data body: {exc}") from exc
        files = [
            (part.name, FileStorage(part.stream, part.filename, part.name, headers=part.headers))
            for part in form.files
        ]
        return stream, self.cls(form.fields), self.cls(files)


class UploadRequest(Request):
    """A request whose uploaded files are parsed straight into spool files on the data disk."""

    form_data_parser_class = _StreamingFormParser
    max_form_memory_size = 4 * FORM_READ_BYTES  # per field held in memory

    def __init__(self, environ: WSGIEnvironment, spool: Path) -> None:
        super().__init__(environ)
        self._spool = spool
        self.spooled: list[tuple[IO[bytes], Path]] = []

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed by close()
            prefix="upload-", suffix=".part", dir=self._spool, delete=False
        )
        self.spooled.append((handle, Path(handle.name)))
        return handle

    def spool_path(self, stream: IO[bytes]) -> Path:
        return next(path for handle, path in self.spooled if handle is stream)

    def close(self) -> None:
        super().close()
        for handle, path in self.spooled:
            handle.close()
            path.unlink(missing_ok=True)


class SimulatorApp:
    """The WSGI application; every handler reads and changes state through the Simulator."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.faults: Faults = sim.faults
        self.journal = sim.journal
        self.real = sim.config.real_peers

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = UploadRequest(environ, self.sim.blobs.spool)
        try:
            if self.journal is not None and service_of(request.path) is not None:
                # Cached, so the handlers parse the same bytes again.
                body = request.get_data(cache=True, parse_form_data=False)
                self.journal.record(request, body)
            refusal: Refusal | None = environ.get(FAULT_KEY)
            if refusal is not None and refusal.status is not None:
                response = _error(refusal.status, INJECTED_MESSAGE)
            else:
                response = self._dispatch(request)
        finally:
            request.close()
        return response(environ, start_response)

    def _dispatch(self, request: UploadRequest) -> Response:
        adapter = URL_MAP.bind_to_environ(request.environ)
        try:
            endpoint, args = adapter.match()
            handler: Callable[..., Response] = getattr(self, f"on_{endpoint}")
            return handler(request, **args)
        except HTTPException as exc:
            return _error(exc.code or 500, exc.description or exc.name)
        except BadKey as exc:
            return _error(400, f"bad key: {exc}")
        except Exception:
            logger.exception("request failed", extra={"event": "http-error", "path": request.path})
            return _error(500, "Internal server error")

    # ---------------------------------------------------------------- catalog

    def on_blend_name(self, request: Request, object_id: str) -> Response:
        found = self.sim.catalog.lookup(request.args.get("customer_id", ""), object_id)
        if found is None:
            return _error(404, "Object not found")
        return _json(200, found.as_json())

    def on_add_rendered_image(self, request: Request) -> Response:
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or any(
            body.get(name) in (None, "") for name in ("objectId", "customerId", "imageFilePath")
        ):
            return _error(400, "objectId, customerId, frameNumber and imageFilePath are required")
        if isinstance(body.get("frameNumber"), bool) or not isinstance(
            body.get("frameNumber"), int | str
        ):
            return _error(400, "frameNumber must be a number")
        self.sim.catalog.record(body)
        return _json(200, {"message": "Rendered image added"})

    def on_change_state(self, request: Request) -> Response:
        """Checked in the real service's order: fields, then the state, then the customer,
        then the object."""
        body = request.get_json(silent=True)
        fields = ("objectId", "customerId", "objectState")
        if not isinstance(body, dict) or any(not isinstance(body.get(f), str) for f in fields):
            return _error(400, "objectId, customerId and objectState are required")
        customer_id, object_id, state = (body[f] for f in ("customerId", "objectId", "objectState"))
        if state not in OBJECT_STATES:
            return _error(400, f"Invalid objectState. Must be one of: {', '.join(OBJECT_STATES)}")
        unknown = self.sim.catalog.change_state(customer_id, object_id, state)
        if unknown == "customer":
            return _error(404, "Customer not found")
        if unknown == "object":
            return _error(404, "Blender object not found")
        answer = {
            "message": "Object state updated successfully",
            "objectId": object_id,
            "customerId": customer_id,
            "objectState": state,
            "success": True,
        }
        return _json(200, answer)

    # ---------------------------------------------------------------- blob service

    def _send_blob(self, request: Request, bucket: str, key: str | None) -> Response:
        path = self.sim.blobs.path(bucket, check_key(key))
        mimetype = _TYPES.get(path.suffix.lstrip(".").lower(), "application/octet-stream")
        return self._stream(request, path, mimetype) or _error(404, "No such blob")

    @staticmethod
    def _stream(request: Request, path: Path, mimetype: str) -> Response | None:
        """The file at `path` as a streamed body of known length; None when there is none."""
        try:
            handle = path.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        size = os.fstat(handle.fileno()).st_size
        body = wrap_file(request.environ, handle, buffer_size=CHUNK_BYTES)
        response = Response(body, mimetype=mimetype, direct_passthrough=True)
        response.content_length = size
        return response

    def on_retrieve_blend(self, request: Request) -> Response:
        if request.args.get("bucket") != BLEND_BUCKET:
            return _error(400, f"bucket must be {BLEND_BUCKET}")
        return self._send_blob(request, BLEND_BUCKET, request.args.get("key"))

    def on_retrieve_temp(self, request: Request) -> Response:
        return self._send_blob(request, TEMP_BUCKET, request.args.get("key"))

    def on_retrieve_image(self, request: Request) -> Response:
        """As the real route: `.<type>` (default png) is appended to a key not already ending
        in it; the bytes go out as `image/<type>`, whatever the type; anything not found is
        404 `{"error": ...}`. Any bucket we have is read, `rendered-frames` being the one the
        supervisor reads back. Missing parameters are FastAPI's 422. A type that is not a
        plain extension, a bad key or an unknown bucket find nothing here."""
        missing = [name for name in ("bucket", "key") if name not in request.args]
        if missing:
            detail = [
                {"type": "missing", "loc": ["query", n], "msg": "Field required"} for n in missing
            ]
            return _json(422, {"detail": detail})
        bucket, key = request.args["bucket"], request.args["key"]
        kind = request.args.get("type", "png")
        if not key.endswith(f".{kind}"):
            key = f"{key}.{kind}"
        response = None
        if _IMAGE_TYPE.fullmatch(kind):
            try:
                path = self.sim.blobs.path(bucket, key)
            except (BadKey, UnknownBucket):
                path = None
            if path is not None:
                response = self._stream(request, path, f"image/{kind}")
        if response is None:
            return _json(404, {"error": f"no object {key!r} in bucket {bucket!r}"})
        return response

    def on_delete_temp(self, request: Request) -> Response:
        if not self.sim.blobs.delete(TEMP_BUCKET, check_key(request.args.get("key"))):
            return _error(404, "No such blob")
        return _json(200, {"message": "Deleted"})

    def on_store_image(self, request: UploadRequest) -> Response:
        form, image = request.form, request.files.get("image")
        if form.get("bucket") != FRAMES_BUCKET:
            return _error(400, f"bucket must be {FRAMES_BUCKET}")
        key = check_key(form.get("key"))
        problem = _final_key_problem(key, form.get("type", ""))
        if problem:
            return _error(400, problem)
        if image is None:
            return _error(400, "file field 'image' is required")
        image.stream.flush()
        self.sim.blobs.adopt(FRAMES_BUCKET, key, request.spool_path(image.stream))
        self.sim.count_store(key)
        logger.info("frame stored", extra={"event": "frame-stored", "key": key})
        return _json(200, {"message": "Image stored"})

    # ---------------------------------------------------------------- user service

    def _message(self, request: Request) -> tuple[str, str, dict[str, Any]] | Response:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return _error(400, "body must be a JSON object")
        user_id, topic, data = body.get("user_id"), body.get("topic"), body.get("data")
        if not isinstance(user_id, str) or not isinstance(topic, str) or not isinstance(data, dict):
            return _error(400, "user_id and topic must be strings, data an object")
        return user_id, topic, data

    def _deliver(self, request: Request) -> bool | Response | None:
        parsed = self._message(request)
        if isinstance(parsed, Response):
            return parsed
        try:
            outcome = self.sim.users.deliver(*parsed)
        except BadMessage as exc:
            return _error(400, str(exc))
        if outcome is None and not self.real:
            return _error(404, "User not connected")
        return outcome

    def on_send(self, request: Request) -> Response:
        """The real User Service emits to the node's socket id and answers 200 whether or not
        such a node is connected; the ideal one answers 404 for an unknown user. A hung node
        takes the message without a word, as a plain send wants."""
        try:
            outcome = self._deliver(request)
        except NoAnswer:
            outcome = True
        if isinstance(outcome, Response):
            return outcome
        return _json(200, {"status": 200, "message": "Message sent to user"})

    def on_send_with_ack(self, request: Request) -> Response:
        """The real User Service answers with the node's own answer to the call, a bare JSON
        `true` or `false`; the ideal one wraps it. A test's override
        (`Simulator.override_acknowledgement`) stands for every node's answer."""
        try:
            outcome = self._deliver(request)
        except NoAnswer:
            outcome = None  # a hung node, which the call waits for in vain
        if isinstance(outcome, Response):
            return outcome
        override = self.sim.acknowledgement_override
        if override is not None:
            outcome = override
        if outcome is None:
            # The real call to a socket nobody holds, or to a hung node, times out inside the
            # User Service.
            return _json(500, {"detail": "Internal Server Error"})
        return _json(200, outcome if self.real else {"acknowledged": outcome})

    def on_send_with_ack_misspelled(self, request: Request) -> Response:
        """The path without the e, which the original supervisor calls: the real User Service
        has no such route (FastAPI's 404); the ideal one takes both spellings."""
        if self.real:
            return _json(404, {"detail": "Not Found"})
        return self.on_send_with_ack(request)

    # ---------------------------------------------------------------- user manager

    def on_new_session(self, request: Request) -> Response:
        session_id = request.form.get("session_supervisor_id", "")
        count = request.form.get("user_count", "")
        if not session_id or len(session_id) > MAX_ID_CHARS or not count.isdigit():
            return _error(400, "session_supervisor_id and a numeric user_count are required")
        self.sim.user_manager.register(session_id, int(count))
        # The real route returns nothing, which FastAPI sends as `null`.
        return _json(200, None if self.real else {"message": "Session registered"})

    def on_cleanup_session(self, request: Request) -> Response:
        session_id = request.form.get("session_supervisor_id", "")
        if not session_id or len(session_id) > MAX_ID_CHARS:
            return _error(400, "session_supervisor_id is required")
        self.sim.user_manager.cleanup(session_id)
        return _json(200, {"message": "Session supervisor cleaned up successfully"})

    # ---------------------------------------------------------------- inspection

    def on_state(self, request: Request) -> Response:
        return _json(200, self.sim.state())

    def on_faults(self, request: Request) -> Response:
        return _json(200, self.faults.snapshot())

    def on_inject_fault(self, request: Request) -> Response:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return _error(400, "body must be a JSON object with service, mode and seconds")
        if "path" in body:
            return self._fail_next(body)
        service, mode, seconds = body.get("service"), body.get("mode"), body.get("seconds")
        if mode == RESTART_MODE:
            return self._restart(service)
        try:
            check_fault(service, mode, seconds)
        except ValueError as exc:
            return _error(400, str(exc))
        self.sim.inject_fault(service, mode, seconds)
        fault = {"service": service, "mode": mode, "seconds": seconds}
        return _json(200, {"message": "Fault injected", "fault": fault})

    def _fail_next(self, body: dict[str, Any]) -> Response:
        """A counted failure: `{"path": suffix, "status": 503, "times": 1}` (see
        Faults.fail_next; status and times take those defaults)."""
        path, status, times = body["path"], body.get("status", 503), body.get("times", 1)
        try:
            self.faults.fail_next(path, status, times)
        except ValueError as exc:
            return _error(400, str(exc))
        failure = {"path": path, "status": status, "times": times}
        return _json(200, {"message": "Failure injected", "failure": failure})

    def _restart(self, service: object) -> Response:
        """A restart is a moment, not a while: it takes no seconds."""
        if service != "user-manager":
            return _error(400, f"mode {RESTART_MODE} is for the user-manager only")
        reset = self.sim.restart_user_manager()
        fault = {"service": service, "mode": RESTART_MODE}
        return _json(200, {"message": "Fault injected", "fault": fault, "users_reset": reset})

    def on_clear_faults(self, request: Request) -> Response:
        service = request.args.get("service")
        if service is not None and service not in SERVICE_PREFIXES:
            return _error(400, f"service must be one of {', '.join(SERVICE_PREFIXES)}")
        return _json(200, {"message": "Faults cleared", "cleared": self.faults.clear(service)})

    def on_frame(self, request: Request, key: str) -> Response:
        return self._send_blob(request, FRAMES_BUCKET, key)

    def on_gallery(self, request: Request) -> Response:
        items = "".join(
            f'<figure><img src="/simulator/frames/{html.escape(key)}">'
            f"<figcaption>{html.escape(key)}</figcaption></figure>"
            for key in self.sim.blobs.keys(FRAMES_BUCKET)
        )
        page = (
            "<!doctype html><title>Simulator frames</title>"
            '<p><a href="/simulator/state">state</a></p>'
            f'<div style="display:flex;flex-wrap:wrap;gap:8px">{items}</div>'
        )
        return Response(page, mimetype="text/html")


class _SendFile(FileWrapper):
    """The server's `wsgi.file_wrapper` (PEP 3333): `wrap_file` bodies of a known length are
    sent with sendfile(2) by the handler; iterated like werkzeug's otherwise."""


class _RequestHeaders(http.client.HTTPMessage):
    """A request's headers as http.server parses them, with a multipart boundary the email
    parser does not see: it takes a multipart Content-Type as the start of a MIME body and
    compiles a pattern for its boundary, a fresh one with every upload (8% of the
    simulator's CPU in a run of 4 KiB uploads), to split a body it is never given. werkzeug
    reads the Content-Type from the environ, not from here."""

    def get_boundary(self, failobj: Any = None) -> Any:
        return failobj


class _KeepAliveHandler(WSGIRequestHandler):
    """HTTP/1.1 with keep-alive, as the real peers speak it: werkzeug's development handler
    closes every connection, so each request cost a TCP connection on both sides and a
    server thread. The request body is framed by its Content-Length (the rest is read and
    discarded after the response, so the next request starts at its request line), the
    response by its Content-Length or chunked encoding. A chunked request body, an error
    after the headers went out, or a client's `Connection: close` ends the connection.

    Access lines go to our logger at DEBUG; injected faults apply before the application
    sees the request."""

    protocol_version = "HTTP/1.1"
    MessageClass = _RequestHeaders
    timeout = KEEP_ALIVE_SECONDS
    disable_nagle_algorithm = True  # a body written after its headers must not wait for an ACK
    _fault: Refusal | None = None
    _headers_sent = False

    def log(self, type: str, message: str, *args: Any) -> None:
        logger.debug(message, *args, extra={"event": "http", "level_hint": type})

    def run_wsgi(self) -> None:
        faults: Faults | None = getattr(self.server.app, "faults", None)
        self._fault = faults.refuse(urlsplit(self.path).path) if faults else None
        if self._fault is not None and self._fault.mode == "down":
            self._drop()
            return
        environ = self.make_environ()
        if isinstance(environ["wsgi.input"], DechunkedInput):
            self.close_connection = True
            body = None
        else:
            body = LimitedStream(self.rfile, int(environ.get("CONTENT_LENGTH") or 0))
            environ["wsgi.input"] = body
        try:
            self._respond(environ)
            if body is not None:
                body.exhaust()
        except (ConnectionError, TimeoutError, ClientDisconnected):
            self.close_connection = True

    def _respond(self, environ: WSGIEnvironment) -> None:
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None):  # type: ignore[no-untyped-def]
            if exc_info and self._headers_sent:
                raise exc_info[1].with_traceback(exc_info[2])
            started[:] = [status, headers]
            return self._refuse_write

        self._headers_sent = False
        try:
            result = self.server.app(environ, start_response)
        except Exception:
            logger.exception("application failed", extra={"event": "http-error", "path": self.path})
            self._send_server_error()
            return
        try:
            if isinstance(result, _SendFile) and self._send_file(environ, result, *started):
                return
            chunked = False
            for data in result:
                if not self._headers_sent:
                    chunked = self._send_headers(environ, *started)
                if data:
                    self._write_body(data, chunked)
            if not self._headers_sent:
                chunked = self._send_headers(environ, *started)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except (ConnectionError, TimeoutError):
            raise
        except Exception:
            logger.exception("response failed", extra={"event": "http-error", "path": self.path})
            if self._headers_sent:
                self.close_connection = True
            else:
                self._send_server_error()
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    def _send_file(
        self, environ: WSGIEnvironment, body: _SendFile, status: str, headers: list[Any]
    ) -> bool:
        """A whole file of declared length goes out with sendfile(2), without passing through
        Python; False (nothing sent) when the response does not fit that."""
        declared = next((v for k, v in headers if k.lower() == "content-length"), None)
        if declared is None or environ["REQUEST_METHOD"] == "HEAD" or not body.file.seekable():
            return False
        self._send_headers(environ, status, headers)
        sent = self.connection.sendfile(body.file, body.file.tell(), int(declared))
        if sent != int(declared):  # the file shrank under us: the framing is broken
            self.close_connection = True
        return True

    def _send_headers(self, environ: WSGIEnvironment, status: str, headers: list[Any]) -> bool:
        """Status line and headers; True when the body must go chunked (no length given)."""
        code, _, reason = status.partition(" ")
        self.send_response(int(code), reason)
        names = set()
        for name, value in headers:
            names.add(name.lower())
            self.send_header(name, value)
        chunked = not (
            "content-length" in names
            or environ["REQUEST_METHOD"] == "HEAD"
            or int(code) < 200
            or int(code) in (204, 304)
        )
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self._headers_sent = True
        return chunked

    def _write_body(self, data: bytes, chunked: bool) -> None:
        if chunked:
            self.wfile.write(b"%x\r\n" % len(data) + data + b"\r\n")
        else:
            self.wfile.write(data)

    def _send_server_error(self) -> None:
        body = b"Internal server error"
        headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        self._send_headers({"REQUEST_METHOD": "GET"}, "500 Internal Server Error", headers)
        self.wfile.write(body)

    @staticmethod
    def _refuse_write(data: bytes) -> None:
        raise NotImplementedError("the simulator's application returns its body")

    def make_environ(self) -> WSGIEnvironment:
        environ = super().make_environ()
        environ[FAULT_KEY] = self._fault
        environ["wsgi.file_wrapper"] = _SendFile
        return environ

    def _drop(self) -> None:
        """Close the connection without a byte of response (SO_LINGER 0: no lingering, any
        unread body is reset), so the client gets what an unreachable peer gives: a connection
        error, never a status."""
        logger.debug(
            "connection dropped by fault", extra={"event": "fault-drop", "path": self.path}
        )
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            logger.debug("cannot set SO_LINGER", exc_info=True)


class HttpServer:
    """The WSGI server in a thread; `stop()` shuts it down and closes its socket."""

    def __init__(self, sim: Simulator, host: str, port: int) -> None:
        self._server: BaseWSGIServer = make_server(
            host, port, SimulatorApp(sim), threaded=True, request_handler=_KeepAliveHandler
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="sim-http"
        )

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(10)
        self._server.server_close()
