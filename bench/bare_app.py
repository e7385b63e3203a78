"""The status benchmark's baseline: a bare Flask app, no database, no Redis.

It answers every GET with the JSON the real app gave for the same path and query (recorded
by the benchmark into the file named by BARE_APP_BODIES), serialised by `jsonify` per
request as the real app does, so the two differ only by the work behind the body.

    gunicorn ... 'bench.bare_app:create_app()'
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue


def create_app() -> Flask:
    bodies: dict[str, Any] = {}
    source = os.environ.get("BARE_APP_BODIES")
    if source:
        bodies = json.loads(Path(source).read_text())
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]

    @app.get("/", defaults={"path": ""})
    @app.get("/<path:path>")
    def answer(path: str) -> ResponseReturnValue:
        del path
        body = bodies.get(request.full_path.rstrip("?"))
        if body is None:
            return jsonify(message="no recorded body for this path"), 404
        return jsonify(body)

    return app
