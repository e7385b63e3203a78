"""The OpenAPI 3 description of CONTRACT.md §1, and a Swagger UI page to read it.

`GET /api/session-supervisor-service/openapi.json` serves the document (built with apispec from
plain dict schemas); `GET /api/session-supervisor-service/docs` serves Swagger UI from the
`swagger-ui-bundle` package's files, so the page works without internet (no CDN).

The document describes the views of `app/api.py` as they are; it does not drive them.
`tests/hostile/test_openapi.py` keeps the two in step with schemathesis.
"""

from __future__ import annotations

import json
from importlib import metadata
from typing import Any

from apispec import APISpec
from flask import Blueprint, Response, abort, current_app, jsonify, send_from_directory, url_for
from flask.typing import ResponseReturnValue
from swagger_ui_bundle import swagger_ui_path

from supervisor.config import Settings

PREFIX = "/api/session-supervisor-service"
ID_PATTERN = "^[A-Za-z0-9._-]{1,128}$"
OPENAPI_VERSION = "3.0.3"  # the bundled Swagger UI (4.x) renders 3.0, not 3.1
CACHE_KEY = "session_supervisor_openapi"
WORKLOAD_STATES = ["initialized", "running", "completed", "failed"]

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

openapi = Blueprint("openapi", __name__, url_prefix=PREFIX)


# --- the document ------------------------------------------------------------------------


def _id_schema(name: str, example: str) -> dict[str, Any]:
    return {
        "type": "string",
        "pattern": ID_PATTERN,
        "minLength": 1,
        "maxLength": 128,
        "description": f"{name}: 1 to 128 characters of A-Z, a-z, 0-9, '.', '_', '-'.",
        "example": example,
    }


def _json(schema: str | dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _message(text: str) -> dict[str, Any]:
    """A `{"message": <text>}` body whose text is fixed by the contract."""
    return {
        "type": "object",
        "required": ["message"],
        "properties": {"message": {"type": "string", "enum": [text]}},
        "additionalProperties": False,
    }


def _version() -> str:
    try:
        return metadata.version("session-supervisor")
    except metadata.PackageNotFoundError:  # running from a tree that was never installed
        return "0.0.0"


def _components(spec: APISpec, settings: Settings) -> None:
    spec.components.security_scheme(
        "adminToken",
        {
            "type": "http",
            "scheme": "bearer",
            "description": (
                "`Authorization: Bearer <ADMIN_TOKEN>`, when the service has `ADMIN_TOKEN` set. "
                "Callers from a privileged address (`PRIVILEGED_IPS`, default 127.0.0.1) need "
                "no token."
            ),
        },
    )
    spec.components.schema(
        "Error",
        {
            "type": "object",
            "description": "Every error body. `details` says what was wrong, when there is more.",
            "required": ["message"],
            "properties": {"message": {"type": "string"}, "details": {"type": "string"}},
            "additionalProperties": False,
            "example": {"message": "Invalid input", "details": "customer_id is required"},
        },
    )
    spec.components.schema(
        "WorkloadState",
        {
            "type": "string",
            "enum": WORKLOAD_STATES,
            "description": (
                "`initialized` while the .blend file is read, `running` while frames are "
                "rendered, `completed` when every frame is in, `failed` (see `failure_reason`)."
            ),
        },
    )
    counters = {
        "total_frames": {"type": "integer", "minimum": 0, "example": 250},
        "completed_frames": {"type": "integer", "minimum": 0, "example": 125},
    }
    failure_reason = {
        "type": "string",
        "description": "Why the workload failed; present only for a failed workload.",
    }
    spec.components.schema(
        "WorkloadStatus",
        {
            "type": "object",
            "required": ["message", "status"],
            "properties": {
                "message": {"type": "string", "enum": ["Workload status"]},
                "status": {
                    "type": "object",
                    "required": [
                        "workload_status",
                        "total_frames",
                        "completed_frames",
                        "completion_percentage",
                    ],
                    "properties": {
                        "workload_status": "WorkloadState",
                        **counters,
                        "completion_percentage": {
                            "type": "number",
                            "minimum": 0,
                            "maximum": 100,
                            "example": 50.0,
                        },
                        "stored_frames": {
                            "type": "integer",
                            "minimum": 0,
                            "description": "Frames in the final store (as completed_frames).",
                            "example": 125,
                        },
                        "recorded_frames": {
                            "type": "integer",
                            "minimum": 0,
                            "description": (
                                "Frames the catalog has confirmed. The workload is "
                                "`completed` only once this is total_frames."
                            ),
                            "example": 120,
                        },
                        "failure_reason": failure_reason,
                    },
                    "additionalProperties": False,
                },
            },
            "additionalProperties": False,
        },
    )
    spec.components.schema(
        "WorkloadProgress",
        {
            "type": "object",
            "required": [
                "total_frames",
                "completed_frames",
                "remaining_frames",
                "progress_percentage",
                "workload_status",
                "active_users",
                "frame_mapping",
                "frame_mapping_truncated",
            ],
            "properties": {
                **counters,
                "remaining_frames": {"type": "integer", "minimum": 0, "example": 125},
                "progress_percentage": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": 100,
                    "example": 50.0,
                },
                "workload_status": "WorkloadState",
                "active_users": {"type": "integer", "minimum": 0, "example": 2},
                "frame_mapping": {
                    "type": "object",
                    "description": (
                        "Each frame still assigned (key: the frame number as a string) to the "
                        "user holding it. At most `PROGRESS_MAPPING_LIMIT` entries "
                        f"({settings.progress_mapping_limit} here), lowest frames first."
                    ),
                    "additionalProperties": {"type": "string"},
                    "example": {"126": "user-123", "127": "user-456"},
                },
                "frame_mapping_truncated": {
                    "type": "boolean",
                    "description": "True when more frames are assigned than `frame_mapping` lists.",
                },
                "failure_reason": failure_reason,
            },
            "additionalProperties": False,
        },
    )
    spec.components.schema(
        "UserCount",
        {
            "type": "object",
            "required": ["user_count", "session_id", "active_users"],
            "properties": {
                "user_count": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "How many users the workload wants.",
                    "example": 3,
                },
                "session_id": {
                    "type": "string",
                    "description": "The session id the User Manager knows the workload by.",
                    "example": "6f1c0f3e2b9d4a7c8e5f0a1b2c3d4e5f",
                },
                "active_users": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "How many users it has now.",
                    "example": 2,
                },
            },
            "additionalProperties": False,
        },
    )
    spec.components.schema(
        "SessionOverview",
        {
            "type": "object",
            "required": [
                "customer_id",
                "object_id",
                "session_routing_key",
                "session_id",
                "number_of_users",
                "session_status",
            ],
            "properties": {
                "customer_id": {"type": "string", "example": "cust-1"},
                "object_id": {"type": "string", "example": "obj-1"},
                "session_routing_key": {
                    "type": "string",
                    "example": "SESSION_SUPERVISOR_6f1c0f3e2b9d4a7c8e5f0a1b2c3d4e5f",
                },
                "session_id": {"type": "string", "example": "6f1c0f3e2b9d4a7c8e5f0a1b2c3d4e5f"},
                "number_of_users": {"type": "integer", "minimum": 0, "example": 3},
                "session_status": {
                    "type": "string",
                    "description": "The workload's status; `stopped` right after a stop.",
                    "example": "running",
                },
            },
            "additionalProperties": False,
        },
    )
    spec.components.schema(
        "UserCountUpdated",
        {
            "type": "object",
            "required": ["message", "new_user_count"],
            "properties": {
                "message": {"type": "string", "enum": ["User count updated successfully"]},
                "new_user_count": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": settings.max_user_count,
                    "example": 5,
                },
            },
            "additionalProperties": False,
        },
    )
    spec.components.schema(
        "StartWorkloadForm",
        {
            "type": "object",
            "required": ["customer_id", "object_id"],
            "properties": {
                "customer_id": _id_schema("The customer", "customer-42"),
                "object_id": _id_schema("The catalog object to render", "object-7"),
            },
        },
    )
    spec.components.schema(
        "CustomerForm",
        {
            "type": "object",
            "required": ["customer_id"],
            "properties": {"customer_id": _id_schema("The customer", "customer-42")},
        },
    )
    spec.components.parameter(
        "CustomerIdQuery",
        "query",
        {
            "name": "customer_id",
            "required": True,
            "schema": _id_schema("The customer", "customer-42"),
        },
    )
    spec.components.parameter(
        "CustomerIdPath",
        "path",
        {
            "name": "customer_id",
            "required": True,
            "schema": _id_schema("The customer", "customer-42"),
        },
    )
    spec.components.response(
        "BadRequest", _json("Error", "Missing or invalid input (`details` says which).")
    )
    spec.components.response("NotFound", _json("Error", "The customer has no such workload."))
    spec.components.response(
        "PayloadTooLarge",
        _json("Error", f"The request body is larger than {settings.max_request_bytes} bytes."),
    )
    spec.components.response(
        "ServerError",
        _json("Error", "Internal server error (a peer or the database failed)."),
    )
    spec.components.response(
        "Forbidden",
        _json("Error", "Neither a privileged address nor a valid admin token."),
    )


def _paths(spec: APISpec, settings: Settings) -> None:
    form = "application/x-www-form-urlencoded"
    admin_security = [{"adminToken": []}]
    admin_note = (
        " Admin Panel Control: needs the admin token (`Authorization: Bearer <ADMIN_TOKEN>`), "
        "except from a privileged address (`PRIVILEGED_IPS`, default 127.0.0.1), where no "
        "token is asked for. Anything else is a 403."
    )
    spec.path(
        path=f"{PREFIX}/",
        operations={
            "post": {
                "operationId": "alive",
                "tags": ["service"],
                "summary": "Tell whether the service is up",
                "responses": {
                    "200": _json(_message("Session Supervisor Service is active"), "Up."),
                    "500": "ServerError",
                },
            }
        },
    )
    spec.path(
        path=f"{PREFIX}/start-workload",
        operations={
            "post": {
                "operationId": "startWorkload",
                "tags": ["workloads"],
                "summary": "Start rendering a customer's catalog object",
                "description": (
                    "Looks the object up in the catalog and hands the reading of its .blend file "
                    "to a worker. A .blend file that cannot be read fails the workload "
                    "afterwards: see `failure_reason` in the status. A customer has at most one "
                    "active (initialized or running) workload."
                ),
                "requestBody": {
                    "required": True,
                    "content": {
                        form: {
                            "schema": "StartWorkloadForm",
                            "examples": {
                                "render": {
                                    "summary": "Render object-7 for customer-42",
                                    "value": {
                                        "customer_id": "customer-42",
                                        "object_id": "object-7",
                                    },
                                }
                            },
                        }
                    },
                },
                "responses": {
                    "200": _json(_message("Workload started"), "The workload is on its way."),
                    "400": _json(
                        "Error",
                        "Missing or invalid fields (`Invalid input`), an object the catalog "
                        "cannot render (`Object cannot be rendered`), or a workload already "
                        "active for the customer (`One workload already running. Your Access "
                        "Plan doesnt allow to run another workload`).",
                    ),
                    "413": "PayloadTooLarge",
                    "500": "ServerError",
                },
            }
        },
    )
    spec.path(
        path=f"{PREFIX}/stop-and-delete-workload",
        operations={
            "post": {
                "operationId": "stopAndDeleteWorkload",
                "tags": ["workloads"],
                "summary": "Stop the customer's active workload and forget it",
                "description": "Every user gets `stop-work` and is released; demand is dropped.",
                "requestBody": {
                    "required": True,
                    "content": {
                        form: {
                            "schema": "CustomerForm",
                            "examples": {
                                "stop": {
                                    "summary": "Stop customer-42's workload",
                                    "value": {"customer_id": "customer-42"},
                                }
                            },
                        }
                    },
                },
                "responses": {
                    "200": _json(_message("Workload stopped and deleted"), "Stopped and deleted."),
                    "400": "BadRequest",
                    "404": _json("Error", "The customer has no active workload."),
                    "413": "PayloadTooLarge",
                    "500": _json(
                        "Error",
                        "`Failed to stop and delete workload` (or another internal error).",
                    ),
                },
            }
        },
    )
    spec.path(
        path=f"{PREFIX}/get-workload-status",
        operations={
            "get": {
                "operationId": "getWorkloadStatus",
                "tags": ["workloads"],
                "summary": "Counters of the customer's current (or last) workload",
                "parameters": ["CustomerIdQuery"],
                "responses": {
                    "200": _json("WorkloadStatus", "The workload's counters."),
                    "400": "BadRequest",
                    "404": "NotFound",
                    "500": "ServerError",
                },
            }
        },
    )
    spec.path(
        path=f"{PREFIX}/get-workload-progress",
        operations={
            "get": {
                "operationId": "getWorkloadProgress",
                "tags": ["workloads"],
                "summary": "Counters and the frames still out with users",
                "parameters": ["CustomerIdQuery"],
                "responses": {
                    "200": _json("WorkloadProgress", "The workload's progress."),
                    "400": "BadRequest",
                    "404": "NotFound",
                    "500": "ServerError",
                },
            }
        },
    )
    spec.path(
        path=f"{PREFIX}/get-user-count/{{customer_id}}",
        operations={
            "get": {
                "operationId": "getUserCount",
                "tags": ["admin"],
                "summary": "How many users the customer's active workload wants and has",
                "description": admin_note.strip(),
                "security": admin_security,
                "parameters": ["CustomerIdPath"],
                "responses": {
                    "200": _json("UserCount", "The active workload's user counts."),
                    "400": "BadRequest",
                    "403": "Forbidden",
                    "404": _json(
                        "Error",
                        "`No active session for customer_id: <customer_id>`, or a path that "
                        "names no route (e.g. an id containing '/').",
                    ),
                    "500": "ServerError",
                },
            }
        },
    )
    spec.path(
        path=f"{PREFIX}/set-user-count/{{customer_id}}/{{user_count}}",
        operations={
            "post": {
                "operationId": "setUserCount",
                "tags": ["admin"],
                "summary": "Set how many users the customer's active workload wants",
                "description": (
                    "Demands the missing users from the User Manager, or releases the surplus."
                    + admin_note
                ),
                "security": admin_security,
                "parameters": [
                    "CustomerIdPath",
                    {
                        "name": "user_count",
                        "in": "path",
                        "required": True,
                        "description": (
                            "Whole number of users wanted, 1 to `MAX_USER_COUNT` "
                            f"({settings.max_user_count} here). Anything else is a 400."
                        ),
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": settings.max_user_count,
                            "example": 5,
                        },
                    },
                ],
                "responses": {
                    "200": _json("UserCountUpdated", "The new demand is recorded."),
                    "400": "BadRequest",
                    "403": "Forbidden",
                    "404": _json(
                        "Error",
                        "`No active session for customer_id: <customer_id>`, or a path that "
                        "names no route.",
                    ),
                    "500": "ServerError",
                },
            }
        },
    )

    spec.path(
        path=f"{PREFIX}/get-session-supervisor-overview/{{customer_id}}",
        operations={
            "get": {
                "operationId": "getSessionSupervisorOverview",
                "tags": ["admin"],
                "summary": "The customer's latest session (also one stopped moments ago)",
                "description": (
                    "Called by the Customer Service right after a stop, for the session to "
                    'clean up. An unknown customer answers 200 `{"error": "No active session '
                    'for customer_id: <customer_id>"}`, as the original did.' + admin_note
                ),
                "security": admin_security,
                "parameters": ["CustomerIdPath"],
                "responses": {
                    "200": {
                        "description": "The overview, or the original's error object.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        {"$ref": "#/components/schemas/SessionOverview"},
                                        {
                                            "type": "object",
                                            "required": ["error"],
                                            "properties": {"error": {"type": "string"}},
                                            "additionalProperties": False,
                                        },
                                    ]
                                }
                            }
                        },
                    },
                    "400": "BadRequest",
                    "403": "Forbidden",
                    "404": _json("Error", "A path that names no route."),
                    "500": "ServerError",
                },
            }
        },
    )
    spec.path(
        path=f"{PREFIX}/get-all-supervisor-information",
        operations={
            "get": {
                "operationId": "getAllSupervisorInformation",
                "tags": ["admin"],
                "summary": "One overview per active workload (the Admin Panel's list)",
                "description": admin_note.strip(),
                "security": admin_security,
                "responses": {
                    "200": {
                        "description": "The overviews.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/SessionOverview"},
                                }
                            }
                        },
                    },
                    "403": "Forbidden",
                    "500": "ServerError",
                },
            }
        },
    )


def build_spec(settings: Settings) -> dict[str, Any]:
    """The OpenAPI document for an app running with `settings` (limits come from them)."""
    spec = APISpec(
        title="Session Supervisor Service",
        version=_version(),
        openapi_version=OPENAPI_VERSION,
        info={
            "description": (
                "Hands a customer's Blender frames to render nodes (users) and collects the "
                'results. Every error body is `{"message": ..., "details": ...}` '
                "(`details` optional); a method a path does not have is a 405 with that body."
            ),
        },
        tags=[
            {"name": "service", "description": "Liveness."},
            {"name": "workloads", "description": "A customer's render workload."},
            {"name": "admin", "description": "Admin Panel Controls."},
        ],
    )
    _components(spec, settings)
    _paths(spec, settings)
    return spec.to_dict()


def _spec() -> dict[str, Any]:
    cached = current_app.extensions.get(CACHE_KEY)
    if cached is None:
        settings = current_app.extensions["session_supervisor"].settings
        cached = current_app.extensions[CACHE_KEY] = build_spec(settings)
    return cached


# --- the views ---------------------------------------------------------------------------


@openapi.get("/openapi.json")
def openapi_json() -> ResponseReturnValue:
    return jsonify(_spec())


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
