"""The simulator's test controls: without AMQP, users of their own, the journal of requests,
counted failures, the acknowledgement override, objects from bytes and every object existing,
the buckets, and `reset`. Each is off until asked for: left alone, the peers answer as the
real ones."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
import requests

from simulator import Simulator, SimulatorConfig, SimulatorError
from simulator.blobs import FRAMES_BUCKET, TEMP_BUCKET
from simulator.config import FIXTURES
from tests.simulator.helpers import NEW_SESSION, SEND, SEND_ACK, SEND_ACK_MISSPELLED

CATALOG = "/api/mongodb-service/blender-objects"
BLOB = "/api/blob-service"
STORE = f"{BLOB}/store-image"
BLEND = FIXTURES / "range_10_20.blend"
UNREACHABLE_BROKER = "amqp://guest:guest@127.0.0.1:1//"
RETRIEVE_FRAME = {"frame-number": 10, "blend-file-hash": "h"}


@pytest.fixture
def peers_sim(make_sim: Callable[..., Simulator]) -> Simulator:
    """HTTP peers only, as the integration tests run them: no users, no broker, a journal."""
    return make_sim(
        users=0, amqp=False, journal=True, demo_blend=None, broker_url=UNREACHABLE_BROKER
    )


def blend_name(sim: Simulator, customer_id: str, object_id: str) -> requests.Response:
    return requests.get(
        f"{sim.base_url}{CATALOG}/get-blend-file-name/{object_id}",
        params={"customer_id": customer_id},
        timeout=5,
    )


def store(sim: Simulator, key: str = "c/o/001.png", image: bytes = b"img") -> requests.Response:
    return requests.post(
        sim.base_url + STORE,
        data={"bucket": FRAMES_BUCKET, "key": key, "type": "png"},
        files={"image": ("001.png", image)},
        timeout=5,
    )


def ask(sim: Simulator, path: str = SEND_ACK, user_id: str = "nobody") -> requests.Response:
    body = {"user_id": user_id, "topic": "retrieve-frame", "data": RETRIEVE_FRAME}
    return requests.post(sim.base_url + path, json=body, timeout=5)


# --- without AMQP -------------------------------------------------------------------------


def test_without_amqp_the_http_peers_run_with_no_broker(peers_sim: Simulator) -> None:
    registered = requests.post(
        peers_sim.base_url + NEW_SESSION,
        data={"user_count": "2", "session_supervisor_id": "s1"},
        timeout=5,
    )
    assert (registered.status_code, registered.json()) == (200, None)
    assert peers_sim.listed_sessions() == {"s1": 1}
    state = peers_sim.state()
    assert state["broker"] == {"queue": None, "consumer_connects": 0}
    assert state["users"] == {}
    assert peers_sim.published() == {}


def test_without_amqp_there_can_be_no_simulated_users() -> None:
    with pytest.raises(ValueError, match="users must be 0 without amqp"):
        SimulatorConfig(amqp=False, users=1)


# --- users of their own ------------------------------------------------------------------


def test_users_take_the_configured_prefix(make_sim: Callable[..., Simulator]) -> None:
    sim = make_sim(users=2, user_prefix="side-b", broker_url="memory://")
    assert sim.state()["idle_users"] == ["side-b-001", "side-b-002"]
    with pytest.raises(ValueError, match="user_prefix"):
        SimulatorConfig(user_prefix="a/b")


# --- the journal --------------------------------------------------------------------------


def test_the_journal_is_off_unless_asked_for(http_sim: Simulator) -> None:
    assert http_sim.journal is None
    with pytest.raises(SimulatorError, match="journal=True"):
        http_sim.requests()


def test_the_journal_keeps_each_peer_request_as_received(peers_sim: Simulator) -> None:
    base = peers_sim.base_url
    requests.post(base + SEND, json={"user_id": "u", "topic": "stop-work", "data": {}}, timeout=5)
    requests.delete(
        f"{base}{BLOB}/delete-temp", params={"key": "a/b.png", "x": ["1", "2"]}, timeout=5
    )
    store(peers_sim, image=b"\x89PNG")
    requests.get(base + "/simulator/state", timeout=5)

    calls = peers_sim.requests()
    assert [(c.method, c.path) for c in calls] == [
        ("POST", SEND),
        ("DELETE", f"{BLOB}/delete-temp"),
        ("POST", STORE),
    ], "the /simulator/ pages are not kept"
    send, delete, stored = calls
    assert json.loads(send.body) == {"user_id": "u", "topic": "stop-work", "data": {}}
    assert send.headers["content-type"] == "application/json"
    assert delete.query == {"key": ["a/b.png"], "x": ["1", "2"]}
    assert delete.body == b""
    assert stored.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert b"\x89PNG" in stored.body
    assert peers_sim.read_blob(FRAMES_BUCKET, "c/o/001.png") == b"\x89PNG", "still parsed"
    assert peers_sim.requests("/delete-temp") == [delete]
    assert peers_sim.requests("/nothing") == []


def test_the_journal_keeps_refused_requests_but_not_dropped_ones(peers_sim: Simulator) -> None:
    peers_sim.inject_fault("blob", "error", 30)
    assert store(peers_sim).status_code == 500
    peers_sim.inject_fault("blob", "down", 30)
    with pytest.raises(requests.ConnectionError):
        store(peers_sim)
    assert [c.path for c in peers_sim.requests()] == [STORE]


# --- counted failures ---------------------------------------------------------------------


def test_the_next_requests_to_a_path_fail_then_it_serves_again(peers_sim: Simulator) -> None:
    peers_sim.fail_next("/store-image", status=503, times=2)
    assert peers_sim.failures() == {"/store-image": 2}

    answers = [store(peers_sim) for _ in range(3)]

    assert [a.status_code for a in answers] == [503, 503, 200]
    assert answers[0].json() == {"message": "injected fault"}
    assert peers_sim.read_blob(FRAMES_BUCKET, "c/o/001.png") == b"img"
    assert len(peers_sim.requests(STORE)) == 3
    assert peers_sim.failures() == {}
    faults = peers_sim.state()["faults"]
    assert faults["failing"] == [{"path": "/store-image", "status": 503, "left": 0, "refused": 2}]
    assert faults["refused"] == {"blob": {"status": 2}}


def test_a_failing_request_does_nothing(peers_sim: Simulator) -> None:
    peers_sim.fail_next(STORE, status=500)
    assert store(peers_sim).status_code == 500
    assert peers_sim.blob_keys(FRAMES_BUCKET) == []
    assert peers_sim.store_calls("c", "o") == {}


def test_a_counted_failure_matches_its_suffix_only(peers_sim: Simulator) -> None:
    peers_sim.add_object_bytes("c", "o", b"blend")
    peers_sim.fail_next("/send-msg-to-user", status=502, times=5)
    peers_sim.fail_next("/get-blend-file-name/other", status=500, times=5)

    assert ask(peers_sim).status_code == 500, "the real answer: nobody is connected"
    assert blend_name(peers_sim, "c", "o").status_code == 200
    sent = requests.post(
        peers_sim.base_url + SEND,
        json={"user_id": "u", "topic": "stop-work", "data": {}},
        timeout=5,
    )
    assert sent.status_code == 502
    assert peers_sim.failures() == {"/send-msg-to-user": 4, "/get-blend-file-name/other": 5}


def test_the_longest_matching_suffix_answers(peers_sim: Simulator) -> None:
    peers_sim.fail_next("/store-image", status=503, times=1)
    peers_sim.fail_next("/blob-service/store-image", status=507, times=1)
    assert [store(peers_sim).status_code for _ in range(3)] == [507, 503, 200]


def test_a_timed_fault_goes_before_a_counted_failure(peers_sim: Simulator) -> None:
    peers_sim.fail_next("/store-image", status=503, times=1)
    peers_sim.inject_fault("blob", "error", 30)
    assert store(peers_sim).status_code == 500
    peers_sim.clear_faults()
    assert peers_sim.failures() == {}, "clear_faults ends counted failures too"
    assert store(peers_sim).status_code == 200


def test_counted_failures_end_when_cleared(peers_sim: Simulator) -> None:
    peers_sim.fail_next("/store-image", times=10)
    peers_sim.inject_fault("catalog", "error", 30)
    assert peers_sim.clear_failures() == 1
    assert store(peers_sim).status_code == 200
    assert peers_sim.state()["faults"]["active"] != [], "timed faults are left alone"


@pytest.mark.parametrize(
    ("path", "status", "times"),
    [
        ("store-image", 503, 1),
        (None, 503, 1),
        ("/store-image", 200, 1),
        ("/store-image", 600, 1),
        ("/store-image", True, 1),
        ("/store-image", 503, 0),
        ("/store-image", 503, 1.5),
    ],
)
def test_fail_next_refuses_what_it_cannot_do(path: Any, status: Any, times: Any) -> None:
    sim = Simulator()  # counted failures can be set before start
    with pytest.raises(ValueError, match="must"):
        sim.fail_next(path, status, times)
    assert sim.failures() == {}


def test_counted_failures_over_http(peers_sim: Simulator) -> None:
    url = peers_sim.base_url + "/simulator/faults"
    injected = requests.post(url, json={"path": "/new-session", "times": 1}, timeout=5)
    assert injected.status_code == 200
    assert injected.json()["failure"] == {"path": "/new-session", "status": 503, "times": 1}
    refused = requests.post(url, json={"path": "/new-session", "status": 99}, timeout=5)
    assert refused.status_code == 400
    body = {"user_count": "1", "session_supervisor_id": "s"}
    assert requests.post(peers_sim.base_url + NEW_SESSION, data=body, timeout=5).status_code == 503
    assert requests.post(peers_sim.base_url + NEW_SESSION, data=body, timeout=5).status_code == 200
    peers_sim.fail_next("/new-session", times=3)
    assert requests.delete(url, timeout=5).json()["cleared"] == 1


# --- the acknowledgement override ---------------------------------------------------------


def test_the_acknowledged_send_is_the_real_one_unless_overridden(peers_sim: Simulator) -> None:
    assert ask(peers_sim).status_code == 500, "nobody holds that socket"

    peers_sim.override_acknowledgement(True)
    assert (ask(peers_sim).status_code, ask(peers_sim).json()) == (200, True)
    peers_sim.override_acknowledgement(False)
    assert (ask(peers_sim).status_code, ask(peers_sim).json()) == (200, False)
    assert ask(peers_sim, SEND_ACK_MISSPELLED).status_code == 404, "still no such route"
    bad = requests.post(peers_sim.base_url + SEND_ACK, json={"user_id": 1}, timeout=5)
    assert bad.status_code == 400

    peers_sim.override_acknowledgement(None)
    assert ask(peers_sim).status_code == 500


def test_the_override_is_a_bool_or_none(peers_sim: Simulator) -> None:
    with pytest.raises(ValueError, match="True, False or None"):
        peers_sim.override_acknowledgement(1)  # type: ignore[arg-type]


# --- the catalog and the buckets ----------------------------------------------------------


def test_an_object_added_from_bytes_is_served(peers_sim: Simulator) -> None:
    path = peers_sim.add_object_bytes("cust-1", "obj-1", b"a blend", name="scene.blend")

    assert path == "cust-1/obj-1/scene.blend"
    expected = {"blendFilePath": path, "blendFileHash": hashlib.sha256(b"a blend").hexdigest()}
    assert blend_name(peers_sim, "cust-1", "obj-1").json() == expected
    assert peers_sim.catalog_object("cust-1", "obj-1") == expected
    assert peers_sim.catalog_object("cust-1", "obj-2") is None
    blend = requests.get(
        f"{peers_sim.base_url}{BLOB}/retrieve-blend",
        params={"bucket": "blend-files", "key": path},
        timeout=5,
    )
    assert blend.content == b"a blend"
    with pytest.raises(ValueError, match="customer_id"):
        peers_sim.add_object_bytes("..", "obj-1", b"x")


def test_every_object_exists_when_asked(peers_sim: Simulator) -> None:
    peers_sim.add_object_bytes("cust-1", "own", b"its own blend")
    assert blend_name(peers_sim, "anyone", "anything").status_code == 404

    peers_sim.every_object_exists(BLEND)

    found = blend_name(peers_sim, "anyone", "anything")
    assert found.status_code == 200
    assert found.json()["blendFilePath"] == "anyone/anything/range_10_20.blend"
    blend = requests.get(
        f"{peers_sim.base_url}{BLOB}/retrieve-blend",
        params={"bucket": "blend-files", "key": found.json()["blendFilePath"]},
        timeout=5,
    )
    assert blend.content == BLEND.read_bytes()
    changed = requests.put(
        f"{peers_sim.base_url}{CATALOG}/change-state",
        json={"objectId": "other", "customerId": "new", "objectState": "video-ready"},
        timeout=5,
    )
    assert changed.status_code == 200
    assert peers_sim.object_state("new", "other") == "video-ready"
    assert peers_sim.catalog_object("cust-1", "own")["blendFilePath"] == "cust-1/own/s.blend"
    assert blend_name(peers_sim, "..", "anything").status_code == 404, "no such catalog id"

    peers_sim.every_object_exists(None)
    assert blend_name(peers_sim, "anyone", "else").status_code == 404
    assert blend_name(peers_sim, "anyone", "anything").status_code == 200, "it was added"


def test_every_object_needs_a_blend_file(peers_sim: Simulator, tmp_path: Any) -> None:
    with pytest.raises(ValueError, match=r"no such \.blend"):
        peers_sim.every_object_exists(tmp_path / "missing.blend")


def test_the_buckets_can_be_read_and_written(peers_sim: Simulator) -> None:
    peers_sim.write_blob(TEMP_BUCKET, "tmp/u1/10.png", b"image")
    retrieved = requests.get(
        f"{peers_sim.base_url}{BLOB}/retrieve-temp", params={"key": "tmp/u1/10.png"}, timeout=5
    )
    assert retrieved.content == b"image"
    assert peers_sim.blob_keys(TEMP_BUCKET) == ["tmp/u1/10.png"]
    assert peers_sim.read_blob(TEMP_BUCKET, "tmp/u1/10.png") == b"image"
    assert peers_sim.delete_blob(TEMP_BUCKET, "tmp/u1/10.png") is True
    assert peers_sim.delete_blob(TEMP_BUCKET, "tmp/u1/10.png") is False
    with pytest.raises(FileNotFoundError):
        peers_sim.read_blob(TEMP_BUCKET, "tmp/u1/10.png")


# --- reset --------------------------------------------------------------------------------


def test_reset_brings_everything_back_to_the_start(peers_sim: Simulator) -> None:
    base_url = peers_sim.base_url
    peers_sim.add_object_bytes("c", "o", b"blend")
    peers_sim.every_object_exists(BLEND)
    peers_sim.write_blob(TEMP_BUCKET, "tmp/a.png", b"a")
    assert store(peers_sim).status_code == 200
    requests.post(
        base_url + NEW_SESSION, data={"user_count": "1", "session_supervisor_id": "s"}, timeout=5
    )
    peers_sim.fail_next("/retrieve-temp", times=5)
    peers_sim.inject_fault("catalog", "error", 30)
    peers_sim.override_acknowledgement(True)

    peers_sim.reset()

    assert peers_sim.base_url == base_url
    assert peers_sim.requests() == []
    assert peers_sim.failures() == {}
    assert peers_sim.acknowledgement_override is None
    state = peers_sim.state()
    assert state["faults"] == {"active": [], "ended": [], "failing": [], "refused": {}}
    assert state["catalog"]["objects"] == []
    assert state["sessions"] == {}
    assert peers_sim.listed_sessions() == {}
    assert state["rendered_frames"] == state["temp_keys"] == []
    assert peers_sim.store_calls("c", "o") == {}
    assert blend_name(peers_sim, "c", "o").status_code == 404, "every object no longer exists"
    assert [c.path for c in peers_sim.requests()] == [f"{CATALOG}/get-blend-file-name/o"]


def test_reset_seeds_the_demo_object_again(make_sim: Callable[..., Simulator]) -> None:
    sim = make_sim(users=0, amqp=False)
    sim.reset()
    assert [o["object_id"] for o in sim.state()["catalog"]["objects"]] == ["demo-object"]


def test_reset_is_only_for_a_simulator_without_amqp(http_sim: Simulator) -> None:
    with pytest.raises(SimulatorError, match="amqp=False"):
        http_sim.reset()
