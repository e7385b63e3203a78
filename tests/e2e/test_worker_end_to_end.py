"""Issue 3's acceptance run: Procfile processes (release, web, worker, beat, flower) against
the simulator (its idealised contract peers) on real Postgres, Redis and RabbitMQ. Users
join late, one disconnects, some report completion while still owing frames, and every
event is delivered twice."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import requests

from tests.helpers import FIXTURES
from tests.processes import wait_until
from tests.stack import platform

BLEND = FIXTURES / "blend/blender-5.0/default_1_250.blend"
FRAMES = list(range(1, 251))


def test_a_workload_completes_with_every_frame_stored_and_recorded_once(tmp_path: Path) -> None:
    knobs = {
        "users": 6,
        "frame_time": 0.02,
        "jitter": 0.01,
        "join_delay": 1.0,
        "join_batch": 2,
        "disconnect_share": 0.2,
        "early_complete_share": 0.4,
        "duplicate": 1.0,
        "quirks": True,
        "seed": 11,
        # The contract's idealised peers: they forward user-rendering-completed, so the
        # early completers' owed frames are asked for (the real-peer runs are elsewhere).
        "peer_mode": "ideal",
    }
    with platform(tmp_path, **knobs) as stack:
        stack.env["MAX_FRAMES_PER_ASSIGNMENT"] = "20"
        stack.start("web", "worker", "beat", "flower")
        stack.simulator.add_object("e2e-cust", "e2e-obj", BLEND)

        started = requests.post(
            f"{stack.api}/start-workload",
            data={"customer_id": "e2e-cust", "object_id": "e2e-obj"},
            timeout=10,
        )
        assert started.status_code == 200, started.text
        status = stack.wait_completed("e2e-cust", timeout=150)

        assert status == {
            "workload_status": "completed",
            "total_frames": 250,
            "completed_frames": 250,
            "completion_percentage": 100.0,
            "stored_frames": 250,
            "recorded_frames": 250,
        }, stack.logs()
        stored = stack.simulator.stored_frames("e2e-cust", "e2e-obj")
        assert sorted(stored) == FRAMES
        records = Counter(r["frameNumber"] for r in stack.simulator.catalog_records())
        assert sorted(records) == FRAMES
        assert set(records.values()) == {1}, "a frame was recorded twice"
        wait_until(lambda: stack.simulator.temp_keys() == [], 20, "temp uploads to be deleted")

        published = stack.simulator.published()
        assert published["user-frame-rendered"] >= 2 * 250, "every event delivered twice"
        assert published.get("user-disconnected", 0) >= 1
        assert published["user-rendering-completed"] >= 1
        users = stack.simulator.state()["users"]
        assert any(user["early_complete"] for user in users.values())

        flower = f"http://127.0.0.1:{stack.env['FLOWER_PORT']}/api/tasks"
        tasks = requests.get(flower, params={"limit": 5000}, timeout=10).json()
        names = {task["name"] for task in tasks.values()}
        assert {"tasks.prepare_workload", "tasks.new_users", "tasks.frames_rendered"} <= names
