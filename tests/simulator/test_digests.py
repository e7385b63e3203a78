"""`uploaded_digests`: the SHA-256 of every image users uploaded to the temp bucket, by frame,
per session or merged; kept after the supervisor deletes the temp copies."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from kombu import Connection

from simulator import Simulator, SimulatorError
from tests.simulator.helpers import Supervisor, Tap

pytestmark = pytest.mark.rabbitmq

RETRIEVE = "/api/blob-service/retrieve-temp"
HASH = "h"


def counting_renderer() -> Callable[[Path | None, int], bytes]:
    """Different bytes for every render, so re-renders and other users' renders differ."""
    counter = itertools.count()
    return lambda _blend, frame: f"frame {frame} render {next(counter)}".encode()


def uploads(sim: Simulator, tap: Tap, sv: Supervisor, plan: dict[str, list[int]]) -> list[dict]:
    """Have each user render its frames; return the user-frame-rendered data that arrive."""
    for user, frames in plan.items():
        response = sv.send(user, "start-rendering", {"blend_file_hash": HASH, "frame_list": frames})
        assert response.status_code == 200
    count = sum(len(frames) + 1 for frames in plan.values())
    messages = tap.collect(count)
    return [m.body["data"] for m in messages if m.body["topic"] == "user-frame-rendered"]


def digests_of(sim: Simulator, rendered: list[dict]) -> dict[int, set[str]]:
    """What the supervisor would fetch from retrieve-temp, hashed, by frame."""
    found: dict[int, set[str]] = {}
    for data in rendered:
        image = requests.get(
            sim.base_url + RETRIEVE, params={"key": data["image-binary-path"]}, timeout=5
        )
        assert image.status_code == 200
        found.setdefault(data["frame-number"], set()).add(hashlib.sha256(image.content).hexdigest())
    return found


def test_uploaded_digests_match_the_temp_blobs(
    make_sim: Callable[..., Simulator],
    amqp_url: str,
    supervisor_for: Callable[[Simulator], Supervisor],
    tap: Tap,
    broker: Connection,
    session_id: str,
) -> None:
    sim = make_sim(renderer=counting_renderer(), broker_url=amqp_url, users=3, peer_mode="ideal")
    sv = supervisor_for(sim)
    first, second = sv.get_users(tap, 2)
    rendered = uploads(sim, tap, sv, {first: [1, 2, 3], second: [2, 3]})
    rendered += uploads(sim, tap, sv, {first: [1]})  # a re-render of frame 1

    expected = digests_of(sim, rendered)
    assert {frame: len(digests) for frame, digests in expected.items()} == {1: 2, 2: 2, 3: 2}
    assert sim.uploaded_digests(session_id) == expected
    assert sim.uploaded_digests() == expected

    other_id = f"{session_id}-other"
    other_tap, other_sv = Tap(broker, other_id), Supervisor(broker, sim, other_id)
    [third] = other_sv.get_users(other_tap, 1)
    other = digests_of(sim, uploads(sim, other_tap, other_sv, {third: [1, 4]}))
    assert sim.uploaded_digests(other_id) == other
    merged = sim.uploaded_digests()
    assert merged == {1: expected[1] | other[1], 2: expected[2], 3: expected[3], 4: other[4]}
    assert sim.uploaded_digests(session_id) == expected
    assert sim.uploaded_digests("no-such-session") == {}

    for data in rendered:  # the supervisor deletes its temp copies: the digests stay
        requests.delete(
            f"{sim.base_url}/api/blob-service/delete-temp",
            params={"key": data["image-binary-path"]},
            timeout=5,
        )
    assert all(not key.startswith(f"temp/{session_id}/") for key in sim.temp_keys())
    assert sim.uploaded_digests(session_id) == expected


def test_failed_frames_upload_nothing(
    rabbit_sim: Callable[..., Simulator],
    supervisor_for: Callable[[Simulator], Supervisor],
    tap: Tap,
    session_id: str,
) -> None:
    sim = rabbit_sim(fail_share=1.0, seed=3, peer_mode="ideal")
    sv = supervisor_for(sim)
    [user] = sv.get_users(tap, 1)
    uploads(sim, tap, sv, {user: [1, 2]})
    assert sim.uploaded_digests(session_id) == {}
    sim.stop()
    with pytest.raises(SimulatorError):
        sim.uploaded_digests()
