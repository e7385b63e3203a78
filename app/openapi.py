"""The HTTP contract's machinery: spectree validates requests and responses against the models
of app/schemas.py and writes the OpenAPI document from them; a Swagger UI page reads it.

`GET /api/session-supervisor-service/openapi.json` serves the document; `GET .../docs` serves
Swagger UI from the `swagger-ui-bundle` package's files, so the page works without internet.
tests/hostile/test_openapi.py (in-process) and tests/hostile/test_live_api.py (the CLI over
HTTP) run schemathesis, every check, against the app with the document.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping
from importlib import metadata
from typing import Any

from flask import Blueprint, Response, abort, current_app, jsonify, send_from_directory, url_for
from flask.typing import ResponseReturnValue
from pydantic import ValidationError
from spectree import SecurityScheme, SecuritySchemeData, SpecTree
from spectree.plugins.flask_plugin import FlaskPlugin
from swagger_ui_bundle import swagger_ui_path

from app.errors import validation_details
from app.schemas import PATH_PARAMETERS, USER_COUNT_CEILING, Error, PathParameters
from supervisor.config import Settings
from supervisor.errors import InvalidInput

logger = logging.getLogger(__name__)

PREFIX = "/api/session-supervisor-service"
OPENAPI_VERSION = "3.0.3"  # the bundled Swagger UI (4.x) renders 3.0, not 3.1
CACHE_KEY = "session_supervisor_openapi"
FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"


def _version() -> str:
    try:
        return metadata.version("session-supervisor")
    except metadata.PackageNotFoundError:  # running from a tree that was never installed
        return "0.0.0"


# --- validation ----------------------------------------------------------------------------


def _check_request(
    request: Any, _response: object, error: Exception | None, _instance: object, _adapter: object
) -> None:
    """spectree's `before` hook: a refused query or body, then a refused path parameter,
    becomes the API's 400 `Invalid input` (app/errors.py), not spectree's list of errors."""
    if error is None:
        try:
            PathParameters.model_validate(request.view_args or {})
        except ValidationError as exc:
            error = exc
    if isinstance(error, ValidationError):
        raise InvalidInput(validation_details(error)) from error


class ResponseOffContract(RuntimeError):
    """A view answered with a body its response model does not allow."""


def _check_response(
    request: Any, _response: object, error: Exception | None, _instance: object, _adapter: object
) -> None:
    """spectree's `after` hook: an answer off the contract is the API's own 500, logged."""
    if error is not None:
        logger.error("response off contract", extra={"path": request.path, "error": str(error)})
        raise ResponseOffContract(f"the answer to {request.path} does not match its model")


class _Plugin(FlaskPlugin):
    """spectree's Flask plugin; a path parameter is documented with its field of
    `PathParameters` (spectree on its own documents path parameters as plain strings)."""

    def parse_path(
        self, route: Any, path_parameter_descriptions: Mapping[str, str] | None
    ) -> tuple[str, list[dict[str, Any]]]:
        path, parameters = super().parse_path(route, path_parameter_descriptions)
        for parameter in parameters:
            schema = dict(PATH_PARAMETERS[parameter["name"]])
            parameter["schema"] = schema
            parameter["description"] = schema.pop("description", "")
        return path, parameters


contract = SpecTree(
    "flask",
    backend=_Plugin,
    mode="strict",
    annotations=False,
    title="Session Supervisor Service",
    version=_version(),
    openapi_version=OPENAPI_VERSION,
    description=(
        "Hands a customer's Blender frames to render nodes (users) and collects the results. "
        'Every error body is `{"message": ..., "details": ...}` (`details` optional); a '
        "method a path does not have is a 405 with that body."
    ),
    validation_error_status=400,
    validation_error_model=Error,
    before=_check_request,
    after=_check_response,
    naming_strategy=lambda model: model.__name__,
    nested_naming_strategy=lambda _parent, child: child,
    security_schemes=[
        SecurityScheme(
            name="adminToken",
            data=SecuritySchemeData(
                type="http",
                scheme="bearer",
                description=(
                    "`Authorization: Bearer <ADMIN_TOKEN>`, when the service has `ADMIN_TOKEN` "
                    "set. Callers from a privileged address (`PRIVILEGED_IPS`, default "
                    "127.0.0.1) need no token."
                ),
            ),
        )
    ],
)


def build_document(settings: Settings) -> dict[str, Any]:
    """The OpenAPI document for an app running with `settings`; call within the app's context.

    spectree documents a form as multipart only; Flask reads the contract's urlencoded form
    the same way, so both are listed. The user count's maximum is a setting."""
    document = copy.deepcopy(contract.spec)
    most_users = min(settings.max_user_count, USER_COUNT_CEILING)
    for item in document["paths"].values():
        for operation in item.values():
            content = operation.get("requestBody", {}).get("content", {})
            if MULTIPART in content:
                operation["requestBody"]["content"] = {FORM: content[MULTIPART], **content}
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "user_count":
                    parameter["schema"]["maximum"] = most_users
    return document


# --- the views -----------------------------------------------------------------------------

openapi = Blueprint("openapi", __name__, url_prefix=PREFIX)


@openapi.get("/openapi.json")
def openapi_json() -> ResponseReturnValue:
    cached = current_app.extensions.get(CACHE_KEY)
    if cached is None:
        settings = current_app.extensions["session_supervisor"].settings
        cached = current_app.extensions[CACHE_KEY] = build_document(settings)
    return jsonify(cached)


# The files of the Swagger UI distribution the page uses; nothing else of the package is served.
UI_ASSETS = frozenset(
    {
        "swagger-ui.css",
        "index.css",
        "swagger-ui-bundle.js",
        "swagger-ui-standalone-preset.js",
        "favicon-32x32.png",
        "favicon-16x16.png",
    }
)
# Swagger UI sets inline styles and shows data: images; everything else comes from here.
DOCS_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'none'"
)

DOCS_PAGE = """<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="UTF-8">
    <title>Session Supervisor Service: API</title>
    <link rel="stylesheet" type="text/css" href="{css}">
    <link rel="stylesheet" type="text/css" href="{index_css}">
    <link rel="icon" type="image/png" href="{icon32}" sizes="32x32">
    <link rel="icon" type="image/png" href="{icon16}" sizes="16x16">
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="{bundle}" charset="UTF-8"></script>
    <script src="{preset}" charset="UTF-8"></script>
    <script src="{initializer}" charset="UTF-8"></script>
  </body>
</html>
"""

INITIALIZER = """window.onload = function () {{
  window.ui = SwaggerUIBundle({{
    url: {spec_url},
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    plugins: [SwaggerUIBundle.plugins.DownloadUrl],
    layout: "StandaloneLayout"
  }});
}};
"""


def _with_csp(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = DOCS_CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@openapi.get("/docs")
def docs() -> ResponseReturnValue:
    def asset(name: str) -> str:
        return url_for("openapi.docs_asset", filename=name)

    page = DOCS_PAGE.format(
        css=asset("swagger-ui.css"),
        index_css=asset("index.css"),
        icon32=asset("favicon-32x32.png"),
        icon16=asset("favicon-16x16.png"),
        bundle=asset("swagger-ui-bundle.js"),
        preset=asset("swagger-ui-standalone-preset.js"),
        initializer=url_for("openapi.docs_initializer"),
    )
    return _with_csp(Response(page, mimetype="text/html"))


@openapi.get("/docs/swagger-initializer.js")
def docs_initializer() -> ResponseReturnValue:
    script = INITIALIZER.format(spec_url=json.dumps(url_for("openapi.openapi_json")))
    return _with_csp(Response(script, mimetype="text/javascript"))


@openapi.get("/docs/assets/<filename>")
def docs_asset(filename: str) -> ResponseReturnValue:
    if filename not in UI_ASSETS:
        abort(404)
    return _with_csp(send_from_directory(str(swagger_ui_path), filename))
