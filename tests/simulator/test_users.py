"""Simulated render users driven over the User Service HTTP endpoints, observed on the real
RabbitMQ as the supervisor would see them."""

from __future__ import annotations

import struct
import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest
import requests

from simulator import Simulator
from simulator.png import SIGNATURE
from tests.simulator.helpers import Supervisor, Tap

pytestmark = pytest.mark.rabbitmq

MakeSim = Callable[..., Simulator]
SupervisorFor = Callable[[Simulator], Supervisor]
HASH = "hash-of-the-blend"


def start(sv: Supervisor, user: str, frames: list[int]) -> None:
    response = sv.send(user, "start-rendering", {"blend_file_hash": HASH, "frame_list": frames})
    assert response.status_code == 200


def topics(messages: list) -> list[str]:
    return [m.body["topic"] for m in messages]


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert (depth, colour) == (8, 2)
    return width, height


def test_a_user_renders_its_list_in_order_then_reports_completion(
    rabbit_sim: MakeSim, supervisor_for: SupervisorFor, tap: Tap, session_id: str
) -> None:
    sim = rabbit_sim(peer_mode="ideal")
    sv = supervisor_for(sim)
    [user] = sv.get_users(tap, 1)
    start(sv, user, [3, 1, 2])

    messages = tap.until("user-rendering-completed")
    assert topics(messages) == ["user-frame-rendered"] * 3 + ["user-rendering-completed"]
    assert all(m.body["supervisor-id"] == session_id for m in messages)
    assert messages[-1].body["data"] == {"user-id": user}
    rendered = [m.body["data"] for m in messages[:3]]
    assert [d["frame-number"] for d in rendered] == [3, 1, 2]
    images = []
    for data in rendered:
        assert set(data) == {"user-id", "frame-number", "image-extension", "image-binary-path"}
        assert (data["user-id"], data["image-extension"]) == (user, "png")
        key = data["image-binary-path"]
        assert key.startswith(f"temp/{session_id}/{user}/{data['frame-number']}-")
        assert key in sim.temp_keys()
        image = requests.get(
            f"{sim.base_url}/api/blob-service/retrieve-temp", params={"key": key}, timeout=5
        ).content
        assert png_size(image)[0] >= 96
        images.append(image)
    assert len(set(images)) == 3
    assert sim.state()["users"][user]["status"] == "assigned"


def test_duplicate_one_publishes_every_event_twice(
    rabbit_sim: MakeSim, supervisor_for: SupervisorFor, tap: Tap
) -> None:
    sim = rabbit_sim(duplicate=1.0, peer_mode="ideal")
    sv = supervisor_for(sim)
    sv.register(1)
    sv.demand("more-users", {"user_count": 1})
    first, second = tap.collect(2)
    assert first.body == second.body
    [user] = first.body["data"]["user_list"]
    start(sv, user, [1, 2])

    messages = tap.collect(6)
    assert topics(messages) == ["user-frame-rendered"] * 4 + ["user-rendering-completed"] * 2
    assert messages[0].body == messages[1].body
    assert messages[2].body == messages[3].body
    assert tap.quiet(0.2) == []
    assert sim.state()["published_duplicates"] == 4


def test_stop_work_stops_the_user(
    rabbit_sim: MakeSim, supervisor_for: SupervisorFor, tap: Tap
) -> None:
    sim = rabbit_sim(frame_time=0.05)
    sv = supervisor_for(sim)
    [user] = sv.get_users(tap, 1)
    start(sv, user, list(range(1, 41)))
    tap.until("user-frame-rendered")

    assert sv.send(user, "stop-work", {}).status_code == 200
    tap.quiet(0.06)  # a frame already being rendered may still arrive
    assert tap.quiet(0.3) == []
    state = sim.state()["users"][user]
    assert (state["status"], state["queue_length"]) == ("assigned", 0)


def test_start_rendering_replaces_the_queue(
    rabbit_sim: MakeSim, supervisor_for: SupervisorFor, tap: Tap
) -> None:
    sim = rabbit_sim(frame_time=0.05, peer_mode="ideal")
    sv = supervisor_for(sim)
    [user] = sv.get_users(tap, 1)
    start(sv, user, list(range(100, 140)))
    start(sv, user, [7, 8])

    messages = tap.until("user-rendering-completed")
    frames = [m.body["data"]["frame-number"] for m in messages[:-1]]
    assert frames[-2:] == [7, 8]
    assert len(frames) <= 3
    assert tap.quiet(0.2) == []


def test_retrieve_frame_acknowledges_only_frames_the_user_still_has(
    rabbit_sim: MakeSim, supervisor_for: SupervisorFor, tap: Tap
) -> None:
    sim = rabbit_sim(peer_mode="ideal")
    sv = supervisor_for(sim)
    [user] = sv.get_users(tap, 1)
    start(sv, user, [5])
    rendered = tap.until("user-rendering-completed")[0].body["data"]

    answer = sv.send_ack(user, "retrieve-frame", {"frame-number": 5, "blend-file-hash": HASH})
    assert (answer.status_code, answer.json()) == (200, {"acknowledged": True})
    [again] = tap.collect(1)
    assert again.body["topic"] == "user-frame-rendered"
    assert again.body["data"] == rendered

    never = sv.send_ack(user, "retrieve-frame", {"frame-number": 6, "blend-file-hash": HASH})
    assert never.json() == {"acknowledged": False}
    requests.delete(
        f"{sim.base_url}/api/blob-service/delete-temp",
        params={"key": rendered["image-binary-path"]},
        timeout=5,
    )
    gone = sv.send_ack(user, "retrieve-frame", {"frame-number": "5", "blend-file-hash": HASH})
    assert gone.json() == {"acknowledged": False}
    assert tap.quiet(0.2) == []


def test_retrieve_frames_from_frame_list_renders_them_and_completes_again(
    rabbit_sim: MakeSim, supervisor_for: SupervisorFor, tap: Tap
) -> None:
    sim = rabbit_sim(peer_mode="ideal")
    sv = supervisor_for(sim)
    [user] = sv.get_users(tap, 1)
    start(sv, user, [1])
    tap.until("user-rendering-completed")

    response = sv.send(
        user, "retrieve-frames-from-frame-list", {"blend_file_hash": HASH, "frame_list": [9, 4]}
    )
    assert response.status_code == 200
    messages = tap.until("user-rendering-completed")
    assert [m.body["data"].get("frame-number") for m in messages] == [9, 4, None]


def test_disconnecting_users_say_so_after_one_to_three_frames_then_go_silent(
    rabbit_sim: MakeSim, supervisor_for: SupervisorFor, tap: Tap, session_id: str
) -> None:
    sim = rabbit_sim(disconnect_share=1.0, seed=7, peer_mode="ideal")
    sv = supervisor_for(sim)
    [user] = sv.get_users(tap, 1)
    planned = sim.state()["users"][user]["disconnects_after"]
    assert planned in (1, 2, 3)
    start(sv, user, list(range(1, 11)))

    messages = tap.until("user-disconnected")
    assert topics(messages) == ["user-frame-rendered"] * planned + ["user-disconnected"]
    assert messages[-1].body["data"] == {"user_id": user}
    assert tap.quiet(0.2) == []
    assert sv.send(user, "stop-work", {}).status_code == 404
    assert sv.send_ack(user, "retrieve-frame", {"frame-number": 1}).status_code == 404
    state = sim.state()
    assert state["users"][user]["status"] == "disconnected"
    assert state["sessions"][session_id]["users"] == []


def test_failing_frames_are_reported_and_not_kept(
    rabbit_sim: MakeSim, supervisor_for: SupervisorFor, tap: Tap
) -> None:
    sim = rabbit_sim(fail_share=1.0, seed=3, peer_mode="ideal")
    sv = supervisor_for(sim)
    [user] = sv.get_users(tap, 1)
    start(sv, user, [1, 2])

    messages = tap.until("user-rendering-completed")
    assert topics(messages) == ["user-error-sending-frame"] * 2 + ["user-rendering-completed"]
    assert messages[0].body["data"] == {
        "user-id": user,
        "frame-number": 1,
        "blend-file-hash": HASH,
    }
    answer = sv.send_ack(user, "retrieve-frame", {"frame-number": 1, "blend-file-hash": HASH})
    assert answer.json() == {"acknowledged": False}
    assert sim.temp_keys() == []


def test_early_completing_users_owe_their_last_frames_until_asked(
    rabbit_sim: MakeSim, supervisor_for: SupervisorFor, tap: Tap
) -> None:
    sim = rabbit_sim(early_complete_share=1.0, seed=11, peer_mode="ideal")
    sv = supervisor_for(sim)
    [user] = sv.get_users(tap, 1)
    frames = [1, 2, 3, 4, 5]
    start(sv, user, frames)

    first = tap.until("user-rendering-completed")
    done = [m.body["data"]["frame-number"] for m in first[:-1]]
    owed = [f for f in frames if f not in done]
    assert done == frames[: len(done)]
    assert 1 <= len(owed) <= 2
    assert sim.state()["users"][user]["owed_frames"] == owed

    sv.send(user, "retrieve-frames-from-frame-list", {"blend_file_hash": HASH, "frame_list": owed})
    second = tap.until("user-rendering-completed")
    assert [m.body["data"]["frame-number"] for m in second[:-1]] == owed
    assert sim.state()["users"][user]["owed_frames"] == []


def test_quirks_use_only_the_tolerated_variants(
    rabbit_sim: MakeSim, supervisor_for: SupervisorFor, tap: Tap, session_id: str
) -> None:
    sim = rabbit_sim(quirks=True, seed=5, users=4, peer_mode="ideal")
    sv = supervisor_for(sim)
    users = sv.get_users(tap, 4)
    for user in users:
        start(sv, user, [1, 2, 3])

    messages = []
    while Counter(topics(messages))["user-rendering-completed"] < 4:
        messages += tap.until("user-rendering-completed")
    seen = Counter()
    for message in messages:
        body = message.body
        assert set(body) in ({"topic", "data"}, {"topic", "payload"}) or set(body) in (
            {"topic", "supervisor-id", "data"},
            {"topic", "supervisor-id", "payload"},
        )
        if "supervisor-id" not in body:
            seen["no supervisor-id"] += 1
        else:
            assert body["supervisor-id"] == session_id
        if "payload" in body:
            assert body["topic"] == "user-rendering-completed"
            seen["payload"] += 1
        data = body.get("data", body.get("payload"))
        if isinstance(data.get("frame-number"), str):
            assert data["frame-number"] in ("1", "2", "3")
            seen["string frame"] += 1
    assert set(seen) == {"no supervisor-id", "payload", "string frame"}


def test_the_same_seed_gives_the_same_users(make_sim: MakeSim) -> None:
    knobs = {
        "broker_url": "memory://",
        "users": 10,
        "seed": 42,
        "disconnect_share": 0.3,
        "early_complete_share": 0.5,
    }

    def plan(sim: Simulator) -> dict[str, tuple[object, object]]:
        users = sim.state()["users"]
        return {u: (s["disconnects_after"], s["early_complete"]) for u, s in users.items()}

    first, second = plan(make_sim(**knobs)), plan(make_sim(**knobs))
    assert first == second
    assert sum(1 for after, _ in first.values() if after is not None) == 3
    assert sum(1 for _, early in first.values() if early) == 5


def test_a_hundred_users_render_on_a_few_threads(
    rabbit_sim: MakeSim, supervisor_for: SupervisorFor, tap: Tap
) -> None:
    threads_before = threading.active_count()
    sim = rabbit_sim(users=100, frame_time=0.02, jitter=0.01, peer_mode="ideal")
    sv = supervisor_for(sim)
    users = sv.get_users(tap, 100)
    began = time.monotonic()
    for index, user in enumerate(users):
        start(sv, user, [3 * index + 1, 3 * index + 2, 3 * index + 3])

    messages = tap.collect(400, timeout=15)
    counts = Counter(topics(messages))
    assert counts == {"user-frame-rendered": 300, "user-rendering-completed": 100}
    assert len({m.body["data"].get("frame-number") for m in messages} - {None}) == 300
    assert time.monotonic() - began < 10
    assert threading.active_count() - threads_before < 15
