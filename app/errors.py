"""Every error leaves as `{"message": ..., "details": ...}`; never a traceback."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from app.schemas import WORDED_ERRORS
from supervisor.errors import (
    InvalidInput,
    NoActiveWorkload,
    ObjectNotRenderable,
    PeerError,
    WorkloadAlreadyActive,
)

logger = logging.getLogger(__name__)

ALREADY_RUNNING = (
    "One workload already running. Your Access Plan doesnt allow to run another workload"
)


def error_body(
    status: int,
    message: str,
    details: str | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> ResponseReturnValue:
    body = {"message": message}
    if details:
        body["details"] = details
    return jsonify(body), status, headers or []


def validation_details(error: ValidationError) -> str:
    """The `details` of the 400 `Invalid input` for a request its model (app/schemas.py)
    refuses: the first problem found."""
    first = error.errors(include_url=False)[0]
    name = str(first["loc"][0]) if first["loc"] else "request"
    if first["type"] == "missing":
        return f"{name} is required"
    if first["type"] in WORDED_ERRORS:
        return str(first["msg"])
    return f"{name}: {first['msg']}"


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> ResponseReturnValue:
        """Keep the exception's own headers (a 405's Allow); the body becomes our JSON."""
        headers = [(k, v) for k, v in exc.get_headers() if k.lower() != "content-type"]
        return error_body(exc.code or 500, exc.name, exc.description, headers)

    @app.errorhandler(InvalidInput)
    def _invalid(exc: InvalidInput) -> ResponseReturnValue:
        return error_body(400, "Invalid input", str(exc))

    @app.errorhandler(WorkloadAlreadyActive)
    def _already(exc: WorkloadAlreadyActive) -> ResponseReturnValue:
        return error_body(400, ALREADY_RUNNING)

    @app.errorhandler(ObjectNotRenderable)
    def _not_renderable(exc: ObjectNotRenderable) -> ResponseReturnValue:
        return error_body(400, "Object cannot be rendered", str(exc))

    @app.errorhandler(NoActiveWorkload)
    def _missing(exc: NoActiveWorkload) -> ResponseReturnValue:
        return error_body(404, str(exc))

    @app.errorhandler(PeerError)
    def _peer(exc: PeerError) -> ResponseReturnValue:
        logger.warning("peer failure during request", extra={"peer": exc.peer, "error": str(exc)})
        return error_body(500, "Internal server error", str(exc))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> ResponseReturnValue:
        logger.error("unhandled error during request", exc_info=exc)
        return error_body(500, "Internal server error", type(exc).__name__)
