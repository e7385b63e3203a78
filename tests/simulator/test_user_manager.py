"""The User Manager on the real RabbitMQ: demand in on USER_MANAGER_EXCHANGE, new-users out on
SESSION_SUPERVISOR_EXCHANGE with the session's routing key."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kombu import Connection

from simulator import Simulator, SimulatorConfig, SimulatorError
from tests.simulator.helpers import SESSION_SUPERVISOR_EXCHANGE, Supervisor, Tap

pytestmark = pytest.mark.rabbitmq

MakeSim = Callable[..., Simulator]
SupervisorFor = Callable[[Simulator], Supervisor]


def ignored(sim: Simulator, session_id: str) -> list[dict]:
    """Ignored messages naming this session (other test runs' messages reach us too)."""
    return [
        entry
        for entry in sim.state()["ignored_messages"]["recent"]
        if session_id in repr(entry["body"])
    ]


def test_more_users_for_a_registered_session_gets_new_users(
    rabbit_sim: MakeSim, supervisor_for: SupervisorFor, tap: Tap, session_id: str
) -> None:
    sim = rabbit_sim(users=3, peer_mode="ideal")
    sv = supervisor_for(sim)
    sv.register(2)
    sv.demand("more-users", {"user_count": 2})

    [message] = tap.collect(1)
    assert message.routing_key == f"SESSION_SUPERVISOR_{session_id}"
    assert message.body == {
        "topic": "new-users",
        "supervisor-id": session_id,
        "data": {
            "user_list": ["sim-user-001", "sim-user-002"],
            "session_supervisor_id": session_id,
        },
    }
    assert message.content_type == "application/json"
    assert message.properties["delivery_mode"] == 2
    state = sim.state()
    assert state["sessions"][session_id]["users"] == ["sim-user-001", "sim-user-002"]
    assert state["sessions"][session_id]["demand"] == 0
    assert state["idle_users"] == ["sim-user-003"]
    # Counted when the broker confirms the publish, which may come after the tap has it.
    assert sim.wait_until(lambda: sim.state()["published"], timeout=5) == {"new-users": 1}


def test_the_exchanges_are_direct_and_durable(rabbit_sim: MakeSim, broker: Connection) -> None:
    rabbit_sim()
    channel = broker.channel()
    try:
        # A passive declare with different flags fails if the broker's exchange differs.
        SESSION_SUPERVISOR_EXCHANGE(channel).declare(passive=True)
    finally:
        channel.close()


def test_demand_from_an_unregistered_session_is_ignored(
    rabbit_sim: MakeSim, supervisor_for: SupervisorFor, tap: Tap, session_id: str
) -> None:
    sim = rabbit_sim()
    supervisor_for(sim).demand("more-users", {"user_count": 2})

    [entry] = sim.wait_until(lambda: ignored(sim, session_id))
    assert entry["reason"] == "unregistered session"
    assert tap.quiet(0.3) == []
    assert sim.state()["idle_users"] == ["sim-user-001", "sim-user-002", "sim-user-003"]


def test_users_join_late_in_batches(
    rabbit_sim: MakeSim, supervisor_for: SupervisorFor, tap: Tap
) -> None:
    sim = rabbit_sim(users=5, join_delay=0.25, join_batch=2, peer_mode="ideal")
    sv = supervisor_for(sim)
    sv.register(5)
    sent = time.monotonic()
    sv.demand("more-users", {"user_count": 5})

    waves = []
    for _ in range(3):
        [message] = tap.collect(1, timeout=3)
        waves.append((time.monotonic() - sent, message.body["data"]["user_list"]))
    assert [users for _, users in waves] == [
        ["sim-user-001", "sim-user-002"],
        ["sim-user-003", "sim-user-004"],
        ["sim-user-005"],
    ]
    times = [at for at, _ in waves]
    assert times[0] >= 0.25
    assert times[1] - times[0] >= 0.2
    assert times[2] - times[1] >= 0.2
    assert tap.quiet(0.3) == []


def test_update_user_count_replaces_the_outstanding_demand(
    rabbit_sim: MakeSim, supervisor_for: SupervisorFor, tap: Tap, session_id: str
) -> None:
    sim = rabbit_sim(users=5, join_delay=0.3, peer_mode="ideal")
    sv = supervisor_for(sim)
    sv.register(5)
    sv.demand("more-users", {"user_count": 4})
    sv.demand("update-user-count", {"user_count": 1})

    [message] = tap.collect(1)
    assert message.body["data"]["user_list"] == ["sim-user-001"]
    assert tap.quiet(0.4) == []
    assert sim.state()["sessions"][session_id]["demand"] == 0


def test_remove_users_demand_completely_drops_the_demand(
    rabbit_sim: MakeSim, supervisor_for: SupervisorFor, tap: Tap, session_id: str
) -> None:
    sim = rabbit_sim(join_delay=0.3, peer_mode="ideal")
    sv = supervisor_for(sim)
    sv.register(3)
    sv.demand("more-users", {"user_count": 3})
    sv.demand("remove-users-demand-completely", {"session_supervisor_id": session_id})

    sim.wait_until(lambda: sim.state()["sessions"][session_id]["demand"] == 0)
    assert tap.quiet(0.5) == []


def test_demand_waits_for_users_released_by_another_session(
    rabbit_sim: MakeSim, broker: Connection, session_id: str
) -> None:
    sim = rabbit_sim(users=2)
    first, second = Supervisor(broker, sim, session_id), Supervisor(broker, sim, session_id + "b")
    first_tap, second_tap = Tap(broker, session_id), Tap(broker, session_id + "b")
    users = first.get_users(first_tap, 2)
    second.register(1)
    second.demand("more-users", {"user_count": 1})
    assert second_tap.quiet(0.3) == []

    first.demand("users-released", {"user_list": [users[1]]})
    [message] = second_tap.collect(1)
    assert message.body["data"]["user_list"] == [users[1]]
    state = sim.state()
    assert state["sessions"][session_id]["users"] == [users[0]]
    assert state["sessions"][session_id + "b"]["users"] == [users[1]]


def test_released_users_go_back_to_the_idle_pool_and_stop_rendering(
    rabbit_sim: MakeSim, supervisor_for: SupervisorFor, tap: Tap, session_id: str
) -> None:
    sim = rabbit_sim(users=2, frame_time=0.05)
    sv = supervisor_for(sim)
    users = sv.get_users(tap, 2)
    sv.send(users[0], "start-rendering", {"blend_file_hash": "h", "frame_list": list(range(50))})
    tap.until("user-frame-rendered")

    sv.demand("users-released", {"user_list": users})
    sim.wait_until(lambda: sorted(sim.state()["idle_users"]) == sorted(users))
    tap.quiet(0.1)  # at most a frame already in flight
    assert tap.quiet(0.3) == []
    assert sim.state()["users"][users[0]]["status"] == "idle"
    assert sim.state()["sessions"][session_id]["users"] == []


def test_releasing_users_of_another_session_is_refused(
    rabbit_sim: MakeSim, supervisor_for: SupervisorFor, tap: Tap, session_id: str
) -> None:
    sim = rabbit_sim(users=2)
    sv = supervisor_for(sim)
    sv.get_users(tap, 1)
    sv.demand("users-released", {"user_list": ["sim-user-002", "nobody"]})

    [entry] = sim.wait_until(lambda: ignored(sim, session_id))
    assert entry["reason"] == "some released users are not this session's"
    assert sim.state()["sessions"][session_id]["users"] == ["sim-user-001"]
    assert sim.state()["idle_users"] == ["sim-user-002"]


@pytest.mark.parametrize(
    "raw",
    [
        b"not json at all",
        "a JSON string",
        {"no": "topic"},
        {"topic": "teleport", "supervisor-id": "x", "data": {}},
        {"topic": "more-users", "data": {"user_count": 1}},
        {"topic": "more-users", "supervisor-id": "REPLACE", "data": {"user_count": -1}},
        {"topic": "more-users", "supervisor-id": "REPLACE", "data": {"user_count": "2"}},
        {"topic": "users-released", "supervisor-id": "REPLACE", "data": {"user_list": "u"}},
    ],
)
def test_off_contract_messages_are_ignored_and_the_consumer_goes_on(
    rabbit_sim: MakeSim,
    supervisor_for: SupervisorFor,
    tap: Tap,
    session_id: str,
    raw: object,
) -> None:
    sim = rabbit_sim()
    sv = supervisor_for(sim)
    sv.register(1)
    marker = f"{session_id}-marker"
    if isinstance(raw, dict):
        raw = {**raw, "marker": marker}
        if raw.get("supervisor-id") == "REPLACE":
            raw["supervisor-id"] = session_id
    elif isinstance(raw, bytes):
        raw = raw + marker.encode()
    else:
        raw = f"{raw} {marker}"
    sv.demand("", {}, raw=raw)
    sv.demand("more-users", {"user_count": 1})

    [message] = tap.collect(1)
    assert message.body["data"]["user_list"] == ["sim-user-001"]
    assert ignored(sim, marker)


def test_an_unreachable_broker_fails_start_cleanly(tmp_path: object) -> None:
    config = SimulatorConfig(
        broker_url="amqp://guest:guest@127.0.0.1:1//", broker_ready_timeout=0.5, private_queue=True
    )
    sim = Simulator(config)
    with pytest.raises(SimulatorError, match="broker not ready"):
        sim.start()
    sim.stop()


def own_broker_ports() -> set[int]:
    """Local ports of this process's TCP connections to port 5672 (Linux /proc)."""
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                local, remote, inode = fields[1], fields[2], fields[9]
                if inode in inodes and remote.endswith(":1628"):  # 0x1628 == 5672
                    ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def close_broker_connections(ports: set[int]) -> int:
    """Have RabbitMQ drop our connections (found by local port), as a broker restart would."""
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "name"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if listed.returncode != 0:
        pytest.skip(f"rabbitmqctl cannot list connections: {listed.stderr.strip()[:200]}")
    closed = 0
    for line in listed.stdout.splitlines():
        pid, _, name = line.partition("\t")
        local_port = name.split(" ", 1)[0].rsplit(":", 1)[-1]
        if pid.startswith("<") and local_port.isdigit() and int(local_port) in ports:
            subprocess.run(
                ["rabbitmqctl", "-q", "close_connection", pid, "simulated broker restart"],
                capture_output=True,
                timeout=30,
                check=True,
            )
            closed += 1
    return closed


@pytest.mark.skipif(
    shutil.which("rabbitmqctl") is None or not Path("/proc/self/fd").is_dir(),
    reason="needs rabbitmqctl and Linux /proc to drop our own broker connections",
)
def test_the_user_manager_survives_losing_its_broker_connections(
    rabbit_sim: MakeSim, supervisor_for: SupervisorFor, tap: Tap
) -> None:
    before = own_broker_ports()
    sim = rabbit_sim()
    sv = supervisor_for(sim)
    sv.get_users(tap, 1)  # the publisher has connected too
    ours = own_broker_ports() - before
    assert len(ours) == 2
    assert close_broker_connections(ours) == 2
    # Our private queue is exclusive: it goes with the connection and comes back with the next.
    sim.wait_until(lambda: sim.state()["broker"]["consumer_connects"] == 2, timeout=15)

    sv.demand("more-users", {"user_count": 1})
    [message] = tap.collect(1, timeout=15)
    assert message.body["data"]["user_list"] == ["sim-user-002"]
