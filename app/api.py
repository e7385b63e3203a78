"""The REST API of CONTRACT.md §1, under /api/session-supervisor-service.

Each view names its request and response models (app/schemas.py); spectree checks the request
before the view runs and the answer after it (app/openapi.py), and writes the OpenAPI document
from the same declarations. An admin route checks the caller (app/security.py) first.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from spectree import Response, Tag

from app.errors import error_body
from app.openapi import PREFIX, contract
from app.schemas import (
    Alive,
    CustomerForm,
    CustomerQuery,
    Error,
    OverviewAnswer,
    Overviews,
    StartWorkloadForm,
    StatusQuery,
    UserCount,
    UserCountUpdated,
    WorkloadProgress,
    WorkloadStarted,
    WorkloadStatusBody,
    WorkloadStopped,
)
from app.security import privileged
from supervisor import workloads
from supervisor.errors import SupervisorError
from supervisor.services import Services

logger = logging.getLogger(__name__)

api = Blueprint("api", __name__, url_prefix=PREFIX)

SERVICE = Tag(name="service", description="Liveness.")
WORKLOADS = Tag(name="workloads", description="A customer's render workload.")
ADMIN = Tag(
    name="admin",
    description=(
        "Admin Panel Controls: they need the admin token (`Authorization: Bearer "
        "<ADMIN_TOKEN>`), except from a privileged address (`PRIVILEGED_IPS`, default "
        "127.0.0.1), where no token is asked for. Anything else is a 403."
    ),
)
# The token, or nothing from a privileged address: the empty requirement says "or no token".
ADMIN_TOKEN = [{"adminToken": []}, {}]

BAD_REQUEST = (Error, "Missing or invalid input (`details` says which).")
TOO_LARGE = (Error, "The request body is larger than `MAX_REQUEST_BYTES`.")
SERVER_ERROR = (Error, "Internal server error (a peer or the database failed).")
FORBIDDEN = (Error, "Neither a privileged address nor a valid admin token.")
NO_WORKLOAD = (Error, "The customer has no such workload.")
NO_SESSION = (
    Error,
    "`No active session for customer_id: <customer_id>`, or a path that names no route "
    "(e.g. an id containing '/').",
)


def _services() -> Services:
    return current_app.extensions["session_supervisor"]


def _fields() -> Any:
    """The request's validated form, JSON body or query (spectree sets `request.context`)."""
    context = request.context  # type: ignore[attr-defined]
    return context.form or context.json or context.query


@api.post("/")
@contract.validate(
    resp=Response(HTTP_200=(Alive, "Up."), HTTP_500=SERVER_ERROR),
    tags=[SERVICE],
    operation_id="alive",
)
def alive() -> ResponseReturnValue:
    """Tell whether the service is up"""
    return jsonify(message="Session Supervisor Service is active")


@api.post("/start-workload")
@contract.validate(
    form=StartWorkloadForm,
    json=StartWorkloadForm,
    resp=Response(
        HTTP_200=(WorkloadStarted, "The workload is on its way."),
        HTTP_400=(
            Error,
            "Missing or invalid fields (`Invalid input`), an object the catalog cannot render "
            "(`Object cannot be rendered`), or a workload already active for the customer "
            "(`One workload already running. Your Access Plan doesnt allow to run another "
            "workload`).",
        ),
        HTTP_413=TOO_LARGE,
        HTTP_500=SERVER_ERROR,
    ),
    tags=[WORKLOADS],
    operation_id="startWorkload",
)
def start_workload() -> ResponseReturnValue:
    """Start rendering a customer's catalog object

    Looks the object up in the catalog and hands the reading of its .blend file to a worker.
    A .blend file that cannot be read fails the workload afterwards: see `failure_reason` in
    the status. A customer has at most one active (initialized or running) workload.
    """
    fields = _fields()
    workloads.start_workload(_services(), fields.customer_id, fields.object_id)
    return jsonify(message="Workload started")


@api.post("/stop-and-delete-workload")
@contract.validate(
    form=CustomerForm,
    json=CustomerForm,
    resp=Response(
        HTTP_200=(WorkloadStopped, "Stopped and deleted."),
        HTTP_400=BAD_REQUEST,
        HTTP_404=(Error, "The customer has no active workload."),
        HTTP_413=TOO_LARGE,
        HTTP_500=(Error, "`Failed to stop and delete workload` (or another internal error)."),
    ),
    tags=[WORKLOADS],
    operation_id="stopAndDeleteWorkload",
)
def stop_and_delete_workload() -> ResponseReturnValue:
    """Stop the customer's active workload and forget it

    Every user gets `stop-work` and is released; demand is dropped.
    """
    customer_id = _fields().customer_id
    try:
        workloads.stop_and_delete(_services(), customer_id)
    except SupervisorError:
        raise
    except Exception:
        logger.exception("stop and delete failed", extra={"customer_id": customer_id})
        return error_body(500, "Failed to stop and delete workload")
    return jsonify(message="Workload stopped and deleted")


@api.get("/get-workload-status")
@contract.validate(
    query=StatusQuery,
    resp=Response(
        HTTP_200=(WorkloadStatusBody, "The workload's counters."),
        HTTP_400=BAD_REQUEST,
        HTTP_404=(Error, "The customer has no such workload (no completed one, with `last`)."),
        HTTP_500=SERVER_ERROR,
    ),
    tags=[WORKLOADS],
    operation_id="getWorkloadStatus",
)
def get_workload_status() -> ResponseReturnValue:
    """Counters of the customer's current (or last) workload

    A failed start (a mistyped object id) becomes the latest workload; `last=completed`
    still reads the last completed one. Ended workloads are kept for
    `WORKLOAD_RETENTION_SECONDS` (7 days by default).
    """
    query = _fields()
    status = workloads.workload_status(
        _services(), query.customer_id, last_completed=query.last == "completed"
    )
    return jsonify(message="Workload status", status=status)


@api.get("/get-workload-progress")
@contract.validate(
    query=CustomerQuery,
    resp=Response(
        HTTP_200=(WorkloadProgress, "The workload's progress."),
        HTTP_400=BAD_REQUEST,
        HTTP_404=NO_WORKLOAD,
        HTTP_500=SERVER_ERROR,
    ),
    tags=[WORKLOADS],
    operation_id="getWorkloadProgress",
)
def get_workload_progress() -> ResponseReturnValue:
    """Counters and the frames still out with users"""
    return jsonify(workloads.workload_progress(_services(), _fields().customer_id))


@api.get("/get-user-count/<customer_id>")
@privileged
@contract.validate(
    resp=Response(
        HTTP_200=(UserCount, "The active workload's user counts."),
        HTTP_400=BAD_REQUEST,
        HTTP_403=FORBIDDEN,
        HTTP_404=NO_SESSION,
        HTTP_500=SERVER_ERROR,
    ),
    tags=[ADMIN],
    security=ADMIN_TOKEN,
    operation_id="getUserCount",
)
def get_user_count(customer_id: str) -> ResponseReturnValue:
    """How many users the customer's active workload wants and has"""
    return jsonify(workloads.get_user_count(_services(), customer_id))


@api.post("/set-user-count/<customer_id>/<user_count>")
@privileged
@contract.validate(
    resp=Response(
        HTTP_200=(UserCountUpdated, "The new demand is recorded."),
        HTTP_400=BAD_REQUEST,
        HTTP_403=FORBIDDEN,
        HTTP_404=NO_SESSION,
        HTTP_500=SERVER_ERROR,
    ),
    tags=[ADMIN],
    security=ADMIN_TOKEN,
    operation_id="setUserCount",
)
def set_user_count(customer_id: str, user_count: str) -> ResponseReturnValue:
    """Set how many users the customer's active workload wants

    Demands the missing users from the User Manager, or releases the surplus.
    """
    count = int(user_count)  # digits checked by schemas.PathParameters; the range by the domain
    return jsonify(workloads.set_user_count(_services(), customer_id, count))


@api.get("/get-session-supervisor-overview/<customer_id>")
@privileged
@contract.validate(
    resp=Response(
        HTTP_200=(OverviewAnswer, "The overview, or the original's error object."),
        HTTP_400=BAD_REQUEST,
        HTTP_403=FORBIDDEN,
        HTTP_404=(Error, "A path that names no route."),
        HTTP_500=SERVER_ERROR,
    ),
    tags=[ADMIN],
    security=ADMIN_TOKEN,
    operation_id="getSessionSupervisorOverview",
)
def get_session_supervisor_overview(customer_id: str) -> ResponseReturnValue:
    """The customer's latest session (also one stopped moments ago)

    Called by the Customer Service right after a stop, for the session to clean up. An
    unknown customer answers 200 `{"error": "No active session for customer_id:
    <customer_id>"}`, as the original did (CONTRACT.md §1).
    """
    overview = workloads.session_overview(_services(), customer_id)
    if overview is None:
        return jsonify(error=f"No active session for customer_id: {customer_id}")
    return jsonify(overview)


@api.get("/get-all-supervisor-information")
@privileged
@contract.validate(
    resp=Response(
        HTTP_200=(Overviews, "The overviews."),
        HTTP_403=FORBIDDEN,
        HTTP_500=SERVER_ERROR,
    ),
    tags=[ADMIN],
    security=ADMIN_TOKEN,
    operation_id="getAllSupervisorInformation",
)
def get_all_supervisor_information() -> ResponseReturnValue:
    """One overview per active workload (the Admin Panel's list)"""
    return jsonify(workloads.all_overviews(_services()))
