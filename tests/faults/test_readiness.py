"""`/readyz` follows the broker: 503 naming it while RabbitMQ is stopped, 200 once it is back;
`/healthz` answers all along (it does no I/O)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import requests

from tests.processes import wait_until
from tests.stack import platform


def test_readyz_goes_503_while_the_broker_is_stopped(tmp_path: Path) -> None:
    with platform(tmp_path) as stack:
        stack.start("web")
        base = stack.api.split("/api/")[0]

        def readiness() -> tuple[int, dict[str, object]]:
            response = requests.get(f"{base}/readyz", timeout=10)
            return response.status_code, response.json()

        wait_until(lambda: readiness()[0] == 200, 30, "the web process to be ready")
        subprocess.run(["rabbitmqctl", "-q", "stop_app"], check=True, timeout=60)
        try:
            wait_until(lambda: readiness()[0] == 503, 15, "/readyz to answer 503")
            _status, body = readiness()
            assert body["status"] == "not-ready"
            assert body["checks"]["user_manager_broker"].startswith("unreachable"), body
            assert body["checks"]["postgres"] == "ok", body
            assert body["checks"]["redis"] == "ok", body
            assert requests.get(f"{base}/healthz", timeout=5).status_code == 200
        finally:
            subprocess.run(["rabbitmqctl", "-q", "start_app"], check=True, timeout=60)
        wait_until(lambda: readiness()[0] == 200, 60, "/readyz to answer 200 again")
        assert readiness()[1]["checks"] == {
            "postgres": "ok",
            "redis": "ok",
            "broker": "ok",
            "user_manager_broker": "ok",
        }
