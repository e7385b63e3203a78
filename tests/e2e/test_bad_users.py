"""Users that upload wrong frames, against the whole stack: every kind is refused, its frames
are rendered again by others, the user is banned once past its failure budget, and the
workload completes with only valid frames stored. And a frame that every user fails is
stored flagged in the end, never rendered forever."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

from PIL import Image
from sqlalchemy import create_engine, text

from tests.blendgen import blend_with_range
from tests.faults.helpers import RESULTS
from tests.helpers import FIXTURES
from tests.stack import Stack, platform

SOURCE = FIXTURES / "blend/blender-5.0/default_1_250.blend"
WIDTH, HEIGHT = 1920, 1080  # the corpus file's output (100 % of 1920x1080, PNG)
BAD_KINDS = ("black", "truncated", "wrong-resolution", "text")


def _start(stack: Stack, customer: str, frames: int, tmp_path: Path) -> None:
    stack.start_workload(
        customer, blend_with_range(SOURCE, tmp_path / f"{customer}.blend", 1, frames)
    )


def _rows(stack: Stack, query: str) -> list[Any]:
    engine = create_engine(stack.env["DATABASE_URL"])
    try:
        with engine.connect() as connection:
            return list(connection.execute(text(query)))
    finally:
        engine.dispose()


def _check_image(data: bytes) -> None:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    assert image.size == (WIDTH, HEIGHT)
    image.load()
    extrema = image.convert("RGB").getextrema()
    assert any(low != high for low, high in extrema), "a flat frame was stored"


def test_bad_users_are_refused_banned_and_their_frames_rendered_by_others(
    tmp_path: Path,
) -> None:
    knobs = {
        "users": 8,
        "frame_time": 0.05,
        "jitter": 0.01,
        "peer_mode": "real",
        "seed": 11,
        "bad_users": ",".join(f"{kind}=1" for kind in BAD_KINDS),
    }
    frames = 60
    with platform(tmp_path, **knobs) as stack:
        stack.env.update(
            {
                "INITIAL_USER_COUNT": "8",
                "MAX_FRAMES_PER_ASSIGNMENT": "5",
                "MAX_USER_FAILURES": "2",
                # More than there are bad users: no bad frame is ever accepted flagged here.
                "MAX_FRAME_REFUSALS": "5",
            }
        )
        stack.start("web", "worker", "beat")
        _start(stack, "picky", frames, tmp_path)
        status = stack.wait_completed("picky", timeout=180)
        assert status["workload_status"] == "completed", stack.logs()

        stored = stack.simulator.stored_frames("picky", "obj")
        assert sorted(stored) == list(range(1, frames + 1))
        for data in stored.values():
            _check_image(data)
        assert max(stack.simulator.store_calls("picky", "obj").values()) == 1

        users = stack.simulator.state()["users"]
        bad = {user: info["bad_kind"] for user, info in users.items() if info.get("bad_kind")}
        assert sorted(bad.values()) == sorted(BAD_KINDS)
        states = dict(_rows(stack, "SELECT user_id, state FROM workload_users"))
        failures = dict(_rows(stack, "SELECT user_id, failed_frames FROM workload_users"))
        for user in bad:
            assert states.get(user) == "banned", (user, bad[user], states, stack.logs())
            assert failures[user] >= 3, "banned once past MAX_USER_FAILURES (2)"
        good = [user for user in states if user not in bad]
        assert all(states[user] != "banned" for user in good)

        refusals = _rows(
            stack,
            "SELECT user_id, detail FROM workload_events WHERE kind = 'frame-refused'",
        )
        reasons = {bad[user]: detail for user, detail in refusals if user in bad}
        assert sorted(reasons) == sorted(BAD_KINDS), refusals
        assert not [user for user, _ in refusals if user not in bad], refusals
        flagged = _rows(stack, "SELECT number FROM frames WHERE flagged IS NOT NULL")
        assert flagged == []
        digests = dict(_rows(stack, "SELECT number, sha256 FROM frames"))
        for number, data in stored.items():
            assert digests[number] == hashlib.sha256(data).hexdigest()

        with RESULTS.open("a") as results:
            results.write(
                json.dumps(
                    {
                        "scenario": "bad-users",
                        "frames": frames,
                        "refusals": len(refusals),
                        "reasons": {kind: reasons[kind][:80] for kind in sorted(reasons)},
                    }
                )
                + "\n"
            )


def test_a_frame_every_user_fails_is_stored_flagged_in_the_end(tmp_path: Path) -> None:
    knobs = {
        "users": 3,
        "frame_time": 0.05,
        "peer_mode": "real",
        "seed": 12,
        "bad_users": "black=3",
    }
    with platform(tmp_path, **knobs) as stack:
        stack.env.update(
            {
                "INITIAL_USER_COUNT": "3",
                "MAX_USER_FAILURES": "100",
                "MAX_FRAME_REFUSALS": "2",
            }
        )
        stack.start("web", "worker", "beat")
        _start(stack, "hopeless", 4, tmp_path)
        status = stack.wait_completed("hopeless", timeout=120)
        assert status["workload_status"] == "completed", stack.logs()

        flagged = _rows(stack, "SELECT number, flagged, refused_by FROM frames ORDER BY number")
        assert [row.number for row in flagged] == [1, 2, 3, 4]
        for row in flagged:
            assert row.flagged.startswith("flat-colour"), row
            assert len(set(row.refused_by)) == 2, row
        assert sorted(stack.simulator.stored_frames("hopeless", "obj")) == [1, 2, 3, 4]
