"""`make bench-smoke` inside `make test`, so CI keeps every benchmark running (tiny sizes,
one round; the figures are not judged here, only that each benchmark runs to the end)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = {"intake", "status", "scale", "transfer", "blend", "eta"}


def test_every_benchmark_runs_in_smoke_mode(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        message = "wrk (Debian package) is needed by the status benchmark"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    results = tmp_path / "results.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--output", str(results)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    ran = json.loads(results.read_text())["benchmarks"]
    assert {name: entry["status"] for name, entry in ran.items()} == dict.fromkeys(BENCHMARKS, "ok")
    assert all(entry["rows"] for entry in ran.values()), "a benchmark measured nothing"


def test_the_bare_intake_consumer_gets_the_same_prefetch_window_as_ours() -> None:
    from bench import intake as bench_intake
    from tasks import intake

    assert bench_intake.PREFETCH == intake.PREFETCH
