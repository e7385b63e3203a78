"""The dashboard's routes (app/dashboard/) with Flask's test client: who gets in (a privileged
address, the admin token, the cookie of the token form), where the form sends the browser
back to, the 304 of an unchanged snapshot, the static files, and pages that name no other
host. The domain's snapshots are stand-ins here; tests/browser/ runs the real ones."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.dashboard import COOKIE, safe_next
from supervisor import dashboard as board
from supervisor.config import Settings
from supervisor.errors import NoActiveWorkload
from supervisor.services import Services

TOKEN = "dashboard-test-token-9f2c"
STRANGER = {"REMOTE_ADDR": "203.0.113.9"}
LIST = {"generated_at": "2026-01-01T00:00:00+00:00", "workloads": []}
SNAPSHOT = {"generated_at": "2026-01-01T00:00:00+00:00", "workload": {"customer_id": "acme"}}
PNG = b"\x89PNG\r\n\x1a\n-not-really"
PAGES = ["/dashboard/", "/dashboard/acme"]
API = ["/dashboard/api/workloads", "/dashboard/api/workloads/acme"]
THUMBNAIL = "/dashboard/api/sessions/s-1/frames/7/thumbnail"


class Domain:
    """Stands in for supervisor.dashboard: fixed answers, and the calls it was given."""

    def __init__(self) -> None:
        self.etag = "v1"
        self.thumbnail_ready = True
        self.customers = {"acme"}
        self.calls: list[tuple[Any, ...]] = []

    def workload_list(self, sv: Services) -> Any:
        self.calls.append(("list",))
        return board.Snapshot(body=json.dumps(LIST).encode(), etag=self.etag)

    def workload_snapshot(self, sv: Services, customer_id: str) -> Any:
        self.calls.append(("snapshot", customer_id))
        if customer_id not in self.customers:
            raise NoActiveWorkload(f"No active session for customer_id: {customer_id}")
        return board.Snapshot(body=json.dumps(SNAPSHOT).encode(), etag=self.etag)

    def thumbnail(self, sv: Services, session_id: str, frame: int) -> Any:
        self.calls.append(("thumbnail", session_id, frame))
        if not self.thumbnail_ready:
            raise board.ThumbnailUnavailable("not made yet")
        return board.Thumbnail(body=PNG, content_type="image/png", etag=f"{session_id}-{frame}")


@pytest.fixture
def domain(monkeypatch: pytest.MonkeyPatch) -> Domain:
    fake = Domain()
    for name in ("workload_list", "workload_snapshot", "thumbnail"):
        monkeypatch.setattr(board, name, getattr(fake, name))
    return fake


@pytest.fixture
def app(domain: Domain) -> Iterator[Flask]:
    """Nothing listens at these addresses: the routes get their answers from `domain`."""
    settings = Settings(
        _env_file=None,
        database_url="postgresql+psycopg://nobody@127.0.0.1:9/none",
        redis_url="redis://127.0.0.1:9/0",
        celery_broker_url="memory://",
        user_manager_broker_url="memory://",
        admin_token=TOKEN,
        privileged_ips="127.0.0.1,10.1.0.0/16",
    )
    app = create_app(settings)
    yield app
    services: Services = app.extensions["session_supervisor"]
    services.close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def stranger_client(app: Flask) -> FlaskClient:
    """A client from an address that is not privileged."""
    client = app.test_client()
    client.environ_base.update(STRANGER)
    return client


@pytest.fixture
def stranger(app: Flask) -> FlaskClient:
    return stranger_client(app)


def expected_cookie(token: str = TOKEN) -> str:
    return hmac.new(token.encode(), b"session-supervisor-dashboard", hashlib.sha256).hexdigest()


def set_cookie_header(response: Any) -> str:
    headers = response.headers.getlist("Set-Cookie")
    assert len(headers) == 1, headers
    return headers[0]


# --------------------------------------------------------------------- who gets in


@pytest.mark.parametrize("path", PAGES)
def test_a_privileged_address_gets_the_pages(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert 'src="/dashboard/static/dashboard.js"' in response.get_data(as_text=True)


def test_another_privileged_network_gets_in(app: Flask) -> None:
    response = app.test_client().get(
        "/dashboard/api/workloads", environ_base={"REMOTE_ADDR": "10.1.4.5"}
    )
    assert response.status_code == 200


@pytest.mark.parametrize("path", PAGES)
def test_a_stranger_gets_the_token_form_with_a_403(stranger: FlaskClient, path: str) -> None:
    response = stranger.get(path)
    assert response.status_code == 403
    html = response.get_data(as_text=True)
    assert '<form method="post" action="/dashboard/auth/login"' in html
    assert 'name="token"' in html
    assert f'name="next" value="{path}"' in html


@pytest.mark.parametrize("path", [*API, THUMBNAIL])
def test_a_stranger_gets_a_403_error_body_from_the_api(
    stranger: FlaskClient, domain: Domain, path: str
) -> None:
    response = stranger.get(path)
    assert response.status_code == 403
    assert response.get_json()["message"] == "Forbidden"
    assert domain.calls == []


@pytest.mark.parametrize("path", [*PAGES, *API, THUMBNAIL])
def test_the_admin_token_opens_everything(stranger: FlaskClient, path: str) -> None:
    response = stranger.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200


def test_a_wrong_bearer_token_is_refused(stranger: FlaskClient) -> None:
    response = stranger.get(API[0], headers={"Authorization": "Bearer not-the-token"})
    assert response.status_code == 403


# --------------------------------------------------------------------- the token form


def test_the_form_sets_a_cookie_derived_from_the_token(stranger: FlaskClient) -> None:
    form = {"token": TOKEN, "next": "/dashboard/acme"}
    response = stranger.post("/dashboard/auth/login", data=form)
    assert response.status_code == 303
    assert response.headers["Location"] == "/dashboard/acme"
    header = set_cookie_header(response)
    assert header.startswith(f"{COOKIE}={expected_cookie()};")
    assert TOKEN not in header
    attributes = {part.strip().split("=")[0].lower() for part in header.split(";")[1:]}
    assert {"httponly", "samesite", "path"} <= attributes
    assert "SameSite=Strict" in header
    assert "Path=/dashboard" in header
    assert "secure" not in attributes

    for path in [*PAGES, *API, THUMBNAIL]:
        assert stranger.get(path).status_code == 200, path


def test_the_cookie_is_secure_over_https(stranger: FlaskClient) -> None:
    response = stranger.post(
        "/dashboard/auth/login", data={"token": TOKEN}, base_url="https://dashboard.example"
    )
    assert response.status_code == 303
    assert "; Secure" in set_cookie_header(response)


def test_a_wrong_token_is_a_403_form_and_a_log_line_without_the_token(
    stranger: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    guess = "guessed-token-1234"
    with caplog.at_level(logging.INFO, logger="app.dashboard"):
        form = {"token": guess, "next": "/dashboard/"}
        response = stranger.post("/dashboard/auth/login", data=form)
    assert response.status_code == 403
    assert "Set-Cookie" not in response.headers
    html = response.get_data(as_text=True)
    assert 'name="token"' in html
    assert 'id="login-refused"' in html
    refused = [r for r in caplog.records if r.getMessage() == "dashboard login refused"]
    assert len(refused) == 1
    assert refused[0].remote_addr == STRANGER["REMOTE_ADDR"]  # type: ignore[attr-defined]
    everything = caplog.text + repr([r.__dict__ for r in caplog.records])
    assert guess not in everything
    assert TOKEN not in everything
    assert stranger.get(API[0]).status_code == 403


def test_no_token_configured_means_no_login(app: Flask) -> None:
    app.extensions["session_supervisor"].settings.admin_token = None
    client = stranger_client(app)
    assert client.post("/dashboard/auth/login", data={"token": ""}).status_code == 403
    assert client.post("/dashboard/auth/login", data={"token": "None"}).status_code == 403
    client.set_cookie(COOKIE, expected_cookie(""), path="/dashboard")
    assert client.get(API[0]).status_code == 403


@pytest.mark.parametrize(
    "cookie",
    [TOKEN, expected_cookie("an-older-token"), expected_cookie()[:-1], "", "x" * 64],
)
def test_any_other_cookie_is_refused(stranger: FlaskClient, cookie: str) -> None:
    stranger.set_cookie(COOKIE, cookie, path="/dashboard")
    assert stranger.get(API[0]).status_code == 403
    assert stranger.get(PAGES[0]).status_code == 403


def test_the_cookie_stops_working_when_the_token_changes(app: Flask) -> None:
    client = stranger_client(app)
    assert client.post("/dashboard/auth/login", data={"token": TOKEN}).status_code == 303
    assert client.get(API[0]).status_code == 200
    app.extensions["session_supervisor"].settings.admin_token = "a-new-token"
    assert client.get(API[0]).status_code == 403


def test_the_login_form_page_answers_200(stranger: FlaskClient) -> None:
    response = stranger.get("/dashboard/auth/login", query_string={"next": "/dashboard/acme"})
    assert response.status_code == 200
    assert 'name="next" value="/dashboard/acme"' in response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("/dashboard/", "/dashboard/"),
        ("/dashboard", "/dashboard"),
        ("/dashboard/acme-1.b_c", "/dashboard/acme-1.b_c"),
        ("/dashboard/api/workloads", "/dashboard/api/workloads"),
        (None, "/dashboard/"),
        ("", "/dashboard/"),
        ("https://evil.example/dashboard/", "/dashboard/"),
        ("//evil.example/dashboard/", "/dashboard/"),
        ("/\\evil.example/dashboard/", "/dashboard/"),
        ("/dashboard/\\evil", "/dashboard/"),
        ("/dashboard//evil.example", "/dashboard/"),
        ("/dashboard/../api/session-supervisor-service/", "/dashboard/"),
        ("/dashboard/%2e%2e/x", "/dashboard/"),
        ("/dashboardx", "/dashboard/"),
        ("/api/session-supervisor-service/", "/dashboard/"),
        ("/dashboard/acme?x=https://evil.example", "/dashboard/"),
        ("/dashboard/acme\r\nSet-Cookie: a=b", "/dashboard/"),
        ("javascript:alert(1)", "/dashboard/"),
    ],
)
def test_next_is_a_path_under_dashboard(
    stranger: FlaskClient, given: str | None, kept: str
) -> None:
    assert safe_next(given) == kept
    form = {"token": TOKEN} if given is None else {"token": TOKEN, "next": given}
    response = stranger.post("/dashboard/auth/login", data=form)
    assert response.status_code == 303
    assert response.headers["Location"] == kept


# --------------------------------------------------------------------- snapshots and 304


@pytest.mark.parametrize("path", API)
def test_an_unchanged_snapshot_is_a_304(client: FlaskClient, domain: Domain, path: str) -> None:
    first = client.get(path)
    assert first.status_code == 200
    assert first.mimetype == "application/json"
    assert first.headers["Cache-Control"] == "no-cache"
    etag = first.headers["ETag"]
    assert etag == '"v1"'

    again = client.get(path, headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.data == b""
    assert again.headers["ETag"] == etag

    domain.etag = "v2"
    changed = client.get(path, headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["ETag"] == '"v2"'
    assert json.loads(changed.data)["generated_at"]


def test_a_quoted_etag_from_the_domain_is_kept(client: FlaskClient, domain: Domain) -> None:
    domain.etag = '"abc"'
    response = client.get(API[0])
    assert response.headers["ETag"] == '"abc"'
    assert client.get(API[0], headers={"If-None-Match": '"abc"'}).status_code == 304


def test_the_snapshot_names_the_customer(client: FlaskClient, domain: Domain) -> None:
    assert client.get("/dashboard/api/workloads/acme").get_json() == SNAPSHOT
    assert domain.calls == [("snapshot", "acme")]


def test_no_workload_is_a_404_json(client: FlaskClient) -> None:
    response = client.get("/dashboard/api/workloads/nobody")
    assert response.status_code == 404
    assert response.get_json()["message"] == "No active session for customer_id: nobody"


@pytest.mark.parametrize("path", ["/dashboard/api/workloads/a%20b", "/dashboard/a%20b"])
def test_an_invalid_customer_id_is_a_400(client: FlaskClient, domain: Domain, path: str) -> None:
    assert client.get(path).status_code == 400
    assert domain.calls == []


def test_a_page_for_a_customer_without_workload_still_loads(client: FlaskClient) -> None:
    """The page polls and shows the workload once one starts."""
    response = client.get("/dashboard/nobody")
    assert response.status_code == 200
    assert 'data-api="/dashboard/api/workloads/nobody"' in response.get_data(as_text=True)


@pytest.mark.parametrize("customer_id", ["login", "auth", "api", "static"])
def test_a_customer_named_like_a_route_has_its_page(client: FlaskClient, customer_id: str) -> None:
    response = client.get(f"/dashboard/{customer_id}")
    assert response.status_code == 200
    assert f'data-api="/dashboard/api/workloads/{customer_id}"' in response.get_data(as_text=True)


# --------------------------------------------------------------------- thumbnails


def test_a_thumbnail_is_a_cacheable_image(client: FlaskClient, domain: Domain) -> None:
    response = client.get(THUMBNAIL)
    assert response.status_code == 200
    assert response.mimetype == "image/png"
    assert response.data == PNG
    assert response.headers["Cache-Control"] == "private, max-age=86400, immutable"
    assert domain.calls == [("thumbnail", "s-1", 7)]
    again = client.get(THUMBNAIL, headers={"If-None-Match": response.headers["ETag"]})
    assert again.status_code == 304


def test_a_negative_frame_number_is_a_frame(client: FlaskClient, domain: Domain) -> None:
    assert client.get("/dashboard/api/sessions/s-1/frames/-3/thumbnail").status_code == 200
    assert domain.calls == [("thumbnail", "s-1", -3)]


def test_a_thumbnail_not_made_yet_is_a_503_to_retry(client: FlaskClient, domain: Domain) -> None:
    domain.thumbnail_ready = False
    response = client.get(THUMBNAIL)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert "max-age" not in response.headers.get("Cache-Control", "")
    assert response.get_json()["message"]


# --------------------------------------------------------------------- the files shipped


@pytest.mark.parametrize(
    ("name", "mimetype"),
    [("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")],
)
def test_the_static_files_are_served(stranger: FlaskClient, name: str, mimetype: str) -> None:
    """To anyone: the token form needs its stylesheet, and the files hold no data."""
    response = stranger.get(f"/dashboard/static/{name}")
    assert response.status_code == 200
    assert response.mimetype == mimetype
    assert len(response.data) > 1000
    response.close()


EXTERNAL = re.compile(r"https?://|//cdn|(?:src|href|action)\s*=\s*[\"']?//", re.IGNORECASE)


def test_nothing_names_another_host(client: FlaskClient, stranger: FlaskClient) -> None:
    """The dashboard works offline: no CDN, no font service, no absolute URL anywhere."""
    texts = {path: client.get(path).get_data(as_text=True) for path in PAGES}
    texts["403 form"] = stranger.get(PAGES[0]).get_data(as_text=True)
    texts["login"] = client.get("/dashboard/auth/login").get_data(as_text=True)
    for name in ("dashboard.js", "dashboard.css"):
        response = client.get(f"/dashboard/static/{name}")
        texts[name] = response.get_data(as_text=True)
        response.close()
    found = {name: EXTERNAL.findall(text) for name, text in texts.items()}
    assert {name: hits for name, hits in found.items() if hits} == {}


def test_the_pages_load_only_their_own_files(client: FlaskClient) -> None:
    for path in PAGES:
        html = client.get(path).get_data(as_text=True)
        for url in re.findall(r'(?:src|href)="([^"]*)"', html):
            assert url.startswith("/dashboard") or url == "data:,", (path, url)
        assert "<script>" not in html, "an inline script would need 'unsafe-inline'"
        assert " style=" not in html
