"""The OpenAPI document (app/openapi.py) against the real app, on the real throwaway Postgres.

Schemathesis generates requests for every documented operation (explicit examples, then its
coverage cases, then up to MAX_EXAMPLES random ones, valid and invalid) and sends them to the
Flask app in-process, with every check it has: no 5xx, a documented status code, content type
and body, invalid input refused, valid input accepted, an admin route refusing a wrong token.
The catalog knows every object, and a workload the fuzzing starts is stopped at once, so
every valid start-workload is accepted. The other tests pin the document itself
(valid OpenAPI 3, every route documented, bodies of real workload states) and the Swagger UI
page (served from local files only). tests/hostile/test_live_api.py runs the schemathesis CLI
against a served app.

The run is seeded (tests/hostile/schemathesis.toml): change the seed, or raise MAX_EXAMPLES,
to explore further.

`schemathesis.pytest.from_fixture` cannot be used with pytest 9.2 (it sets `Item._nodeid`,
which pytest no longer has), so schemathesis gets the document at import, from a WSGI app that
forwards to the running test's `app` fixture (AppUnderTest); before any test runs it is an app
with the API's routes and the document but no supervisor behind them.
`test_the_served_document_is_the_fuzzed_one` checks that the real app serves that same document.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from openapi_spec_validator import validate as validate_openapi
from sqlalchemy import insert, select, update

from app.api import api
from app.errors import ALREADY_RUNNING
from app.openapi import PREFIX, openapi
from supervisor.config import Settings
from supervisor.errors import InvalidInput
from supervisor.keys import ID_MAX_CHARS, ID_PATTERN, ID_SCHEMA_PATTERN, validate_id
from supervisor.models import (
    ACTIVE_STATUSES,
    Frame,
    FrameState,
    Workload,
    WorkloadStatus,
    WorkloadUser,
)
from supervisor.services import Services
from tests.helpers import FIXTURES, make_settings
from tests.hostile.catalog import know_every_object
from tests.peers import Peers

pytestmark = pytest.mark.integration

SCHEMATHESIS_CONFIG = Path(__file__).with_name("schemathesis.toml")
CONFIG = schemathesis.Config.from_path(SCHEMATHESIS_CONFIG)
ADMIN_TOKEN = CONFIG.projects.default.auth.openapi.schemes["adminToken"].bearer
# The document's examples name this customer and object; schemathesis sends them first.
CUSTOMER, OBJECT = "customer-42", "object-7"
BLEND = (FIXTURES / "blend" / "blender-5.0" / "range_10_20.blend").read_bytes()
STRANGER = {"REMOTE_ADDR": "203.0.113.9"}  # not a privileged address
MAX_EXAMPLES = 50


class AppUnderTest:
    """The WSGI app schemathesis sends to: the running test's app, set by `app_under_test`."""

    def __init__(self) -> None:
        documents_only = Flask(__name__)
        documents_only.extensions["session_supervisor"] = SimpleNamespace(
            settings=Settings(_env_file=None)
        )
        documents_only.register_blueprint(api)
        documents_only.register_blueprint(openapi)
        self.target: Flask = documents_only

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        return self.target(environ, start_response)


APP_UNDER_TEST = AppUnderTest()
schema = schemathesis.openapi.from_wsgi(f"{PREFIX}/openapi.json", APP_UNDER_TEST, config=CONFIG)


@pytest.fixture(name="settings")
def admin_token_settings(database_url: str, redis_url: str, peers: Peers) -> Settings:
    """The suite's settings plus an admin token. Schemathesis' in-process client sends no
    REMOTE_ADDR, so it is never a privileged address: admin routes need the token."""
    return make_settings(database_url, redis_url, peers.base_url, admin_token=ADMIN_TOKEN)


@dataclass
class World:
    """A customer with a running workload, two users and frames out with them."""

    client: FlaskClient
    sv: Services

    def ensure_running(self) -> None:
        response = self.client.post(
            f"{PREFIX}/start-workload", data={"customer_id": CUSTOMER, "object_id": OBJECT}
        )
        if response.status_code == 400 and response.get_json() == {"message": ALREADY_RUNNING}:
            return
        assert response.status_code == 200, response.get_data(as_text=True)
        with self.sv.db.transaction() as session:
            workload_id = session.scalars(
                select(Workload.id).where(
                    Workload.customer_id == CUSTOMER, Workload.status.in_(ACTIVE_STATUSES)
                )
            ).one()
            session.execute(
                insert(WorkloadUser),
                [
                    {"workload_id": workload_id, "user_id": user, "state": "active"}
                    for user in ("user-a", "user-b")
                ],
            )
            for numbers, user in (((10, 11), "user-a"), ((12,), "user-b")):
                session.execute(
                    update(Frame)
                    .where(Frame.workload_id == workload_id, Frame.number.in_(numbers))
                    .values(state=FrameState.ASSIGNED, user_id=user)
                )


@pytest.fixture
def app_under_test(app: Flask) -> Iterator[Flask]:
    documents_only = APP_UNDER_TEST.target
    APP_UNDER_TEST.target = app
    yield app
    APP_UNDER_TEST.target = documents_only


@pytest.fixture
def world(app: Flask, sv: Services, peers: Peers) -> World:
    peers.add_object(CUSTOMER, OBJECT, BLEND)
    know_every_object(peers)
    return World(app.test_client(), sv)


# --- schemathesis -------------------------------------------------------------------------


@schema.parametrize()
@hypothesis_settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    # One app (and database) per operation, shared by its examples: intended.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_every_operation_keeps_to_the_document(
    case: schemathesis.Case, app_under_test: Flask, world: World
) -> None:
    # Every other operation meets the example customer with a running workload; a workload
    # start-workload starts is stopped at once, so that the next valid start is accepted too.
    starts = case.operation.path == f"{PREFIX}/start-workload" and case.method == "POST"
    if case.operation.path != f"{PREFIX}/start-workload":
        world.ensure_running()
    response = case.call_and_validate()
    if starts and response.status_code == 200:
        stopped = world.client.post(
            f"{PREFIX}/stop-and-delete-workload", data={"customer_id": case.body["customer_id"]}
        )
        assert stopped.status_code == 200, stopped.get_data(as_text=True)


# --- the document -------------------------------------------------------------------------


def test_openapi_json_is_valid_openapi_3(client: FlaskClient) -> None:
    response = client.get(f"{PREFIX}/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    document = response.get_json()
    assert document["openapi"].startswith("3.")
    validate_openapi(document)


def test_the_served_document_is_the_fuzzed_one(client: FlaskClient) -> None:
    assert client.get(f"{PREFIX}/openapi.json").get_json() == schema.raw_schema


def _schemas_with_a_pattern(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if "pattern" in node:
            yield node
        for value in node.values():
            yield from _schemas_with_a_pattern(value)
    elif isinstance(node, list):
        for value in node:
            yield from _schemas_with_a_pattern(value)


def test_every_id_in_the_document_has_the_servers_rule(client: FlaskClient) -> None:
    document = client.get(f"{PREFIX}/openapi.json").get_json()
    ids = list(_schemas_with_a_pattern(document))
    # the two forms, the query and the three paths that take a customer, and object_id
    assert len(ids) >= 7
    for schema in ids:
        assert (schema["pattern"], schema["minLength"], schema["maxLength"]) == (
            ID_SCHEMA_PATTERN,
            1,
            ID_MAX_CHARS,
        )


def _documented(value: str) -> bool:
    """What the document allows: OpenAPI patterns are ECMA-262, whose `$` (unlike Python's)
    does not match before a final newline."""
    within = 1 <= len(value) <= ID_MAX_CHARS and not value.endswith("\n")
    return within and re.search(ID_SCHEMA_PATTERN, value) is not None


def _served(value: str) -> bool:
    try:
        validate_id("customer_id", value)
    except InvalidInput:
        return False
    return True


@given(
    st.one_of(
        st.sampled_from([".", "..", "...", ".a", "a.", "a" * ID_MAX_CHARS, "a" * 129, "a\n"]),
        st.from_regex(ID_PATTERN, fullmatch=True),
        st.text(alphabet="._-aZ0/\n ", max_size=6),
        st.text(max_size=ID_MAX_CHARS + 2),
    )
)
def test_the_documented_id_rule_is_the_servers(value: str) -> None:
    assert _documented(value) == _served(value)


def test_every_route_of_the_api_is_documented_and_nothing_else(
    app: Flask, client: FlaskClient
) -> None:
    routes = {
        (method.lower(), rule.rule.replace("<", "{").replace(">", "}"))
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("api.")
        for method in rule.methods or ()
        if method not in {"HEAD", "OPTIONS"}
    }
    paths = client.get(f"{PREFIX}/openapi.json").get_json()["paths"]
    documented = {(method, path) for path, item in paths.items() for method in item}
    assert len(routes) == 9
    assert documented == routes


def _validate(client: FlaskClient, method: str, path: str, url: str, **kwargs: Any) -> Any:
    """Send a request with the Flask client; the answer must be what the document says."""
    response = client.open(url, method=method, **kwargs)
    schema[path][method].validate_response(response)
    return response


def test_real_workload_states_match_the_documented_bodies(
    client: FlaskClient, world: World, sv: Services, peers: Peers
) -> None:
    status = f"{PREFIX}/get-workload-status"
    progress = f"{PREFIX}/get-workload-progress"
    user_count = f"{PREFIX}/get-user-count/{{customer_id}}"
    query = {"customer_id": CUSTOMER}

    world.ensure_running()
    sv.settings.progress_mapping_limit = 2
    running = _validate(client, "GET", progress, progress, query_string=query).get_json()
    assert running["frame_mapping"] == {"10": "user-a", "11": "user-a"}
    assert running["frame_mapping_truncated"] is True
    assert _validate(client, "GET", status, status, query_string=query).status_code == 200
    counts = _validate(client, "GET", user_count, f"{PREFIX}/get-user-count/{CUSTOMER}")
    assert counts.get_json()["active_users"] == 2

    with sv.db.transaction() as session:
        session.execute(update(Frame).values(state=FrameState.RENDERED, user_id=None))
        session.execute(
            update(Workload).values(
                status=WorkloadStatus.COMPLETED, rendered_frames=Workload.total_frames
            )
        )
    done = _validate(client, "GET", status, status, query_string=query).get_json()
    assert done["status"]["workload_status"] == "completed"
    assert done["status"]["completion_percentage"] == 100.0

    peers.add_object("customer-7", OBJECT, b"not a blend file")
    started = client.post(
        f"{PREFIX}/start-workload", data={"customer_id": "customer-7", "object_id": OBJECT}
    )
    assert started.status_code == 200
    failed = _validate(client, "GET", status, status, query_string={"customer_id": "customer-7"})
    assert failed.get_json()["status"]["failure_reason"]
    failed = _validate(
        client, "GET", progress, progress, query_string={"customer_id": "customer-7"}
    )
    assert failed.get_json()["workload_status"] == "failed"


@pytest.mark.parametrize(
    ("method", "path", "url"),
    [
        ("GET", "/get-user-count/{customer_id}", f"/get-user-count/{CUSTOMER}"),
        ("POST", "/set-user-count/{customer_id}/{user_count}", f"/set-user-count/{CUSTOMER}/3"),
    ],
)
@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN_TOKEN}]
)
def test_admin_routes_refuse_strangers_with_the_documented_403(
    client: FlaskClient, world: World, method: str, path: str, url: str, headers: dict[str, str]
) -> None:
    world.ensure_running()
    response = _validate(
        client, method, PREFIX + path, PREFIX + url, headers=headers, environ_base=STRANGER
    )
    assert response.status_code == 403


def test_an_oversized_form_is_the_documented_413(client: FlaskClient, settings: Settings) -> None:
    path = f"{PREFIX}/start-workload"
    response = _validate(
        client,
        "POST",
        path,
        path,
        data={"customer_id": CUSTOMER, "object_id": "x" * settings.max_request_bytes},
    )
    assert response.status_code == 413


def test_a_method_a_path_does_not_have_is_405_with_allow(client: FlaskClient) -> None:
    response = client.delete(f"{PREFIX}/get-workload-status", query_string={"customer_id": "x"})
    assert response.status_code == 405
    assert set(response.headers.get("Allow", "").split(", ")) >= {"GET"}


@pytest.mark.parametrize(("customer", "obj"), [(CUSTOMER, ".."), (CUSTOMER, "."), ("..", OBJECT)])
def test_a_refused_start_leaves_no_active_workload(
    client: FlaskClient, peers: Peers, customer: str, obj: str
) -> None:
    refused = client.post(
        f"{PREFIX}/start-workload", data={"customer_id": customer, "object_id": obj}
    )
    assert refused.status_code == 400
    assert peers.calls("") == [], "refused before any peer is asked"
    status = client.get(f"{PREFIX}/get-workload-status", query_string={"customer_id": customer})
    if status.status_code == 200:
        assert status.get_json()["status"]["workload_status"] == "failed"
    else:
        assert status.status_code in {400, 404}


# --- the Swagger UI page ------------------------------------------------------------------


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in {"src", "href"} and value is not None:
                self.urls.append(value)


def test_the_docs_page_uses_only_locally_served_assets(client: FlaskClient) -> None:
    page = client.get(f"{PREFIX}/docs")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    parser = _References()
    parser.feed(page.get_data(as_text=True))
    assert len(parser.urls) >= 5
    scripts = []
    for url in parser.urls:
        parts = urlsplit(url)
        assert (parts.scheme, parts.netloc) == ("", ""), f"{url} is not served by us"
        assert parts.path.startswith(f"{PREFIX}/docs/")
        with client.get(url) as asset:
            assert asset.status_code == 200, url
            assert asset.data, url
            if url.endswith(".js"):
                assert asset.mimetype == "text/javascript", url
                scripts.append(asset.get_data(as_text=True))
    initializer = scripts[-1]
    assert f'url: "{PREFIX}/openapi.json"' in initializer
    assert "validatorUrl: null" in initializer  # else Swagger UI calls validator.swagger.io
    assert "SwaggerUIBundle" in scripts[0]


@pytest.mark.parametrize(
    "name", ["index.html", "swagger-initializer.js", "oauth2-redirect.html", "..%2F__init__.py"]
)
def test_the_docs_serve_no_other_file(client: FlaskClient, name: str) -> None:
    response = client.get(f"{PREFIX}/docs/assets/{name}")
    assert response.status_code == 404
    assert response.get_json()["message"] == "Not Found"
