"""HTTP access to the REST API (CONTRACT.md §1), turning every failure into one of two errors.

The CLI maps `ApiError` (the API answered, but not with success) to exit 1 and
`ApiUnreachable` (no usable answer at all) to exit 3, so no expected failure ends in a
traceback.
"""

from __future__ import annotations

import re
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import requests

PREFIX = "/api/session-supervisor-service"
DEFAULT_API = f"http://127.0.0.1:7500{PREFIX}"
DEFAULT_TIMEOUT = 10.0


class ApiError(Exception):
    """The API answered with an error status or with a body the CLI cannot use."""

    def __init__(self, status: int, message: str, details: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details

    def __str__(self) -> str:
        text = f"{self.message} (HTTP {self.status})" if self.status else self.message
        return f"{text}: {self.details}" if self.details else text


class ApiUnreachable(Exception):
    """No answer from the API: refused, unresolvable, timed out or cut off."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the Session Supervisor API at {url}: {reason}")
        self.url = url
        self.reason = reason


def normalize_api_url(url: str) -> str:
    """Accept `host:port`, `http://host:port` or the full prefix; return the full prefix.

    People paste whichever form they have at hand, so all of them must lead to the same
    base. A path other than the prefix (a reverse proxy's mount point) gets the prefix added.
    """
    text = url.strip()
    if "://" not in text:
        text = f"http://{text}"
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise ValueError(f"invalid port in URL: {url!r}") from None
    path = parts.path.rstrip("/")
    if not path.endswith(PREFIX):
        path = f"{path}{PREFIX}"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _reason(exc: requests.RequestException) -> str:
    """The useful tail of requests' nested exception text, e.g. 'Connection refused'."""
    if isinstance(exc, requests.Timeout):
        return "no answer in time"
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(exc))
    if found:
        return found.group(1).strip()
    return type(exc).__name__


def _error_from(response: requests.Response) -> ApiError:
    """An error body is `{"message", "details"?}`; anything else (a proxy's page) is summarized."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        details = body.get("details")
        return ApiError(
            response.status_code, body["message"], None if details is None else str(details)
        )
    snippet = " ".join(response.text.split())[:200] or None
    return ApiError(response.status_code, f"HTTP {response.status_code} {response.reason}", snippet)


class SupervisorClient:
    """One method per API route; closes its connection pool when used as a context manager."""

    def __init__(
        self,
        api_url: str = DEFAULT_API,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        admin_token: str | None = None,
    ) -> None:
        self.base_url = normalize_api_url(api_url)
        self.timeout = timeout
        self._admin_token = admin_token or None
        self._session = requests.Session()
        self._session.headers["Accept"] = "application/json"

    def __repr__(self) -> str:
        # Never the token: a repr can end up in a log.
        return f"SupervisorClient({self.base_url!r})"

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> SupervisorClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _request(
        self,
        method: str,
        path: str,
        *,
        admin: bool = False,
        params: dict[str, str] | None = None,
        data: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        headers = {}
        if admin and self._admin_token:
            # Only admin routes get the token: the fewer requests carry it, the fewer can leak it.
            headers["Authorization"] = f"Bearer {self._admin_token}"
        try:
            response = self._session.request(
                method,
                self.base_url + path,
                params=params,
                data=data,
                headers=headers,
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            reason = _reason(exc)
            if isinstance(exc, requests.ReadTimeout) and method != "GET":
                reason += " (the request may still have been carried out)"
            raise ApiUnreachable(self.base_url, reason) from None
        if not response.ok:
            raise _error_from(response)
        try:
            body = response.json()
        except ValueError:
            raise ApiError(response.status_code, "unexpected answer: not JSON") from None
        if not isinstance(body, dict):
            raise ApiError(response.status_code, "unexpected answer: not a JSON object")
        return body

    def alive(self) -> dict[str, Any]:
        return self._request("POST", "/")

    def start_workload(self, customer_id: str, object_id: str) -> dict[str, Any]:
        data = {"customer_id": customer_id, "object_id": object_id}
        return self._request("POST", "/start-workload", data=data)

    def stop_workload(self, customer_id: str) -> dict[str, Any]:
        return self._request("POST", "/stop-and-delete-workload", data={"customer_id": customer_id})

    def workload_status(self, customer_id: str) -> dict[str, Any]:
        return self._request("GET", "/get-workload-status", params={"customer_id": customer_id})

    def workload_progress(self, customer_id: str) -> dict[str, Any]:
        return self._request("GET", "/get-workload-progress", params={"customer_id": customer_id})

    def get_user_count(self, customer_id: str) -> dict[str, Any]:
        return self._request("GET", f"/get-user-count/{quote(customer_id, safe='')}", admin=True)

    def set_user_count(self, customer_id: str, user_count: int) -> dict[str, Any]:
        path = f"/set-user-count/{quote(customer_id, safe='')}/{user_count}"
        return self._request("POST", path, admin=True)
