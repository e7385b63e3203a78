"""The live operator dashboard (issue #13): HTML pages that poll JSON snapshots every second.

Privileged like the admin routes (app/security.py), or with the cookie the token form sets.
The cookie holds an HMAC derived from ADMIN_TOKEN, never the token: it is worth nothing once
the token changes, and reading it off a browser does not reveal the token. The pages are
plain HTML, CSS and JavaScript from this package's static/ and templates/: no build step,
nothing fetched from another host, and a Content-Security-Policy that allows only this origin.

The snapshots are computed and cached by the domain (supervisor/dashboard/); a view only
answers 304 when the caller already holds the snapshot's ETag.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Callable
from functools import wraps
from typing import TypeVar

from flask import Blueprint, Response, current_app, redirect, render_template, request
from flask.typing import ResponseReturnValue

from app.errors import error_body
from app.security import request_is_privileged
from supervisor import dashboard as board
from supervisor.keys import validate_id
from supervisor.services import Services

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., ResponseReturnValue])

dashboard = Blueprint(
    "dashboard",
    __name__,
    url_prefix="/dashboard",
    static_folder="static",
    template_folder="templates",
)

COOKIE = "supervisor_dashboard"
COOKIE_PURPOSE = b"session-supervisor-dashboard"
COOKIE_MAX_AGE = 12 * 3600
HOME = "/dashboard/"
# A path under /dashboard made of plain segments: no host, no scheme, no `..`, no `//`.
NEXT_PATH = re.compile(r"/dashboard(/[A-Za-z0-9._~-]+)*/?")
# The pages' scripts and styles are files of this package; thumbnails come from this origin.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
THUMBNAIL_CACHE = "private, max-age=86400, immutable"


def _services() -> Services:
    return current_app.extensions["session_supervisor"]


def cookie_value(admin_token: str) -> str:
    """What the cookie holds for `admin_token`: an HMAC keyed by it, not the token."""
    return hmac.new(admin_token.encode(), COOKIE_PURPOSE, hashlib.sha256).hexdigest()


def _cookie_is_valid() -> bool:
    token = _services().settings.admin_token
    held = request.cookies.get(COOKIE)
    if not token or not held:
        return False
    return hmac.compare_digest(held.encode(), cookie_value(token).encode())


def _allowed() -> bool:
    return request_is_privileged() or _cookie_is_valid()


def safe_next(value: str | None) -> str:
    """Where to go after the token form: a path under /dashboard, else the list page."""
    if value and NEXT_PATH.fullmatch(value) and ".." not in value.split("/"):
        return value
    return HOME


def _page(template: str, status: int = 200, **context: object) -> Response:
    response = Response(render_template(template, **context), status=status)
    response.headers["Content-Security-Policy"] = PAGE_CSP
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _login_page(next_path: str, status: int, *, refused: bool = False) -> Response:
    return _page(
        "dashboard/login.html",
        status,
        next_path=safe_next(next_path),
        refused=refused,
        token_configured=bool(_services().settings.admin_token),
    )


def _guarded(refuse: Callable[[], ResponseReturnValue]) -> Callable[[F], F]:
    """A view open to privileged callers and cookie holders; anyone else gets `refuse()`."""

    def decorate(view: F) -> F:
        @wraps(view)
        def guarded(*args: object, **kwargs: object) -> ResponseReturnValue:
            if _allowed():
                return view(*args, **kwargs)
            logger.info(
                "dashboard access refused",
                extra={"remote_addr": request.remote_addr, "path": request.path},
            )
            return refuse()

        return guarded  # type: ignore[return-value]

    return decorate


# HTML routes: a refused caller gets the token form, with status 403.
page_access = _guarded(lambda: _login_page(request.path, 403))
# JSON and image routes: a refused caller gets the API's 403 error body.
api_access = _guarded(
    lambda: error_body(
        403,
        "Forbidden",
        "The dashboard is open only to privileged addresses or holders of the admin token",
    )
)


def _etag_header(etag: str) -> str:
    return etag if etag.startswith(('"', "W/")) else f'"{etag}"'


def _conditional(body: bytes, etag: str, content_type: str, cache_control: str) -> Response:
    """The body, or a 304 when the caller's If-None-Match names `etag`."""
    response = Response(body, content_type=content_type)
    response.headers["ETag"] = _etag_header(etag)
    response.headers["Cache-Control"] = cache_control
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response.make_conditional(request)


# --- pages ---------------------------------------------------------------------------------


@dashboard.get("/")
@page_access
def workloads_page() -> ResponseReturnValue:
    return _page("dashboard/list.html")


@dashboard.get("/<customer_id>")
@page_access
def workload_page(customer_id: str) -> ResponseReturnValue:
    validate_id("customer_id", customer_id)
    return _page("dashboard/workload.html", customer_id=customer_id)


# Two segments: a customer id is one (never a "/"), so no customer is shadowed by the form.
@dashboard.get("/auth/login")
def login_form() -> ResponseReturnValue:
    return _login_page(request.args.get("next", HOME), 200)


@dashboard.post("/auth/login")
def login() -> ResponseReturnValue:
    next_path = safe_next(request.form.get("next"))
    token = _services().settings.admin_token
    given = request.form.get("token", "")
    if not token or not hmac.compare_digest(given.encode(), token.encode()):
        logger.warning(
            "dashboard login refused",
            extra={"remote_addr": request.remote_addr, "token_configured": bool(token)},
        )
        return _login_page(next_path, 403, refused=True)
    logger.info("dashboard login", extra={"remote_addr": request.remote_addr})
    response = redirect(next_path, code=303)
    response.set_cookie(
        COOKIE,
        cookie_value(token),
        max_age=COOKIE_MAX_AGE,
        path="/dashboard",
        secure=request.is_secure,
        httponly=True,
        samesite="Strict",
    )
    return response


# --- JSON and images -----------------------------------------------------------------------


@dashboard.get("/api/workloads")
@api_access
def workloads_json() -> ResponseReturnValue:
    snapshot = board.workload_list(_services())
    return _conditional(snapshot.body, snapshot.etag, "application/json", "no-cache")


@dashboard.get("/api/workloads/<customer_id>")
@api_access
def workload_json(customer_id: str) -> ResponseReturnValue:
    validate_id("customer_id", customer_id)
    snapshot = board.workload_snapshot(_services(), customer_id)
    return _conditional(snapshot.body, snapshot.etag, "application/json", "no-cache")


@dashboard.get("/api/sessions/<session_id>/frames/<int(signed=True):frame>/thumbnail")
@api_access
def thumbnail(session_id: str, frame: int) -> ResponseReturnValue:
    validate_id("session_id", session_id)
    try:
        image = board.thumbnail(_services(), session_id, frame)
    except board.ThumbnailUnavailable as exc:
        return error_body(503, "Thumbnail not available yet", str(exc), [("Retry-After", "1")])
    return _conditional(image.body, image.etag, image.content_type, THUMBNAIL_CACHE)
