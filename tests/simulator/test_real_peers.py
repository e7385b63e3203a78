"""`peer_mode="real"` (the default): the peers as CONTRACT.md section 7 says they really behave.
Each test here pins one behaviour that the ideal peers do not have."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import requests
from kombu import Connection

from simulator import Simulator, SimulatorConfig
from simulator.__main__ import config_from, parse_args
from simulator.user_manager import (
    DROP_COMPLETED,
    DROP_ERROR_WITH_HASH,
    DROP_UNMAPPED,
    DROP_UNREGISTERED,
    QUEUED_ALREADY,
)
from tests.simulator.helpers import (
    CLEANUP_SESSION,
    NEW_SESSION,
    SEND_ACK,
    SEND_ACK_MISSPELLED,
    Supervisor,
    Tap,
)

MakeSim = Callable[..., Simulator]
SupervisorFor = Callable[[Simulator], Supervisor]
CHANGE_STATE = "/api/mongodb-service/blender-objects/change-state"
HASH = "hash-of-the-blend"


def start(sv: Supervisor, user: str, frames: list[int], blend_hash: str = HASH) -> None:
    data = {"blend_file_hash": blend_hash, "frame_list": frames}
    assert sv.send(user, "start-rendering", data).status_code == 200


def handled(sim: Simulator, session_id: str, count: int) -> list[dict]:
    """Wait until the User Manager has handled `count` messages of this session."""
    return sim.wait_until(
        lambda: (log := sim.demand_log(session_id)) and len(log) >= count and log, timeout=5
    )


# ---------------------------------------------------------------- configuration


def test_real_is_the_default_and_the_mode_is_checked() -> None:
    assert SimulatorConfig().peer_mode == "real"
    assert config_from(parse_args([])).peer_mode == "real"
    assert config_from(parse_args(["--peer-mode", "ideal"])).peer_mode == "ideal"
    with pytest.raises(ValueError, match="peer_mode must be one of real, ideal"):
        SimulatorConfig(peer_mode="perfect")
    with pytest.raises(SystemExit):
        parse_args(["--peer-mode", "perfect"])


# ---------------------------------------------------------------- User Manager, HTTP


def test_new_session_answers_null_and_creates_no_demand(http_sim: Simulator) -> None:
    response = requests.post(
        http_sim.base_url + NEW_SESSION,
        data={"user_count": "3", "session_supervisor_id": "session-a"},
        timeout=5,
    )
    assert (response.status_code, response.json()) == (200, None)
    assert http_sim.user_manager_sessions() == {
        "session-a": {"registered": True, "demand": 0, "users": []}
    }
    assert http_sim.new_users_log() == []


def test_cleanup_session_forgets_the_registration_and_counts_calls(http_sim: Simulator) -> None:
    url = http_sim.base_url + CLEANUP_SESSION
    form = {"user_count": "1", "session_supervisor_id": "session-a"}
    requests.post(http_sim.base_url + NEW_SESSION, data=form, timeout=5)
    for session in ("session-a", "session-a", "never-registered"):
        answer = requests.delete(url, data={"session_supervisor_id": session}, timeout=5)
        assert (answer.status_code, answer.json()) == (
            200,
            {"message": "Session supervisor cleaned up successfully"},
        )
    assert requests.delete(url, data={}, timeout=5).status_code == 400
    assert http_sim.user_manager_sessions() == {}
    assert http_sim.cleanup_calls() == {"session-a": 2, "never-registered": 1}
    state = requests.get(f"{http_sim.base_url}/simulator/state", timeout=5).json()
    assert state["user_manager"]["cleanup_calls"] == {"session-a": 2, "never-registered": 1}
    assert state["sessions"] == {}


def test_each_registration_stays_listed_until_its_own_cleanup(http_sim: Simulator) -> None:
    """The real User Manager appends a session to its active list on every new-session and
    removes one entry per cleanup-session (docs/INTEROP.md)."""
    form = {"user_count": "1", "session_supervisor_id": "session-b"}
    for _ in range(3):
        requests.post(http_sim.base_url + NEW_SESSION, data=form, timeout=5)
    assert http_sim.listed_sessions() == {"session-b": 3}
    cleanup = {"session_supervisor_id": "session-b"}
    requests.delete(http_sim.base_url + CLEANUP_SESSION, data=cleanup, timeout=5)
    assert http_sim.listed_sessions() == {"session-b": 2}
    assert http_sim.user_manager_sessions() == {}, "routing is gone with the first clean-up"
    for _ in range(3):
        requests.delete(http_sim.base_url + CLEANUP_SESSION, data=cleanup, timeout=5)
    assert http_sim.listed_sessions() == {}


# ---------------------------------------------------------------- User Manager, demand


@pytest.mark.rabbitmq
def test_more_users_is_ignored_while_a_demand_is_queued(
    rabbit_sim: MakeSim, broker: Connection, session_id: str
) -> None:
    sim = rabbit_sim(users=2)
    holder, waiter = Supervisor(broker, sim, session_id), Supervisor(broker, sim, session_id + "w")
    holder_tap, waiter_tap = Tap(broker, session_id), Tap(broker, session_id + "w")
    users = holder.get_users(holder_tap, 2)
    waiter.register(5)
    waiter.demand("more-users", {"user_count": 2})
    waiter.demand("more-users", {"user_count": 3})

    log = handled(sim, waiter.session_id, 2)
    assert [(e["topic"], e["data"], e["outcome"]) for e in log] == [
        ("more-users", {"user_count": 2}, "applied"),
        ("more-users", {"user_count": 3}, QUEUED_ALREADY),
    ]
    assert sim.user_manager_sessions()[waiter.session_id]["demand"] == 2
    assert sim.state()["user_manager"]["demand_queue"] == [waiter.session_id]
    assert waiter_tap.quiet(0.2) == []

    # Served in part (one user for two): the rest of the demand is forgotten.
    holder.demand("users-released", {"user_list": [users[0]]})
    [message] = waiter_tap.collect(1)
    assert message.body == {
        "topic": "new-users",
        "data": {"user_list": [users[0]], "session_supervisor_id": waiter.session_id},
    }
    holder.demand("users-released", {"user_list": [users[1]]})
    assert waiter_tap.quiet(0.4) == []
    assert sim.state()["idle_users"] == [users[1]]
    assert sim.user_manager_sessions()[waiter.session_id] == {
        "registered": True,
        "demand": 0,
        "users": [users[0]],
    }
    # With nothing queued, more-users queues a demand again.
    waiter.demand("more-users", {"user_count": 3})
    [again] = waiter_tap.collect(1)
    assert again.body["data"]["user_list"] == [users[1]]


@pytest.mark.rabbitmq
def test_update_user_count_replaces_or_creates_the_demand_and_zero_drops_it(
    rabbit_sim: MakeSim, broker: Connection, session_id: str
) -> None:
    sim = rabbit_sim(users=1)
    holder, waiter = Supervisor(broker, sim, session_id), Supervisor(broker, sim, session_id + "w")
    holder_tap, waiter_tap = Tap(broker, session_id), Tap(broker, session_id + "w")
    [user] = holder.get_users(holder_tap, 1)
    waiter.register(4)

    waiter.demand("update-user-count", {"user_count": 2})
    handled(sim, waiter.session_id, 1)
    assert sim.user_manager_sessions()[waiter.session_id]["demand"] == 2
    waiter.demand("update-user-count", {"user_count": 4})
    handled(sim, waiter.session_id, 2)
    assert sim.user_manager_sessions()[waiter.session_id]["demand"] == 4
    assert sim.state()["user_manager"]["demand_queue"] == [waiter.session_id]
    waiter.demand("update-user-count", {"user_count": 0})
    handled(sim, waiter.session_id, 3)
    assert sim.user_manager_sessions()[waiter.session_id]["demand"] == 0
    assert sim.state()["user_manager"]["demand_queue"] == []

    holder.demand("users-released", {"user_list": [user]})
    sim.wait_until(lambda: sim.state()["idle_users"] == [user])
    assert waiter_tap.quiet(0.3) == []

    # Served one of three: the other two are forgotten, not owed.
    holder.get_users(holder_tap, 1)
    waiter.demand("update-user-count", {"user_count": 3})
    handled(sim, waiter.session_id, 4)
    holder.demand("users-released", {"user_list": [user]})
    [message] = waiter_tap.collect(1)
    assert message.body["data"]["user_list"] == [user]
    assert sim.user_manager_sessions()[waiter.session_id]["demand"] == 0
    waiter.demand("users-released", {"user_list": [user]})
    sim.wait_until(lambda: sim.state()["idle_users"] == [user])
    assert waiter_tap.quiet(0.3) == []


@pytest.mark.rabbitmq
def test_remove_users_demand_completely_unqueues_the_demand(
    rabbit_sim: MakeSim, broker: Connection, session_id: str
) -> None:
    sim = rabbit_sim(users=1)
    holder, waiter = Supervisor(broker, sim, session_id), Supervisor(broker, sim, session_id + "w")
    holder_tap, waiter_tap = Tap(broker, session_id), Tap(broker, session_id + "w")
    [user] = holder.get_users(holder_tap, 1)
    waiter.register(1)
    waiter.demand("more-users", {"user_count": 1})
    waiter.demand("remove-users-demand-completely", {"session_supervisor_id": waiter.session_id})
    handled(sim, waiter.session_id, 2)
    assert sim.state()["user_manager"]["demand_queue"] == []
    waiter.demand("more-users", {"user_count": 2})  # nothing queued: taken, not ignored
    assert handled(sim, waiter.session_id, 3)[-1]["outcome"] == "applied"
    waiter.demand("remove-users-demand-completely", {"session_supervisor_id": waiter.session_id})
    handled(sim, waiter.session_id, 4)

    holder.demand("users-released", {"user_list": [user]})
    sim.wait_until(lambda: sim.state()["idle_users"] == [user])
    assert waiter_tap.quiet(0.3) == []


@pytest.mark.rabbitmq
def test_a_release_re_serves_the_queue_at_once_even_to_the_releasing_session(
    rabbit_sim: MakeSim, supervisor_for: SupervisorFor, tap: Tap, session_id: str
) -> None:
    sim = rabbit_sim(users=1)
    sv = supervisor_for(sim)
    [user] = sv.get_users(tap, 1)
    sv.demand("update-user-count", {"user_count": 1})  # queued: nobody is idle
    sv.demand("users-released", {"user_list": [user]})

    [message] = tap.collect(1)
    assert message.body == {
        "topic": "new-users",
        "data": {"user_list": [user], "session_supervisor_id": session_id},
    }
    assert sim.user_manager_sessions()[session_id]["users"] == [user]
    # Each entry is logged once its publish returns, which the tap may see first.
    sim.wait_until(lambda: len(sim.new_users_log(session_id)) == 2, timeout=5)
    assert [entry["users"] for entry in sim.new_users_log(session_id)] == [[user], [user]]


@pytest.mark.rabbitmq
def test_users_arrive_over_time_and_a_partly_served_demand_is_popped(
    rabbit_sim: MakeSim, supervisor_for: SupervisorFor, tap: Tap, session_id: str
) -> None:
    sim = rabbit_sim(users=3, join_batch=1, join_delay=0.5)
    assert sim.state()["idle_users"] == ["sim-user-001"]
    assert sim.state()["users"]["sim-user-002"]["status"] == "not-connected"
    assert sim.state()["user_manager"]["users_to_connect"] == 2
    sv = supervisor_for(sim)
    assert sv.send("sim-user-003", "stop-work", {}).status_code == 200  # emitted to nobody
    sv.register(3)
    sv.demand("more-users", {"user_count": 3})

    [message] = tap.collect(1)
    assert message.body["data"]["user_list"] == ["sim-user-001"]
    assert sim.user_manager_sessions()[session_id]["demand"] == 0
    sim.wait_until(lambda: sim.state()["idle_users"] == ["sim-user-002", "sim-user-003"])
    assert tap.quiet(0.1) == []

    asked = time.monotonic()
    sv.demand("update-user-count", {"user_count": 2})
    [topped] = tap.collect(1)
    assert topped.body["data"]["user_list"] == ["sim-user-002", "sim-user-003"]
    # Both logs are written after the publish they lead to, which the tap may see first.
    log = handled(sim, session_id, 2)
    [demand] = [e for e in log if e["topic"] == "update-user-count"]
    first, second = sim.wait_until(
        lambda: (sent := sim.new_users_log(session_id)) and len(sent) == 2 and sent, timeout=5
    )
    assert demand["time"] >= asked
    assert first["time"] < demand["time"] <= second["time"]
    assert second["users"] == ["sim-user-002", "sim-user-003"]


@pytest.mark.rabbitmq
def test_each_arrival_serves_the_queue_first_come_first_served(
    rabbit_sim: MakeSim, broker: Connection, session_id: str
) -> None:
    sim = rabbit_sim(users=3, join_batch=1, join_delay=0.4)
    ids = [session_id, session_id + "b", session_id + "c"]
    supervisors = [Supervisor(broker, sim, sid) for sid in ids]
    taps = [Tap(broker, sid) for sid in ids]
    for sv in supervisors:
        sv.register(2)
    supervisors[0].demand("more-users", {"user_count": 2})
    [first] = taps[0].collect(1)
    supervisors[1].demand("more-users", {"user_count": 2})
    supervisors[2].demand("more-users", {"user_count": 1})

    [second] = taps[1].collect(1, timeout=3)
    [third] = taps[2].collect(1, timeout=3)
    got = [m.body["data"]["user_list"] for m in (first, second, third)]
    assert got == [["sim-user-001"], ["sim-user-002"], ["sim-user-003"]]
    assert [tap.quiet(0.5) for tap in taps] == [[], [], []]
    assert [e["session_id"] for e in sim.new_users_log()] == ids


# ---------------------------------------------------------------- forwarding of events


@pytest.mark.rabbitmq
def test_events_have_the_real_shapes_and_completion_is_never_forwarded(
    rabbit_sim: MakeSim, supervisor_for: SupervisorFor, tap: Tap, session_id: str
) -> None:
    sim = rabbit_sim(disconnect_share=1.0, seed=7)
    sv = supervisor_for(sim)
    sv.register(1)
    sv.demand("more-users", {"user_count": 1})
    [new_users] = tap.collect(1)
    assert new_users.body == {
        "topic": "new-users",
        "data": {"user_list": ["sim-user-001"], "session_supervisor_id": session_id},
    }
    user = "sim-user-001"
    planned = sim.state()["users"][user]["disconnects_after"]
    start(sv, user, [1, 2, 3, 4])

    messages = tap.until("user-disconnected")
    assert [m.body["topic"] for m in messages] == ["user-frame-rendered"] * planned + [
        "user-disconnected"
    ]
    for number, message in enumerate(messages[:-1], start=1):
        assert set(message.body) == {"topic", "data"}
        assert message.body["data"]["frame-number"] == str(number)
    assert messages[-1].body == {"topic": "user-disconnected", "data": {"user-id": user}}
    assert sim.user_manager_sessions()[session_id]["users"] == []


@pytest.mark.rabbitmq
def test_user_rendering_completed_is_dropped_and_counted(
    rabbit_sim: MakeSim, supervisor_for: SupervisorFor, tap: Tap
) -> None:
    sim = rabbit_sim()
    sv = supervisor_for(sim)
    [user] = sv.get_users(tap, 1)
    start(sv, user, [1, 2])

    messages = tap.collect(2)
    assert [m.body["data"]["frame-number"] for m in messages] == ["1", "2"]
    sim.wait_until(lambda: sim.dropped_events().get(DROP_COMPLETED) == 1)
    assert tap.quiet(0.2) == []
    dropped = sim.state()["user_manager"]["dropped_events"]
    assert dropped["by_reason"] == {DROP_COMPLETED: 1}
    assert dropped["recent"][0]["data"] == {"user-id": user}


@pytest.mark.rabbitmq
def test_quirks_keep_the_real_shapes(
    rabbit_sim: MakeSim, supervisor_for: SupervisorFor, tap: Tap
) -> None:
    sim = rabbit_sim(quirks=True, seed=5)
    sv = supervisor_for(sim)
    [user] = sv.get_users(tap, 1)
    start(sv, user, [1, 2, 3, 4, 5, 6])

    messages = tap.collect(6)
    assert {frozenset(m.body) for m in messages} == {frozenset({"topic", "data"})}
    assert [m.body["data"]["frame-number"] for m in messages] == ["1", "2", "3", "4", "5", "6"]
    sim.wait_until(lambda: sim.dropped_events().get(DROP_COMPLETED) == 1)
    assert tap.quiet(0.2) == []


@pytest.mark.rabbitmq
def test_an_error_report_goes_out_only_with_an_empty_blend_file_hash(
    rabbit_sim: MakeSim, supervisor_for: SupervisorFor, tap: Tap
) -> None:
    sim = rabbit_sim(fail_share=1.0, seed=3)
    sv = supervisor_for(sim)
    [user] = sv.get_users(tap, 1)
    start(sv, user, [1, 2])
    sim.wait_until(lambda: sim.dropped_events().get(DROP_ERROR_WITH_HASH) == 2)
    assert tap.quiet(0.2) == []

    start(sv, user, [7], blend_hash="")
    [message] = tap.collect(1)
    assert message.body == {
        "topic": "user-error-sending-frame",
        "data": {"user-id": user, "frame-number": 7, "blend-file-hash": ""},
    }


@pytest.mark.rabbitmq
def test_after_cleanup_events_and_demand_of_the_session_are_dropped(
    rabbit_sim: MakeSim, supervisor_for: SupervisorFor, tap: Tap, session_id: str
) -> None:
    sim = rabbit_sim(users=2)
    sv = supervisor_for(sim)
    users = sv.get_users(tap, 1)
    sv.demand("update-user-count", {"user_count": 3})  # one idle: served in part
    [served] = tap.collect(1)
    users += served.body["data"]["user_list"]
    sv.demand("update-user-count", {"user_count": 1})  # queued: nobody idle
    handled(sim, session_id, 3)

    sv.cleanup()
    assert sim.cleanup_calls() == {session_id: 1}
    assert sim.user_manager_sessions() == {
        session_id: {"registered": False, "demand": 0, "users": sorted(users)}
    }
    start(sv, users[0], [1])
    sim.wait_until(lambda: sim.dropped_events().get(DROP_UNREGISTERED) == 1)
    sv.demand("more-users", {"user_count": 1})
    assert tap.quiet(0.3) == []
    assert handled(sim, session_id, 4)[-1]["outcome"] == "ignored: unregistered session"

    # Released users are taken back from an unregistered session, and go to nobody.
    sv.demand("users-released", {"user_list": users})
    sim.wait_until(lambda: sorted(sim.state()["idle_users"]) == sorted(users))
    assert sim.user_manager_sessions() == {}
    assert tap.quiet(0.2) == []


@pytest.mark.rabbitmq
def test_a_restarted_user_manager_forgets_everything_until_asked_again(
    rabbit_sim: MakeSim, supervisor_for: SupervisorFor, tap: Tap, session_id: str
) -> None:
    # Users of their own: after the restart, anyone's release of the same ids would bring
    # them back, and other tests on this broker release `sim-user-...` all the time.
    sim = rabbit_sim(users=2, frame_time=0.05, user_prefix=session_id)
    sv = supervisor_for(sim)
    users = sv.get_users(tap, 2)
    start(sv, users[0], list(range(1, 60)))
    tap.until("user-frame-rendered")

    assert sim.restart_user_manager() == sorted(users)
    state = sim.state()
    assert state["sessions"] == {}
    assert state["user_manager"]["sessions"] == {}
    assert state["user_manager"]["restarts"] == 1
    assert state["idle_users"] == []
    assert state["users"][users[0]]["status"] == "rendering", "the node itself goes on"
    tap.quiet(0.06)  # a frame already in flight
    assert tap.quiet(0.3) == [], "the forgotten node's uploads are dropped"
    sim.wait_until(lambda: sim.dropped_events().get(DROP_UNMAPPED, 0) >= 1, timeout=5)

    sv.demand("more-users", {"user_count": 1})
    assert tap.quiet(0.3) == []
    assert handled(sim, session_id, 2)[-1]["outcome"] == "ignored: unregistered session"
    sv.register(1)
    sv.demand("more-users", {"user_count": 1})
    assert tap.quiet(0.3) == [], "a forgotten node is never offered again by itself"
    sv.demand("users-released", {"user_list": users})
    [message] = tap.collect(1)
    assert message.body["data"]["user_list"] == [f"{session_id}-001"]


def test_a_user_manager_restart_can_be_injected_over_http(http_sim: Simulator) -> None:
    requests.post(
        http_sim.base_url + NEW_SESSION,
        data={"user_count": "1", "session_supervisor_id": "session-a"},
        timeout=5,
    )
    url = http_sim.base_url + "/simulator/faults"
    answer = requests.post(url, json={"service": "user-manager", "mode": "restart"}, timeout=5)
    assert (answer.status_code, answer.json()) == (
        200,
        {
            "message": "Fault injected",
            "fault": {"service": "user-manager", "mode": "restart"},
            "users_reset": ["sim-user-001", "sim-user-002", "sim-user-003"],
        },
    )
    assert http_sim.user_manager_sessions() == {}
    assert http_sim.state()["user_manager"]["restarts"] == 1
    refused = requests.post(url, json={"service": "blob", "mode": "restart"}, timeout=5)
    assert refused.status_code == 400
    assert http_sim.state()["user_manager"]["restarts"] == 1


# ---------------------------------------------------------------- User Service


@pytest.mark.rabbitmq
def test_the_acknowledged_send_answers_the_node_s_bare_answer_on_its_real_path(
    rabbit_sim: MakeSim, supervisor_for: SupervisorFor, tap: Tap
) -> None:
    sim = rabbit_sim()
    sv = supervisor_for(sim)
    [user] = sv.get_users(tap, 1)
    start(sv, user, [5])
    [rendered] = tap.collect(1)

    body = {"user_id": user, "topic": "retrieve-frame", "data": {"frame-number": 5}}
    misspelled = requests.post(sim.base_url + SEND_ACK_MISSPELLED, json=body, timeout=5)
    assert (misspelled.status_code, misspelled.json()) == (404, {"detail": "Not Found"})
    assert tap.quiet(0.2) == []

    has = requests.post(sim.base_url + SEND_ACK, json=body, timeout=5)
    assert (has.status_code, has.json()) == (200, True)
    [again] = tap.collect(1)
    assert again.body == rendered.body
    body["data"] = {"frame-number": 6}
    lacks = requests.post(sim.base_url + SEND_ACK, json=body, timeout=5)
    assert (lacks.status_code, lacks.json()) == (200, False)


def test_ideal_peers_answer_both_spellings(make_sim: MakeSim) -> None:
    sim = make_sim(broker_url="memory://", peer_mode="ideal")
    body = {"user_id": "sim-user-001", "topic": "stop-work", "data": {}}
    for path in (SEND_ACK, SEND_ACK_MISSPELLED):
        answer = requests.post(sim.base_url + path, json=body, timeout=5)
        assert (answer.status_code, answer.json()) == (200, {"acknowledged": True})


# ---------------------------------------------------------------- catalog


def test_change_state_keeps_each_object_s_state(http_sim: Simulator) -> None:
    url = http_sim.base_url + CHANGE_STATE
    assert http_sim.object_state("demo-customer", "demo-object") == "processing"
    assert http_sim.object_state("demo-customer", "nothing") is None
    body = {"objectId": "demo-object", "customerId": "demo-customer", "objectState": "video-ready"}
    answer = requests.put(url, json=body, timeout=5)
    assert answer.status_code == 200
    assert answer.json()["objectState"] == "video-ready"
    assert http_sim.object_state("demo-customer", "demo-object") == "video-ready"
    state = requests.get(f"{http_sim.base_url}/simulator/state", timeout=5).json()
    assert state["catalog"]["objects"][0]["objectState"] == "video-ready"
    [change] = state["object_state_changes"]
    assert (change["customer_id"], change["object_id"], change["state"]) == (
        "demo-customer",
        "demo-object",
        "video-ready",
    )
    assert [c["state"] for c in http_sim.object_state_changes()] == ["video-ready"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"objectId": "demo-object", "customerId": "demo-customer", "objectState": "done"}, 400),
        ({"objectId": "demo-object", "customerId": "demo-customer"}, 400),
        ({"objectId": "demo-object", "customerId": "nobody", "objectState": "processing"}, 404),
        ({"objectId": "nothing", "customerId": "demo-customer", "objectState": "processing"}, 404),
        (["not", "an", "object"], 400),
    ],
)
def test_change_state_refuses_what_it_cannot_apply(
    http_sim: Simulator, body: object, status: int
) -> None:
    answer = requests.put(http_sim.base_url + CHANGE_STATE, json=body, timeout=5)
    assert answer.status_code == status
    assert "message" in answer.json()
    assert http_sim.object_state("demo-customer", "demo-object") == "processing"
    assert http_sim.object_state_changes() == []
