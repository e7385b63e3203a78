"""What the Flask app itself answers to hostile requests, before any database or peer is
asked: deeply nested JSON, redirects under a forged Host header, chunked bodies over
MAX_REQUEST_BYTES. tests/e2e/test_hostile_http.py sends the same through gunicorn."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from urllib.parse import urljoin, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from supervisor.config import Settings
from supervisor.services import Services

PREFIX = "/api/session-supervisor-service"
LIMIT = 64 * 1024
FORM = "application/x-www-form-urlencoded"


@pytest.fixture
def app() -> Iterator[Flask]:
    """Nothing listens at these addresses: a request that got as far as the database or
    Redis would fail, not pass."""
    settings = Settings(
        _env_file=None,
        database_url="postgresql+psycopg://nobody@127.0.0.1:9/none",
        redis_url="redis://127.0.0.1:9/0",
        celery_broker_url="memory://",
        user_manager_broker_url="memory://",
        max_request_bytes=LIMIT,
    )
    app = create_app(settings)
    yield app
    services: Services = app.extensions["session_supervisor"]
    services.close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


# --------------------------------------------------------------------- nested JSON


NESTED = {
    "30,000 nested arrays": "[" * 30_000,
    "6,000 nested objects": '{"a":' * 6_000,
}


@pytest.mark.parametrize("route", ["start-workload", "stop-and-delete-workload"])
@pytest.mark.parametrize("body", list(NESTED))
def test_deeply_nested_json_is_a_400_logged_in_one_line(
    client: FlaskClient, caplog: pytest.LogCaptureFixture, route: str, body: str
) -> None:
    caplog.set_level(logging.INFO)
    response = client.post(f"{PREFIX}/{route}", data=NESTED[body], content_type="application/json")
    assert response.status_code == 400, response.get_data(as_text=True)[:300]
    assert response.get_json() == {
        "message": "Invalid input",
        "details": "the JSON body is nested too deeply",
    }
    ours = [record for record in caplog.records if record.name.startswith("app")]
    assert len(ours) == 1, [record.getMessage() for record in ours]
    assert ours[0].levelno == logging.WARNING
    assert not any(record.exc_info for record in caplog.records)
    assert "Traceback" not in caplog.text


def test_json_nested_a_few_levels_is_still_read(client: FlaskClient) -> None:
    """Only the depth limit is new: a body of the wrong shape gets the usual 400."""
    response = client.post(
        f"{PREFIX}/stop-and-delete-workload",
        data='{"customer_id": [[[["c"]]]]}',
        content_type="application/json",
    )
    assert response.status_code == 400
    assert response.get_json()["message"] == "Invalid input"
    assert "nested" not in response.get_json()["details"]


# --------------------------------------------------------------------- redirects


SLASHED = [
    ("GET", "/api//session-supervisor-service/get-workload-status?customer_id=c"),
    ("GET", f"{PREFIX}//get-workload-status?customer_id=c"),
    ("GET", f"{PREFIX}///get-workload-status"),
    ("POST", PREFIX),
    ("POST", f"{PREFIX}//"),
    ("GET", "//evil.example/api/session-supervisor-service/get-workload-status"),
    ("GET", "//x"),
    ("GET", "///x"),
]


@pytest.mark.parametrize(("method", "path"), SLASHED)
def test_no_redirect_names_a_host_the_client_did_not_ask_for(
    client: FlaskClient, method: str, path: str
) -> None:
    response = client.open(path, method=method, headers={"Host": "evil.example"})
    location = response.headers.get("Location")
    if location is None:
        return
    assert urlsplit(location).netloc == "", location
    # Resolved the way a browser does, against the address it asked for.
    resolved = urlsplit(urljoin("http://service.example/some/page", location))
    assert resolved.netloc == "service.example", location
    assert resolved.path.startswith(f"{PREFIX}/"), location


def test_the_slash_redirects_still_lead_to_the_route(client: FlaskClient) -> None:
    response = client.get(
        f"{PREFIX}//get-workload-status?customer_id=c", headers={"Host": "evil.example"}
    )
    assert response.status_code == 308
    assert response.headers["Location"] == f"{PREFIX}/get-workload-status?customer_id=c"


# --------------------------------------------------------------------- chunked bodies


def post_chunked(client: FlaskClient, body: bytes) -> tuple[int, dict[str, str]]:
    """A body without Content-Length, from a server that ends the stream at the end of
    the body (gunicorn sets `wsgi.input_terminated` for chunked requests)."""
    response = client.post(
        f"{PREFIX}/start-workload",
        input_stream=io.BytesIO(body),
        headers={"Transfer-Encoding": "chunked", "Content-Type": FORM},
        environ_overrides={"wsgi.input_terminated": True},
    )
    return response.status_code, response.get_json()


def test_a_chunked_form_over_the_limit_is_a_413(client: FlaskClient) -> None:
    status, body = post_chunked(client, b"customer_id=" + b"a" * (20 * 1024 * 1024))
    assert status == 413, body
    assert body["message"] == "Request Entity Too Large"


def test_a_chunked_form_one_byte_over_the_limit_is_a_413(client: FlaskClient) -> None:
    status, body = post_chunked(client, b"customer_id=" + b"a" * (LIMIT - 11))
    assert status == 413, body


def test_a_chunked_form_within_the_limit_is_read(client: FlaskClient) -> None:
    """Exactly the limit: the whole form reaches validation (the id is refused for its
    characters, so nothing is asked of the database)."""
    form = b"object_id=o&customer_id=" + b"a/" * ((LIMIT - 24) // 2)
    assert len(form) == LIMIT
    status, body = post_chunked(client, form)
    assert status == 400, body
    assert body["details"].startswith("customer_id must be"), body


def test_a_content_length_body_over_the_limit_is_a_413_too(client: FlaskClient) -> None:
    response = client.post(
        f"{PREFIX}/start-workload", data=b"customer_id=" + b"a" * LIMIT, content_type=FORM
    )
    assert response.status_code == 413
