"""Peer faults on demand: `error` answers 500 without doing anything, `down` drops the
connection without a response; only the faulted peer's paths, only for the fault's seconds."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import requests

from simulator import Simulator
from simulator.blobs import TEMP_BUCKET
from tests.simulator.helpers import NEW_SESSION, SEND, Supervisor, Tap

CATALOG = "/api/mongodb-service/blender-objects"
BLOB = "/api/blob-service"
DEMO_KEY = "demo-customer/demo-object/range_10_20.blend"
SERVICES = ("catalog", "blob", "user-service", "user-manager")
FAULTS = "/simulator/faults"

# One request per peer that answers 200 when the peer is healthy.
PROBES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "catalog": (
        "GET",
        f"{CATALOG}/get-blend-file-name/demo-object",
        {"params": {"customer_id": "demo-customer"}},
    ),
    "blob": (
        "GET",
        f"{BLOB}/retrieve-blend",
        {"params": {"bucket": "blend-files", "key": DEMO_KEY}},
    ),
    "user-service": (
        "POST",
        SEND,
        {"json": {"user_id": "sim-user-001", "topic": "stop-work", "data": {}}},
    ),
    "user-manager": (
        "POST",
        NEW_SESSION,
        {"data": {"user_count": "1", "session_supervisor_id": "probe-session"}},
    ),
}


def probe(sim: Simulator, service: str) -> int | str:
    """The probe's status code, or "connection error"."""
    method, path, options = PROBES[service]
    try:
        return requests.request(method, sim.base_url + path, timeout=5, **options).status_code
    except requests.ConnectionError:
        return "connection error"


def outcomes(sim: Simulator) -> dict[str, int | str]:
    return {service: probe(sim, service) for service in SERVICES}


@pytest.mark.parametrize("mode", ["error", "down"])
@pytest.mark.parametrize("service", SERVICES)
def test_a_fault_fails_its_service_only_until_cleared(
    http_sim: Simulator, service: str, mode: str
) -> None:
    assert outcomes(http_sim) == dict.fromkeys(SERVICES, 200)
    http_sim.inject_fault(service, mode, 30)

    expected: dict[str, int | str] = dict.fromkeys(SERVICES, 200)
    expected[service] = 500 if mode == "error" else "connection error"
    assert outcomes(http_sim) == expected
    if mode == "error":
        method, path, options = PROBES[service]
        answer = requests.request(method, http_sim.base_url + path, timeout=5, **options)
        assert answer.json() == {"message": "injected fault"}
        assert answer.headers["Content-Type"] == "application/json"
    [active] = http_sim.state()["faults"]["active"]
    assert active["service"] == service
    assert active["mode"] == mode
    assert 29 < active["seconds_left"] <= 30
    assert active["refused"] == (2 if mode == "error" else 1)

    http_sim.clear_faults()
    assert outcomes(http_sim) == dict.fromkeys(SERVICES, 200)
    faults = http_sim.state()["faults"]
    assert faults["active"] == []
    assert faults["ended"][-1]["ended"] == "cleared"
    assert faults["refused"] == {service: {mode: active["refused"]}}


def test_a_fault_ends_by_itself(http_sim: Simulator) -> None:
    http_sim.inject_fault("blob", "down", 0.3)
    http_sim.inject_fault("catalog", "error", 0.3)
    began = time.monotonic()
    assert probe(http_sim, "blob") == "connection error"
    assert probe(http_sim, "catalog") == 500
    http_sim.wait_until(lambda: probe(http_sim, "blob") == 200, timeout=3)
    assert time.monotonic() - began >= 0.3
    assert probe(http_sim, "catalog") == 200
    faults = http_sim.state()["faults"]
    assert faults["active"] == []
    assert {(f["service"], f["ended"]) for f in faults["ended"]} == {
        ("blob", "expired"),
        ("catalog", "expired"),
    }
    assert faults["refused"]["catalog"] == {"error": 1}
    assert faults["refused"]["blob"]["down"] >= 1


def test_an_error_fault_does_nothing(http_sim: Simulator) -> None:
    base = http_sim.base_url
    for service in SERVICES:
        http_sim.inject_fault(service, "error", 30)
    record = {
        "objectId": "o",
        "customerId": "c",
        "frameNumber": 1,
        "imageFilePath": "c/o/001.png",
    }
    assert requests.post(f"{base}{CATALOG}/add-rendered-image", json=record).status_code == 500
    stored = requests.post(
        f"{base}{BLOB}/store-image",
        data={"bucket": "rendered-frames", "key": "c/o/001.png", "type": "png"},
        files={"image": ("001.png", b"img")},
        timeout=5,
    )
    http_sim.blobs.write(TEMP_BUCKET, "temp/s/u/1-a.png", b"img")
    deleted = requests.delete(f"{base}{BLOB}/delete-temp", params={"key": "temp/s/u/1-a.png"})
    registered = requests.post(
        base + NEW_SESSION, data={"user_count": "1", "session_supervisor_id": "s"}, timeout=5
    )
    assert [stored.status_code, deleted.status_code, registered.status_code] == [500] * 3
    state = http_sim.state()
    assert state["catalog"]["records_count"] == 0
    assert state["rendered_frames"] == []
    assert state["temp_keys"] == ["temp/s/u/1-a.png"]
    assert state["sessions"] == {}
    assert list(http_sim.blobs.spool.iterdir()) == []


def test_a_down_blob_service_drops_an_upload_without_storing_it(http_sim: Simulator) -> None:
    http_sim.inject_fault("blob", "down", 30)
    with pytest.raises(requests.ConnectionError):
        requests.post(
            f"{http_sim.base_url}{BLOB}/store-image",
            data={"bucket": "rendered-frames", "key": "c/o/001.png", "type": "png"},
            files={"image": ("001.png", b"\0" * (2 * 1024 * 1024))},
            timeout=5,
        )
    with requests.Session() as session:  # a kept-alive client fails the same way, every time
        for _ in range(2):
            with pytest.raises(requests.ConnectionError):
                session.get(f"{http_sim.base_url}{BLOB}/retrieve-temp", params={"key": "a/b.png"})
    state = http_sim.state()
    assert state["rendered_frames"] == []
    assert state["faults"]["active"][0]["refused"] == 3
    assert list(http_sim.blobs.spool.iterdir()) == []


def test_the_simulator_pages_are_never_faulted(http_sim: Simulator) -> None:
    for service in SERVICES:
        http_sim.inject_fault(service, "down", 30)
    for path in ("/simulator/state", "/simulator/", FAULTS):
        assert requests.get(http_sim.base_url + path, timeout=5).status_code == 200
    assert requests.get(f"{http_sim.base_url}/api/nothing", timeout=5).status_code == 404


def test_a_new_fault_replaces_the_service_s_current_one(http_sim: Simulator) -> None:
    http_sim.inject_fault("blob", "error", 30)
    http_sim.inject_fault("blob", "down", 30)
    assert probe(http_sim, "blob") == "connection error"
    faults = http_sim.state()["faults"]
    assert [(f["service"], f["mode"]) for f in faults["active"]] == [("blob", "down")]
    assert faults["ended"] == [
        {"service": "blob", "mode": "error", "seconds": 30.0, "refused": 0, "ended": "replaced"}
    ]


@pytest.mark.parametrize(
    ("service", "mode", "seconds"),
    [
        ("auth", "error", 1),
        ("blob", "slow", 1),
        ("blob", "down", 0),
        ("blob", "down", -1),
        ("blob", "down", float("inf")),
        ("blob", "down", "5"),
        ("blob", "down", True),
    ],
)
def test_inject_fault_refuses_what_it_cannot_do(service: str, mode: str, seconds: Any) -> None:
    sim = Simulator()  # faults can be set before start; no need to start one here
    with pytest.raises(ValueError, match="must"):
        sim.inject_fault(service, mode, seconds)
    assert sim.faults.snapshot()["active"] == []


def test_faults_over_http(http_sim: Simulator) -> None:
    url = http_sim.base_url + FAULTS
    injected = requests.post(
        url, json={"service": "user-service", "mode": "error", "seconds": 30}, timeout=5
    )
    assert (injected.status_code, injected.json()) == (
        200,
        {
            "message": "Fault injected",
            "fault": {"service": "user-service", "mode": "error", "seconds": 30},
        },
    )
    requests.post(url, json={"service": "blob", "mode": "down", "seconds": 2.5}, timeout=5)
    assert probe(http_sim, "user-service") == 500
    assert probe(http_sim, "blob") == "connection error"

    shown = requests.get(url, timeout=5).json()
    in_state = requests.get(f"{http_sim.base_url}/simulator/state", timeout=5).json()["faults"]
    for faults in (shown, in_state):
        for fault in faults["active"]:
            assert 0 < fault.pop("seconds_left") <= fault["seconds"]
    assert shown == in_state
    assert [(f["service"], f["mode"], f["refused"]) for f in shown["active"]] == [
        ("user-service", "error", 1),
        ("blob", "down", 1),
    ]

    one = requests.delete(url, params={"service": "blob"}, timeout=5)
    assert (one.status_code, one.json()) == (200, {"message": "Faults cleared", "cleared": 1})
    assert probe(http_sim, "blob") == 200
    assert probe(http_sim, "user-service") == 500
    rest = requests.delete(url, timeout=5)
    assert rest.json() == {"message": "Faults cleared", "cleared": 1}
    assert outcomes(http_sim) == dict.fromkeys(SERVICES, 200)
    assert requests.delete(url, timeout=5).json()["cleared"] == 0


BAD_BODIES: list[Any] = [
    {},
    {"service": "auth", "mode": "error", "seconds": 1},
    {"service": "blob", "mode": "slow", "seconds": 1},
    {"service": "blob", "mode": "down"},
    {"service": "blob", "mode": "down", "seconds": "1"},
    {"service": "blob", "mode": "down", "seconds": 0},
    {"service": "blob", "mode": "down", "seconds": None},
    ["blob", "down", 1],
    '{"service": "blob", "mode": "down", "seconds": Infinity}',
    "not json",
]


def test_bad_fault_requests_are_400(http_sim: Simulator) -> None:
    url = http_sim.base_url + FAULTS
    for body in BAD_BODIES:
        if isinstance(body, str):
            answer = requests.post(
                url, data=body, headers={"Content-Type": "application/json"}, timeout=5
            )
        else:
            answer = requests.post(url, json=body, timeout=5)
        assert answer.status_code == 400, body
        assert "message" in answer.json()
    assert http_sim.state()["faults"]["active"] == []
    bad_clear = requests.delete(url, params={"service": "auth"}, timeout=5)
    assert bad_clear.status_code == 400


@pytest.mark.rabbitmq
def test_a_user_manager_fault_leaves_its_amqp_side_working(
    rabbit_sim: Callable[..., Simulator],
    supervisor_for: Callable[[Simulator], Supervisor],
    tap: Tap,
    session_id: str,
) -> None:
    sim = rabbit_sim()
    sv = supervisor_for(sim)
    sv.register(1)
    sim.inject_fault("user-manager", "down", 30)
    with pytest.raises(requests.ConnectionError):
        sv.register(1)

    sv.demand("more-users", {"user_count": 1})
    [message] = tap.collect(1)
    assert message.body["topic"] == "new-users"
    assert message.body["data"]["session_supervisor_id"] == session_id
    assert sim.state()["faults"]["refused"] == {"user-manager": {"down": 1}}
