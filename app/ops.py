"""What operators and their tools ask of the service, outside the contract's prefix:
`/metrics` (Prometheus), `/healthz` (the process answers) and `/readyz` (its dependencies
answer). None needs authentication: they carry no ids, and each one's cost is bounded
(no I/O for health; readiness and the database's figures are read at most once a second).
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify
from flask.typing import ResponseReturnValue
from spectree import Response as Responses
from spectree import Tag

from app.openapi import contract
from app.schemas import Health, Readiness
from supervisor import metrics
from supervisor.readiness import ReadinessProbe
from supervisor.services import Services

ops = Blueprint("ops", __name__)

OPERATIONS = Tag(name="operations", description="Health, readiness and metrics.")
_PROBE = "session_supervisor_readiness"
_STATE = "session_supervisor_state"


def _services() -> Services:
    return current_app.extensions["session_supervisor"]


@ops.get("/healthz")
@contract.validate(
    resp=Responses(HTTP_200=(Health, "The process is alive; nothing else is checked.")),
    tags=[OPERATIONS],
    operation_id="healthz",
)
def healthz() -> ResponseReturnValue:
    """Liveness: answers without any I/O"""
    return jsonify(status="alive")


@ops.get("/readyz")
@contract.validate(
    resp=Responses(
        HTTP_200=(Readiness, "Postgres, Redis and the brokers answered."),
        HTTP_503=(Readiness, "At least one did not: `checks` says which."),
    ),
    tags=[OPERATIONS],
    operation_id="readyz",
)
def readyz() -> ResponseReturnValue:
    """Readiness: Postgres, Redis and the brokers within a short timeout"""
    probe = current_app.extensions.get(_PROBE)
    if probe is None:
        sv = _services()
        probe = current_app.extensions.setdefault(_PROBE, ReadinessProbe(sv.settings, sv.db))
    readiness = probe.check()
    body = {"status": "ready" if readiness.ready else "not-ready", "checks": readiness.checks}
    return jsonify(body), 200 if readiness.ready else 503


@ops.get("/metrics")
@contract.validate(
    resp=Responses("HTTP_200"),
    tags=[OPERATIONS],
    operation_id="metrics",
)
def metrics_page() -> ResponseReturnValue:
    """Prometheus metrics of every process of this host (text exposition format)"""
    state = current_app.extensions.get(_STATE)
    if state is None:
        sv = _services()
        collector = metrics.StateCollector(lambda: metrics.read_state(sv.db, sv.redis))
        state = current_app.extensions.setdefault(_STATE, collector)
    body, content_type = metrics.render(state)
    return Response(body, content_type=content_type)
