"""Synchronous HTTP clients for the peers in CONTRACT.md sections 2-5.

All clients of one `Peers` bundle share one `requests.Session`, so connections are
reused. Retries happen in urllib3 (`Retry` on the session's adapters), decided per
method and endpoint:

* GET and DELETE (get-blend-file-name, retrieve-blend, retrieve-temp, delete-temp,
  cleanup-session) are idempotent: retried on connection errors, timeouts and HTTP 500/502/503/504.
* POST store-image writes a fixed key (a repeat overwrites the same object) and POST
  new-session registers the same supervisor id again, which the User Manager treats
  idempotently: an adapter mounted on exactly these two URLs retries them on connection
  errors, timeouts and 502/503/504. The upload body can be rewound, so a retry resends
  it whole (a transfer's body, streamed from the temp blob, is fetched again for it).
* Every other POST or PUT (add-rendered-image, change-state, send-msg-to-user[-with-
  acknowledgement]) is
  retried only when no connection could be made, when nothing reached the peer yet.
  After that, a repeat could record an image twice or deliver a message twice, so the
  failure goes to the caller as a transient `PeerError` to decide.
* Retry-After is ignored so that a peer cannot stall a worker past `backoff_max`;
  longer waits belong to the caller (Celery's task retry).

Failures raise `PeerError` naming the peer and operation. Connection errors, timeouts,
5xx, 408 and 429 are transient, other statuses are not. Details are clipped and never
carry whole bodies. One bundle may serve several threads: urllib3's pools are
thread-safe and the session keeps no cookies.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from http.cookiejar import DefaultCookiePolicy
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any, BinaryIO, ClassVar, Protocol
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import MaxRetryError, NewConnectionError
from urllib3.exceptions import TimeoutError as Urllib3Timeout
from urllib3.fields import RequestField
from urllib3.util.retry import Retry

from supervisor.config import Settings
from supervisor.errors import InvalidInput, ObjectNotRenderable, PeerError
from supervisor.keys import (
    MAX_ID_CHARS,
    check_id,
    check_int,
    check_text,
    has_control,
    validate_blob_key,
    validate_extension,
)

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024
# One read-then-send step of an upload: a GiB is 512 steps, so per-step Python and
# syscall costs vanish (1, 2 and 4 MiB measured alike), and two steps' worth is the
# memory an upload holds.
UPLOAD_CHUNK_BYTES = 2 * 1024 * 1024
MAX_JSON_BYTES = 1024 * 1024
DETAIL_CHARS = 200

Timeout = float | tuple[float, float]

_OBJECT_REPR = re.compile(r"<[^<>]* object at 0x[0-9a-fA-F]+>:?\s*")
_TRANSIENT_STATUSES = frozenset({408, 429})
_CONTENT_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "exr": "image/x-exr",
    "tif": "image/tiff",
    "tiff": "image/tiff",
    "bmp": "image/bmp",
    "webp": "image/webp",
    "tga": "image/x-tga",
    "hdr": "image/vnd.radiance",
}
_ACK_KEYS = ("acknowledged", "acknowledgement", "acknowledgment", "ack", "success", "ok")
_ACK_WORDS = frozenset(
    {"true", "yes", "ok", "ack", "acked", "acknowledged", "success", "received", "delivered", "1"}
)
_NOT_JSON = object()


# ---------------------------------------------------------------- helpers


def _clip(text: str, limit: int = DETAIL_CHARS) -> str:
    """One line, no control characters, at most `limit` characters."""
    cleaned = " ".join("".join(" " if has_control(ch) else ch for ch in text).split())
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."


def _describe_exception(exc: BaseException) -> str:
    """Say what went wrong in transport terms, without URLs or object reprs."""
    root: BaseException = exc
    for _ in range(6):
        if isinstance(root, MaxRetryError) and root.reason is not None:
            root = root.reason
        elif root.args and isinstance(root.args[0], BaseException):
            root = root.args[0]
        else:
            break
    if isinstance(root, NewConnectionError):
        kind = "connection failed"
    elif isinstance(exc, requests.Timeout) or isinstance(root, (Urllib3Timeout, TimeoutError)):
        kind = "timed out"
    else:
        kind = "connection failed"
    name = type(root).__name__
    message = _OBJECT_REPR.sub("", str(root))
    return _clip(f"{kind}: {name}: {message}" if message else f"{kind}: {name}")


def _is_ack_value(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str):
        return value.strip().lower() in _ACK_WORDS
    return False


def _is_ack(payload: Any, *, nested: bool = False) -> bool:
    """Read an acknowledgment from a 2xx body whose shape the contract leaves open.

    `true`, "ok"-like strings, or an object with a truthy `acknowledged`,
    `acknowledgement`, `acknowledgment`, `ack`, `success` or `ok` (first found wins),
    else an ok-like `status`, else the same looked up once under `data`, `result` or
    `response`. Anything else is "not acknowledged": the frame is then rendered again,
    which costs time, whereas a false "yes" would wait for a frame that never comes.
    """
    if isinstance(payload, str):
        return payload.strip().lower() in _ACK_WORDS
    if not isinstance(payload, Mapping):
        return isinstance(payload, bool) and payload
    for key in _ACK_KEYS:
        if key in payload:
            return _is_ack_value(payload[key])
    if "status" in payload:
        return _is_ack_value(payload["status"])
    if not nested:
        for key in ("data", "result", "response"):
            if key in payload:
                return _is_ack(payload[key], nested=True)
    return False


def _drain(resp: requests.Response, limit: int = 64 * 1024) -> None:
    """Read what is left of a short body, so that closing keeps the connection alive."""
    read = 0
    try:
        for chunk in resp.iter_content(16 * 1024):
            read += len(chunk)
            if read > limit:
                return
    except (requests.RequestException, Urllib3Error):
        return


def _declared_length(resp: requests.Response) -> int | None:
    """The body's length as sent on the wire, or None when it is not declared or encoded."""
    declared = resp.headers.get("Content-Length", "")
    encoding = resp.headers.get("Content-Encoding", "identity").lower()
    if encoding != "identity" or "Transfer-Encoding" in resp.headers:
        return None
    if not (declared.isascii() and declared.isdigit()):
        return None
    return int(declared)


def _multipart_frame(
    fields: list[tuple[str, str]],
    *,
    file_field: str,
    filename: str,
    content_type: str,
    boundary: str,
) -> tuple[bytes, bytes]:
    """What goes before and after the file part of a multipart/form-data body.

    The text fields come first and the file last, each part's headers rendered by
    urllib3's `RequestField`, byte for byte what requests_toolbelt's MultipartEncoder
    sent before, so the body can be streamed without an encoder in the way.
    """
    delimiter = f"--{boundary}\r\n".encode("ascii")
    head = bytearray()
    for name, value in fields:
        part = RequestField(name=name, data=value)
        part.make_multipart()
        head += delimiter + part.render_headers().encode("utf-8") + value.encode("utf-8")
        head += b"\r\n"
    part = RequestField(name=file_field, data=b"", filename=filename)
    part.make_multipart(content_type=content_type)
    head += delimiter + part.render_headers().encode("utf-8")
    tail = f"\r\n--{boundary}--\r\n".encode("ascii")
    return bytes(head), tail


class _PartSource(Protocol):
    """The content of a multipart file part: its exact size, its chunks, a way back."""

    size: int

    def chunks(self) -> Iterator[bytes | memoryview]:
        """The content from where the last rewind left it, `size` bytes in all."""
        ...

    def rewind(self) -> None:
        """Make `chunks` start again from the beginning (the upload is being retried)."""
        ...


class _FilePart:
    """The rest of a seekable binary file from its current offset, read into one buffer."""

    def __init__(self, fileobj: BinaryIO) -> None:
        self._fileobj = fileobj
        self._start = fileobj.tell()
        self.size = fileobj.seek(0, os.SEEK_END) - self._start
        fileobj.seek(self._start)

    def chunks(self) -> Iterator[memoryview]:
        """Each chunk is a view of the same buffer, sent before the next one is read."""
        view = memoryview(bytearray(max(1, min(UPLOAD_CHUNK_BYTES, self.size))))
        left = self.size
        while left:
            read = self._fileobj.readinto(view[: min(left, len(view))])
            if not read:
                raise OSError("the upload source shrank while being sent")
            left -= read
            yield view[:read]

    def rewind(self) -> None:
        self._fileobj.seek(self._start)


class _MultipartBody:
    """A multipart/form-data body whose last part streams from a `_PartSource`.

    It is iterated, not read: given a `read` method urllib3 would pull 16 KiB at a time,
    this way each chunk of the source goes to the socket as it is. `len` gives requests
    the Content-Length (the body is never sent chunked); `tell` and `seek(0)` let urllib3
    rewind it to resend it whole on a retry, the source starting over.
    """

    def __init__(
        self,
        fields: list[tuple[str, str]],
        *,
        file_field: str,
        filename: str,
        content_type: str,
        source: _PartSource,
    ) -> None:
        self._boundary = uuid.uuid4().hex
        self._head, self._tail = _multipart_frame(
            fields,
            file_field=file_field,
            filename=filename,
            content_type=content_type,
            boundary=self._boundary,
        )
        self._source = source
        self.len = len(self._head) + source.size + len(self._tail)
        self._pos = 0

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self._boundary}"

    def __iter__(self) -> Iterator[bytes | memoryview]:
        self._pos += len(self._head)
        yield self._head
        for chunk in self._source.chunks():
            self._pos += len(chunk)
            yield chunk
        self._pos += len(self._tail)
        yield self._tail

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if offset != 0 or whence != 0:
            raise OSError("the upload can only be rewound to its start")
        self._source.rewind()
        self._pos = 0
        return 0


# ---------------------------------------------------------------- session


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry; tests pass tiny backoffs.

    urllib3 waits 0 before the first retry, then `backoff_factor * 2**(n-1)` plus up to
    `backoff_jitter` seconds at random, capped at `backoff_max`.
    """

    retries: int = 3
    backoff_factor: float = 0.25
    backoff_max: float = 5.0
    backoff_jitter: float = 0.25

    def _retry(self, methods: frozenset[str], statuses: frozenset[int]) -> Retry:
        return Retry(
            total=self.retries,
            connect=self.retries,
            read=self.retries,
            status=self.retries,
            other=0,
            redirect=0,
            allowed_methods=methods,
            status_forcelist=statuses,
            backoff_factor=self.backoff_factor,
            backoff_max=self.backoff_max,
            backoff_jitter=self.backoff_jitter,
            raise_on_status=False,
            raise_on_redirect=False,
            respect_retry_after_header=False,
        )

    def default_retry(self) -> Retry:
        """GET/DELETE fully retried; any other method only when it never connected."""
        return self._retry(frozenset({"GET", "HEAD", "DELETE"}), frozenset({500, 502, 503, 504}))

    def idempotent_post_retry(self) -> Retry:
        """For the POST endpoints a repeat cannot harm (store-image, new-session)."""
        return self._retry(frozenset({"POST"}), frozenset({502, 503, 504}))


def make_session(policy: RetryPolicy | None = None) -> requests.Session:
    """A session whose default adapter carries `policy.default_retry()`; no cookies kept.
    Peers are reached directly: proxy variables and ~/.netrc are not consulted (looking
    them up again on every request cost a quarter of a request's client CPU)."""
    policy = policy or RetryPolicy()
    session = requests.Session()
    session.trust_env = False
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    adapter = HTTPAdapter(max_retries=policy.default_retry())
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = "session-supervisor"
    return session


# ---------------------------------------------------------------- clients


class _PeerClient:
    """What every peer client shares: URL building, sending, error mapping, logging."""

    peer: ClassVar[str] = ""
    idempotent_posts: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        base_url: str,
        session: requests.Session,
        *,
        timeout: Timeout = 10.0,
        policy: RetryPolicy | None = None,
        on_failure: Callable[[PeerError], None] | None = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._session = session
        self._timeout = timeout
        self._on_failure = on_failure
        if self.idempotent_posts:
            adapter = HTTPAdapter(max_retries=(policy or RetryPolicy()).idempotent_post_retry())
            for path in self.idempotent_posts:
                session.mount(self._base + path, adapter)

    def close(self) -> None:
        """Close the (shared) session; harmless to call more than once."""
        self._session.close()

    def _fail(
        self, operation: str, detail: str, *, status: int | None, transient: bool
    ) -> PeerError:
        detail = _clip(detail)
        logger.warning(
            "%s %s failed (status=%s, transient=%s): %s",
            self.peer,
            operation,
            status,
            transient,
            detail,
            extra={
                "peer": self.peer,
                "peer_operation": operation,
                "peer_status": status,
                "peer_transient": transient,
            },
        )
        error = PeerError(self.peer, operation, detail, status=status, transient=transient)
        if transient and self._on_failure is not None:
            self._on_failure(error)
        return error

    @contextmanager
    def _exchange(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Iterator[requests.Response]:
        """One request (retries are the adapter's); transport failures are transient.

        On a normal exit a short unread body is drained so the connection goes back to
        the pool; otherwise the connection is closed with the response.
        """
        try:
            resp = self._session.request(
                method,
                self._base + path,
                params=params,
                data=data,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
                stream=True,
            )
        except (requests.RequestException, Urllib3Error) as exc:
            raise self._fail(
                operation, _describe_exception(exc), status=None, transient=True
            ) from exc
        with resp:
            yield resp
            _drain(resp)

    def _post_json(
        self, operation: str, path: str, body: Mapping[str, Any]
    ) -> AbstractContextManager[requests.Response]:
        try:
            payload = json.dumps(body, allow_nan=False, ensure_ascii=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"{operation}: body is not JSON-serialisable") from exc
        return self._exchange(
            operation, "POST", path, data=payload, headers={"Content-Type": "application/json"}
        )

    def _read_limited(self, resp: requests.Response, operation: str, limit: int) -> bytes | None:
        """The body, or None when it is longer than `limit` bytes."""
        buf = bytearray()
        try:
            for chunk in resp.iter_content(64 * 1024):
                buf += chunk
                if len(buf) > limit:
                    return None
        except (requests.RequestException, Urllib3Error) as exc:
            raise self._fail(
                operation, _describe_exception(exc), status=resp.status_code, transient=True
            ) from exc
        return bytes(buf)

    def _read_json(self, resp: requests.Response, operation: str) -> Any:
        """Parsed JSON body, or `_NOT_JSON` if it is not JSON or too large to be ours."""
        body = self._read_limited(resp, operation, MAX_JSON_BYTES)
        if body is None:
            return _NOT_JSON
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            return _NOT_JSON

    def _status_error(self, resp: requests.Response, operation: str) -> PeerError:
        """A PeerError for an unwanted status, quoting at most a clipped error message."""
        status = resp.status_code
        snippet = ""
        try:
            head = next(resp.iter_content(1024), b"")
        except (requests.RequestException, Urllib3Error):
            head = b""
        if head:
            text = head.decode("utf-8", errors="replace")
            try:
                parsed = json.loads(head)
            except (ValueError, RecursionError):
                parsed = None
            if isinstance(parsed, Mapping):
                message = parsed.get("message") or parsed.get("detail") or parsed.get("error")
                if isinstance(message, str):
                    text = message
            snippet = text
        detail = f"unexpected HTTP {status}" + (f": {snippet}" if snippet else "")
        transient = status >= 500 or status in _TRANSIENT_STATUSES
        return self._fail(operation, detail, status=status, transient=transient)


@dataclass(frozen=True)
class BlendFileRef:
    """Where the catalog says an object's .blend file is, and its hash."""

    path: str
    hash: str


class CatalogClient(_PeerClient):
    """The MongoDB service: knows each customer object's .blend file."""

    peer = "catalog"
    _prefix = "/api/mongodb-service/blender-objects"

    def get_blend_file(self, object_id: str, customer_id: str) -> BlendFileRef:
        """Look the object up; refuse any answer that does not point inside its own folder."""
        check_id("object_id", object_id)
        check_id("customer_id", customer_id)
        operation = "get-blend-file-name"
        path = f"{self._prefix}/get-blend-file-name/{quote(object_id, safe='')}"
        with self._exchange(operation, "GET", path, params={"customer_id": customer_id}) as resp:
            status = resp.status_code
            if status >= 500 or status in _TRANSIENT_STATUSES:
                raise self._status_error(resp, operation)
            if status != 200:
                raise self._not_renderable(object_id, f"the catalog answered HTTP {status}", status)
            body = self._read_json(resp, operation)
        return self._parse_blend_ref(body, object_id=object_id, customer_id=customer_id)

    def _not_renderable(
        self, object_id: str, reason: str, status: int | None = 200
    ) -> ObjectNotRenderable:
        logger.warning(
            "catalog get-blend-file-name refused object (status=%s): %s",
            status,
            reason,
            extra={
                "peer": self.peer,
                "peer_operation": "get-blend-file-name",
                "peer_status": status,
                "peer_transient": False,
            },
        )
        return ObjectNotRenderable(f"object {object_id} cannot be rendered: {reason}")

    def _parse_blend_ref(self, body: Any, *, object_id: str, customer_id: str) -> BlendFileRef:
        if not isinstance(body, Mapping):
            raise self._not_renderable(object_id, "the catalog answer is not a JSON object")
        blend_path = body.get("blendFilePath")
        if not isinstance(blend_path, str) or not blend_path:
            raise self._not_renderable(object_id, "the catalog gives no blendFilePath")
        try:
            validate_blob_key(blend_path)
        except InvalidInput as exc:
            raise self._not_renderable(object_id, f"unsafe blendFilePath ({exc})") from None
        parts = blend_path.split("/")
        if len(parts) != 3 or not parts[2].lower().endswith(".blend") or len(parts[2]) <= 6:
            raise self._not_renderable(
                object_id, "blendFilePath is not customer_id/object_id/<name>.blend"
            )
        if parts[0] != customer_id or parts[1] != object_id:
            raise self._not_renderable(
                object_id, "blendFilePath belongs to another customer or object"
            )
        blend_hash = body.get("blendFileHash")
        if not isinstance(blend_hash, str) or not blend_hash:
            raise self._not_renderable(object_id, "the catalog gives no blendFileHash")
        if len(blend_hash) > MAX_ID_CHARS or has_control(blend_hash):
            raise self._not_renderable(object_id, "blendFileHash is malformed")
        return BlendFileRef(path=blend_path, hash=blend_hash)

    def add_rendered_image(
        self, *, object_id: str, customer_id: str, frame_number: int, image_file_path: str
    ) -> None:
        """Tell the catalog a frame is stored; not retried once sent (may not be idempotent)."""
        body = {
            "objectId": check_id("object_id", object_id),
            "customerId": check_id("customer_id", customer_id),
            "frameNumber": check_int("frame_number", frame_number),
            "imageFilePath": validate_blob_key(image_file_path),
        }
        operation = "add-rendered-image"
        with self._post_json(operation, f"{self._prefix}/add-rendered-image", body) as resp:
            if not 200 <= resp.status_code < 300:
                raise self._status_error(resp, operation)

    OBJECT_STATES = ("ready-to-render", "processing", "video-ready")

    def change_state(self, *, object_id: str, customer_id: str, state: str) -> None:
        """Set the object's state (we set `video-ready` when its workload completes)."""
        if state not in self.OBJECT_STATES:
            raise InvalidInput(f"object state must be one of {', '.join(self.OBJECT_STATES)}")
        body = {
            "objectId": check_id("object_id", object_id),
            "customerId": check_id("customer_id", customer_id),
            "objectState": state,
        }
        operation = "change-state"
        payload = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        path = f"{self._prefix}/change-state"
        with self._exchange(operation, "PUT", path, data=payload, headers=headers) as resp:
            if not 200 <= resp.status_code < 300:
                raise self._status_error(resp, operation)


class BlobClient(_PeerClient):
    """The Blob Service: .blend files, temporary uploads from users, final frames."""

    peer = "blob-service"
    _prefix = "/api/blob-service"
    idempotent_posts = ("/api/blob-service/store-image",)

    def download_blend(self, key: str, dest: Path, *, max_bytes: int) -> int:
        """Stream a .blend file to `dest`; return its size."""
        params = {"bucket": "blend-files", "key": validate_blob_key(key)}
        return self._download("retrieve-blend", "/retrieve-blend", params, dest, max_bytes)

    def download_temp(self, key: str, dest: Path, *, max_bytes: int) -> int:
        """Stream a user's temporary upload to `dest`; return its size."""
        params = {"key": validate_blob_key(key)}
        return self._download("retrieve-temp", "/retrieve-temp", params, dest, max_bytes)

    def _download(
        self, operation: str, path: str, params: Mapping[str, str], dest: Path, max_bytes: int
    ) -> int:
        check_int("max_bytes", max_bytes, minimum=0)
        dest = Path(dest)
        with self._get(operation, path, params, max_bytes) as (resp, _declared):
            try:
                return self._stream_to(resp, operation, dest, max_bytes)
            except BaseException:
                dest.unlink(missing_ok=True)
                raise

    @contextmanager
    def _get(
        self, operation: str, path: str, params: Mapping[str, str], max_bytes: int
    ) -> Iterator[tuple[requests.Response, int | None]]:
        """A 200 response with its declared length, refused early when that exceeds
        `max_bytes`; the body is the caller's to read."""
        with self._exchange(operation, "GET", self._prefix + path, params=params) as resp:
            if resp.status_code != 200:
                raise self._status_error(resp, operation)
            declared = _declared_length(resp)
            if declared is not None and declared > max_bytes:
                raise self._fail(
                    operation,
                    f"body of {declared} bytes exceeds the limit of {max_bytes}",
                    status=None,
                    transient=False,
                )
            yield resp, declared

    def _stream_to(
        self, resp: requests.Response, operation: str, dest: Path, max_bytes: int
    ) -> int:
        written = 0
        with dest.open("wb") as out:
            try:
                for chunk in resp.iter_content(CHUNK_BYTES):
                    written += len(chunk)
                    if written > max_bytes:
                        raise self._fail(
                            operation,
                            f"body exceeds the limit of {max_bytes} bytes",
                            status=None,
                            transient=False,
                        )
                    out.write(chunk)
            except (requests.RequestException, Urllib3Error) as exc:
                raise self._fail(
                    operation, _describe_exception(exc), status=None, transient=True
                ) from exc
        return written

    def store_image(self, *, key: str, extension: str, source: BinaryIO | Path) -> None:
        """Upload a final frame, streamed from a path or a seekable binary file object."""
        key = validate_blob_key(key)
        ext = validate_extension(extension)
        if isinstance(source, str | os.PathLike):
            with open(source, "rb") as fileobj:
                self._upload(key, ext, _FilePart(fileobj))
        else:
            if not source.seekable():
                raise InvalidInput("store_image needs a seekable file object")
            self._upload(key, ext, _FilePart(source))

    def _upload(self, key: str, ext: str, source: _PartSource) -> None:
        operation = "store-image"
        body = _MultipartBody(
            [("bucket", "rendered-frames"), ("key", key), ("type", ext)],
            file_field="image",
            filename=PurePosixPath(key).name,
            content_type=_CONTENT_TYPES.get(ext, "application/octet-stream"),
            source=source,
        )
        headers = {"Content-Type": body.content_type}
        with self._exchange(
            operation, "POST", f"{self._prefix}/store-image", data=body, headers=headers
        ) as resp:
            if not 200 <= resp.status_code < 300:
                raise self._status_error(resp, operation)

    def delete_temp(self, key: str) -> None:
        """Delete a temporary upload; 404 counts as done, so a repeat is harmless."""
        operation = "delete-temp"
        params = {"key": validate_blob_key(key)}
        path = f"{self._prefix}/delete-temp"
        with self._exchange(operation, "DELETE", path, params=params) as resp:
            if not (200 <= resp.status_code < 300 or resp.status_code == 404):
                raise self._status_error(resp, operation)

    def transfer_temp_to_final(
        self,
        *,
        temp_key: str,
        final_key: str,
        extension: str,
        max_bytes: int,
        workdir: Path | None = None,
    ) -> int:
        """Copy a temporary upload to its final key; return its size.

        When the Blob Service declares the temp blob's length (it does for plain files),
        its body is streamed straight into the upload, in large chunks and without
        touching the disk; a retried upload fetches it again. Otherwise it goes through a
        temp file in `workdir`, removed whatever happens, which enforces `max_bytes` as
        it arrives. Memory stays bounded either way. The temporary copy is not deleted.
        """
        params = {"key": validate_blob_key(temp_key)}
        validate_blob_key(final_key)
        ext = validate_extension(extension)
        check_int("max_bytes", max_bytes, minimum=0)
        with _TempBlob(self, params, max_bytes) as blob:
            if blob.declared is None:
                return self._transfer_through_file(
                    blob.response, final_key, ext, max_bytes, workdir
                )
            self._upload(final_key, ext, blob)
            return blob.size

    def _transfer_through_file(
        self,
        resp: requests.Response,
        final_key: str,
        ext: str,
        max_bytes: int,
        workdir: Path | None,
    ) -> int:
        fd, name = tempfile.mkstemp(prefix="frame-", suffix=".part", dir=workdir)
        os.close(fd)
        tmp = Path(name)
        try:
            size = self._stream_to(resp, _TempBlob.operation, tmp, max_bytes)
            self.store_image(key=final_key, extension=ext, source=tmp)
            return size
        finally:
            tmp.unlink(missing_ok=True)


class _TempBlob:
    """A temp blob's body as the file part of an upload, fetched once more per rewind.

    Entering performs the GET (a refusal or a declared length over `max_bytes` raises
    there); `declared` is the length the response declares, None when there is none
    (chunked or encoded: the caller then needs a temp file). Chunks are read straight
    from urllib3, undecoded and as large as `UPLOAD_CHUNK_BYTES`; a failure while reading
    them is a transient retrieve-temp PeerError, which urllib3 lets through untouched. A
    rewind after some of the body was read fetches it again and insists on the same
    length. Exiting releases the response; its connection goes back to the pool when the
    body was read to the end.
    """

    operation: ClassVar[str] = "retrieve-temp"
    path: ClassVar[str] = "/retrieve-temp"

    def __init__(self, client: BlobClient, params: Mapping[str, str], max_bytes: int) -> None:
        self._client = client
        self._params = params
        self._max_bytes = max_bytes
        self._stack = ExitStack()
        self._read = 0
        self.response: requests.Response
        self.declared: int | None = None

    def __enter__(self) -> _TempBlob:
        self._open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.__exit__(exc_type, exc, tb)

    def _open(self) -> None:
        get = self._client._get(self.operation, self.path, self._params, self._max_bytes)
        self.response, self.declared = self._stack.enter_context(get)
        self._read = 0

    @property
    def size(self) -> int:
        if self.declared is None:
            raise RuntimeError("the temp blob declares no length")
        return self.declared

    def chunks(self) -> Iterator[bytes]:
        raw = self.response.raw
        while self._read < self.size:
            want = min(UPLOAD_CHUNK_BYTES, self.size - self._read)
            try:
                data = raw.read(want, decode_content=False)
            except (requests.RequestException, Urllib3Error) as exc:
                raise self._client._fail(
                    self.operation, _describe_exception(exc), status=None, transient=True
                ) from exc
            if not data:
                raise self._client._fail(
                    self.operation, "body ended early", status=None, transient=True
                )
            self._read += len(data)
            yield data

    def rewind(self) -> None:
        if not self._read:
            return
        size = self.declared
        self._stack.close()
        self._open()
        if self.declared != size:
            raise self._client._fail(
                self.operation,
                f"length changed between attempts ({size} then {self.declared} bytes)",
                status=None,
                transient=True,
            )


class UserServiceClient(_PeerClient):
    """The User Service: delivers messages to one connected render node."""

    peer = "user-service"
    _prefix = "/api/user-service/user"

    @staticmethod
    def _message(user_id: str, topic: str, data: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(data, Mapping):
            raise InvalidInput("message data must be a JSON object")
        return {
            "user_id": check_text("user_id", user_id),
            "topic": check_text("topic", topic),
            "data": dict(data),
        }

    def send(self, user_id: str, topic: str, data: dict[str, Any]) -> None:
        """Fire-and-forget message; any non-2xx is a PeerError (4xx not transient)."""
        operation = "send-msg-to-user"
        body = self._message(user_id, topic, data)
        with self._post_json(operation, f"{self._prefix}/send-msg-to-user", body) as resp:
            if not 200 <= resp.status_code < 300:
                raise self._status_error(resp, operation)

    # The real User Service spells it with an e; a deployment may have fixed the route the
    # other way round, so a 404 on one spelling is tried once on the other (CONTRACT.md §4).
    ACK_PATHS = ("send-msg-to-user-with-acknowledgement", "send-msg-to-user-with-acknowledgment")

    def send_with_ack(self, user_id: str, topic: str, data: dict[str, Any]) -> bool:
        """Send and report whether the user acknowledged (see `_is_ack` for the body).

        A 4xx other than 408/429 (e.g. user not connected) means "no", not an error; a 404
        is first retried on the other spelling of the route. 5xx, 408, 429 and transport
        failures raise a transient PeerError.
        """
        status, payload = self._call_with_ack(user_id, topic, data)
        if 200 <= status < 300:
            return _is_ack(payload)
        if status in _TRANSIENT_STATUSES or status >= 500:
            raise self._fail(
                self.ACK_PATHS[0], f"unexpected HTTP {status}", status=status, transient=True
            )
        logger.info(
            "user-service %s: HTTP %s, taken as not acknowledged",
            self.ACK_PATHS[0],
            status,
            extra={"peer": self.peer, "peer_operation": self.ACK_PATHS[0], "peer_status": status},
        )
        return False

    def answers(self, user_id: str, topic: str, data: dict[str, Any]) -> bool | None:
        """Whether the node answers an acknowledged message at all, true or false: the real
        User Service relays the call over the node's socket, so a node it cannot reach makes
        the call fail (an error status) or outlast our timeout. That is the only liveness
        test the platform has. None when the User Service itself cannot be reached: then
        nothing is known of the node."""
        try:
            status, _payload = self._call_with_ack(user_id, topic, data)
        except PeerError as exc:
            return False if isinstance(exc.__cause__, requests.ReadTimeout) else None
        return 200 <= status < 300

    def _call_with_ack(self, user_id: str, topic: str, data: dict[str, Any]) -> tuple[int, Any]:
        """The status and body of the acknowledged send, on the first route that exists."""
        body = self._message(user_id, topic, data)
        for route in self.ACK_PATHS:
            with self._post_json(route, f"{self._prefix}/{route}", body) as resp:
                status = resp.status_code
                if status == 404 and route != self.ACK_PATHS[-1]:
                    logger.info(
                        "user-service %s: HTTP 404, trying the other spelling",
                        route,
                        extra={"peer": self.peer, "peer_operation": route, "peer_status": 404},
                    )
                    continue
                if not 200 <= status < 300:
                    return status, None
                raw = self._read_limited(resp, route, MAX_JSON_BYTES)
                if not raw:
                    return status, None
                try:
                    return status, json.loads(raw)
                except (ValueError, RecursionError):
                    return status, raw.decode("utf-8", errors="replace")
        return 404, None


class UserManagerClient(_PeerClient):
    """The User Manager's HTTP side: supervisor registration."""

    peer = "user-manager"
    idempotent_posts = ("/api/user-manager/session-supervisor/new-session",)

    def register_session(self, session_id: str, user_count: int) -> None:
        """Register this supervisor; the User Manager routes nothing to unknown ones, and
        forgets every registration when it restarts, so this is repeated (it is idempotent)."""
        form = [
            ("user_count", str(check_int("user_count", user_count, minimum=0))),
            ("session_supervisor_id", check_text("session_id", session_id)),
        ]
        operation = "new-session"
        path = "/api/user-manager/session-supervisor/new-session"
        with self._exchange(operation, "POST", path, data=form) as resp:
            if not 200 <= resp.status_code < 300:
                raise self._status_error(resp, operation)

    def cleanup_session(self, session_id: str) -> None:
        """Drop our registration and routing key; without it the User Manager's maps grow
        for ever. A repeat is harmless."""
        form = [("session_supervisor_id", check_text("session_id", session_id))]
        operation = "cleanup-session"
        path = "/api/user-manager/session-supervisor/cleanup-session"
        with self._exchange(operation, "DELETE", path, data=form) as resp:
            if not 200 <= resp.status_code < 300:
                raise self._status_error(resp, operation)


@dataclass
class Peers:
    """The four clients on one shared session; build with `from_settings`, end with `close`."""

    catalog: CatalogClient
    blob: BlobClient
    users: UserServiceClient
    user_manager: UserManagerClient

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        policy: RetryPolicy | None = None,
        on_failure: Callable[[PeerError], None] | None = None,
    ) -> Peers:
        """Clients for the configured peers: `peer_timeout_seconds` for connect and read,
        `peer_retries` retries unless `policy` says otherwise. `on_failure` hears of every
        transient failure (the status shows peers that are failing)."""
        policy = policy or RetryPolicy(retries=settings.peer_retries)
        session = make_session(policy)
        timeout = (settings.peer_timeout_seconds, settings.peer_timeout_seconds)
        options: dict[str, Any] = {"timeout": timeout, "policy": policy, "on_failure": on_failure}
        return cls(
            catalog=CatalogClient(settings.mongodb_service, session, **options),
            blob=BlobClient(settings.blob_service, session, **options),
            users=UserServiceClient(settings.user_service, session, **options),
            user_manager=UserManagerClient(settings.user_manager_service, session, **options),
        )

    def close(self) -> None:
        """Close the shared session (and any session a client was given separately)."""
        for client in (self.catalog, self.blob, self.users, self.user_manager):
            client.close()

    def __enter__(self) -> Peers:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
