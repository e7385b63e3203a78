"""Hooks for the schemathesis CLI run of tests/hostile/test_live_api.py (SCHEMATHESIS_HOOKS).

A workload that start-workload started is stopped at once, so the next start for the same
customer meets no active workload: every schema-valid start is accepted, and a 400 is only
ever the server refusing input (which the document must then call invalid).
"""

from __future__ import annotations

from typing import Any

import requests
import schemathesis


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    request = response.request
    started = request.method == "POST" and request.url.endswith("/start-workload")
    if started and response.status_code == 200 and isinstance(case.body, dict):
        stop = request.url.removesuffix("/start-workload") + "/stop-and-delete-workload"
        stopped = requests.post(stop, data={"customer_id": case.body["customer_id"]}, timeout=30)
        stopped.raise_for_status()
