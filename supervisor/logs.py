"""One JSON object per log line, carrying the `extra` fields (workload_id, user_id, ...)."""

from __future__ import annotations

import logging
import os
import sys

from pythonjsonlogger.json import JsonFormatter

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"


def configure_logging(level: str | None = None) -> None:
    """Install the JSON handler on the root logger once; calling again changes only the level."""
    root = logging.getLogger()
    root.setLevel((level or os.environ.get("LOG_LEVEL") or "INFO").upper())
    if any(getattr(h, "_supervisor_json", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(LOG_FORMAT, rename_fields={"asctime": "time", "levelname": "level"})
    )
    handler._supervisor_json = True  # type: ignore[attr-defined]
    root.addHandler(handler)
