"""Issue 4's acceptance run: release, web, worker and beat from the Procfile plus the
simulator; a 100-frame workload driven through the CLI with 5 users, one disconnecting."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections import Counter
from pathlib import Path

from tests.blendgen import blend_with_range
from tests.helpers import FIXTURES
from tests.processes import wait_until
from tests.stack import platform

FRAMES = list(range(1, 101))


def cli(api: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor_cli", "--api", api, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_cli_drives_a_workload_to_completion(tmp_path: Path) -> None:
    blend = blend_with_range(
        FIXTURES / "blend/blender-5.0/default_1_250.blend", tmp_path / "cli.blend", 1, 100
    )
    knobs = {"users": 5, "frame_time": 0.05, "disconnect_share": 0.2, "seed": 4}
    with platform(tmp_path, **knobs) as stack:
        stack.env["INITIAL_USER_COUNT"] = "5"
        stack.start("web", "worker", "beat")
        stack.simulator.add_object("cli-cust", "cli-obj", blend)

        started = cli(stack.api, "start", "cli-cust", "cli-obj")
        assert started.returncode == 0, started.stderr
        watched = cli(stack.api, "watch", "cli-cust", "--plain", "--interval", "0.5")
        assert watched.returncode == 0, f"{watched.stdout}\n{watched.stderr}\n{stack.logs()}"
        assert "completed  100/100 frames  100.0%" in watched.stdout.splitlines()[-1]

        status = cli(stack.api, "status", "cli-cust", "--json")
        assert '"workload_status": "completed"' in status.stdout

        stored = stack.simulator.stored_frames("cli-cust", "cli-obj")
        assert sorted(stored) == FRAMES
        uploads = stack.simulator.uploaded_digests()
        for frame, data in stored.items():
            assert hashlib.sha256(data).hexdigest() in uploads[frame], f"frame {frame} bytes"
        records = Counter(r["frameNumber"] for r in stack.simulator.catalog_records())
        assert records == Counter(FRAMES)
        wait_until(lambda: stack.simulator.temp_keys() == [], 20, "temp uploads to be deleted")
        assert stack.simulator.published()["user-disconnected"] == 1
