"""The REST API of CONTRACT.md §1, under /api/session-supervisor-service."""

from __future__ import annotations

import logging
import re

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from app.errors import error_body
from app.security import privileged
from supervisor import workloads
from supervisor.errors import InvalidInput, SupervisorError
from supervisor.keys import validate_id
from supervisor.service import Supervisor

logger = logging.getLogger(__name__)

USER_COUNT = re.compile(r"[0-9]{1,6}")

api = Blueprint("api", __name__, url_prefix="/api/session-supervisor-service")


def _supervisor() -> Supervisor:
    return current_app.extensions["session_supervisor"]


def _field(name: str) -> str:
    """A form field (the contract), tolerating a JSON body from lenient clients."""
    value = request.form.get(name)
    if value is None and request.is_json:
        body = request.get_json(silent=True)
        if isinstance(body, dict):
            value = body.get(name)
    return validate_id(name, value)


@api.post("/")
def alive() -> ResponseReturnValue:
    return jsonify(message="Session Supervisor Service is active")


@api.post("/start-workload")
def start_workload() -> ResponseReturnValue:
    customer_id = _field("customer_id")
    object_id = _field("object_id")
    workloads.start_workload(_supervisor(), customer_id, object_id)
    return jsonify(message="Workload started")


@api.post("/stop-and-delete-workload")
def stop_and_delete_workload() -> ResponseReturnValue:
    customer_id = _field("customer_id")
    try:
        workloads.stop_and_delete(_supervisor(), customer_id)
    except SupervisorError:
        raise
    except Exception:
        logger.exception("stop and delete failed", extra={"customer_id": customer_id})
        return error_body(500, "Failed to stop and delete workload")
    return jsonify(message="Workload stopped and deleted")


@api.get("/get-workload-status")
def get_workload_status() -> ResponseReturnValue:
    customer_id = validate_id("customer_id", request.args.get("customer_id"))
    status = workloads.workload_status(_supervisor(), customer_id)
    return jsonify(message="Workload status", status=status)


@api.get("/get-workload-progress")
def get_workload_progress() -> ResponseReturnValue:
    customer_id = validate_id("customer_id", request.args.get("customer_id"))
    return jsonify(workloads.workload_progress(_supervisor(), customer_id))


@api.get("/get-user-count/<customer_id>")
@privileged
def get_user_count(customer_id: str) -> ResponseReturnValue:
    return jsonify(workloads.get_user_count(_supervisor(), customer_id))


@api.post("/set-user-count/<customer_id>/<user_count>")
@privileged
def set_user_count(customer_id: str, user_count: str) -> ResponseReturnValue:
    if not USER_COUNT.fullmatch(user_count):
        raise InvalidInput("user_count must be a whole number written with the digits 0-9")
    return jsonify(workloads.set_user_count(_supervisor(), customer_id, int(user_count)))


@api.get("/get-session-supervisor-overview/<customer_id>")
@privileged
def get_session_supervisor_overview(customer_id: str) -> ResponseReturnValue:
    """The Customer Service asks for this right after a stop, to find the session to clean
    up; an unknown customer gets the original's 200 with an `error` key (CONTRACT.md §1)."""
    overview = workloads.session_overview(_supervisor(), customer_id)
    if overview is None:
        return jsonify(error=f"No active session for customer_id: {customer_id}")
    return jsonify(overview)


@api.get("/get-all-supervisor-information")
@privileged
def get_all_supervisor_information() -> ResponseReturnValue:
    return jsonify(workloads.all_overviews(_supervisor()))
