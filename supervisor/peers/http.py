"""The HTTP machinery every peer client shares: the session, the retry policy, the base
client that sends a request and turns failures into `PeerError`s.

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
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from http.cookiejar import DefaultCookiePolicy
from typing import Any, ClassVar

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import MaxRetryError, NewConnectionError
from urllib3.exceptions import TimeoutError as Urllib3Timeout
from urllib3.util.retry import Retry

from supervisor import metrics
from supervisor.errors import InvalidInput, PeerError
from supervisor.keys import has_control

# Every module of the package logs as "supervisor.peers", one name to filter peer trouble by.
logger = logging.getLogger(__package__)

MAX_JSON_BYTES = 1024 * 1024
DETAIL_CHARS = 200
TRANSIENT_STATUSES = frozenset({408, 429})

Timeout = float | tuple[float, float]

_OBJECT_REPR = re.compile(r"<[^<>]* object at 0x[0-9a-fA-F]+>:?\s*")
_NOT_JSON = object()


def _clip(text: str, limit: int = DETAIL_CHARS) -> str:
    """One line, no control characters, at most `limit` characters."""
    cleaned = " ".join("".join(" " if has_control(ch) else ch for ch in text).split())
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."


def describe_exception(exc: BaseException) -> str:
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


def declared_length(resp: requests.Response) -> int | None:
    """The body's length as sent on the wire, or None when it is not declared or encoded."""
    declared = resp.headers.get("Content-Length", "")
    encoding = resp.headers.get("Content-Encoding", "identity").lower()
    if encoding != "identity" or "Transfer-Encoding" in resp.headers:
        return None
    if not (declared.isascii() and declared.isdigit()):
        return None
    return int(declared)


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


# ---------------------------------------------------------------- base client


class PeerClient:
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

    def peer_error(
        self, operation: str, detail: str, *, status: int | None, transient: bool
    ) -> PeerError:
        """The error for a failed `operation`: logged, clipped, and reported to `on_failure`
        when transient. The caller raises it."""
        detail = _clip(detail)
        metrics.count_peer_error(self.peer, operation, status)
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
        started = time.perf_counter()
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
            metrics.observe_peer_call(self.peer, operation, None, time.perf_counter() - started)
            raise self.peer_error(
                operation, describe_exception(exc), status=None, transient=True
            ) from exc
        metrics.observe_peer_call(
            self.peer, operation, resp.status_code, time.perf_counter() - started
        )
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
            raise self.peer_error(
                operation, describe_exception(exc), status=resp.status_code, transient=True
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
        transient = status >= 500 or status in TRANSIENT_STATUSES
        return self.peer_error(operation, detail, status=status, transient=transient)
