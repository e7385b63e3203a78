"""The layers hold: `app` and `tasks` above `supervisor`, no Flask or Celery in the domain,
and no import cycle anywhere, function-local imports included (.importlinter)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_import_contracts_are_kept() -> None:
    # In a child process: import-linter configures logging, which other tests then inherit.
    result = subprocess.run(
        [sys.executable, "-m", "importlinter.cli", "--no-cache", "--config", ".importlinter"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
