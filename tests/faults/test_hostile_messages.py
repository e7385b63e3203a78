"""Thousands of generated hostile User Manager messages, interleaved with a real run.

The run must complete exactly once per frame and the consumer must never die. Every
hostile message is refused exactly once: logged once with its reason, counted in Redis and
kept on the dead-letter queue, where the test finds each one (none lost, none twice).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kombu import Connection, Producer

from supervisor.messages import parse
from supervisor.messaging import (
    SESSION_SUPERVISOR_EXCHANGE,
    IntakeTopology,
    SessionBindings,
    session_routing_key,
)
from supervisor.refusals import REFUSED_COUNTER, Refused
from tests.faults.helpers import assert_every_frame_exactly_once, fault_run
from tests.processes import wait_until

HOSTILE_COUNT = 2000
GHOST = "ghost-session-0000"
TOPICS = [
    "user-frame-rendered",
    "user-rendering-completed",
    "user-disconnected",
    "user-error-sending-frame",
]
strangers = st.from_regex(r"stranger-[a-z0-9]{1,8}", fullmatch=True)
bad_keys = st.sampled_from(
    [
        "../../etc/passwd",
        "/absolute/path.png",
        "temp/../../x.png",
        "temp/a\x00b.png",
        "http://evil.example/x.png",
        "temp//double.png",
        "temp\\windows.png",
        "",
        "%2e%2e/x.png",
    ]
)
json_junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def _message(topic: str, data: Any, **extra: Any) -> dict[str, Any]:
    return {"topic": topic, "data": data, **extra}


hostile = st.one_of(
    st.binary(min_size=1, max_size=200).map(lambda raw: ("session", raw)),
    json_junk.filter(lambda v: not isinstance(v, dict)).map(lambda v: ("session", v)),
    st.text(max_size=20).map(lambda topic: ("session", _message(f"x-{topic}", {}))),
    st.sampled_from(TOPICS).flatmap(
        lambda topic: json_junk.map(lambda junk: ("session", _message(topic, {"user-id": junk})))
    ),
    bad_keys.map(
        lambda key: (
            "session",
            _message(
                "user-frame-rendered",
                {
                    "user-id": "sim-user-001",
                    "frame-number": 3,
                    "image-extension": "png",
                    "image-binary-path": key,
                },
            ),
        )
    ),
    st.integers(200, 1_048_574).map(
        lambda frame: (
            "session",
            _message(
                "user-frame-rendered",
                {
                    "user-id": "sim-user-001",
                    "frame-number": frame,
                    "image-extension": "png",
                    "image-binary-path": f"temp/fake/{frame}.png",
                },
            ),
        )
    ),
    st.tuples(st.sampled_from(TOPICS), strangers, st.integers(1, 120)).map(
        lambda t: (
            "session",
            _message(
                t[0],
                {
                    "user-id": t[1],
                    "user_id": t[1],
                    "frame-number": t[2],
                    "image-extension": "png",
                    "image-binary-path": f"temp/{t[1]}/{t[2]}.png",
                },
            ),
        )
    ),
    strangers.map(lambda user: ("ghost", _message("new-users", {"user_list": [user]}))),
    st.just(("session", _message("new-users", {"user_list": [f"u{i}" for i in range(10_001)]}))),
    st.text(min_size=1, max_size=8).map(
        lambda other: (
            "session",
            _message("new-users", {"user_list": ["a"]}, **{"supervisor-id": other}),
        )
    ),
)


def _encode(body: Any) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


def generate_hostile_messages(count: int) -> list[tuple[str, Any]]:
    """Let hypothesis generate `count` hostile messages (one per example)."""
    collected: list[tuple[str, Any]] = []

    @settings(
        max_examples=count,
        phases=[Phase.generate],
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(message=hostile)
    def collect(message: tuple[str, Any]) -> None:
        collected.append(message)

    collect()
    return collected


def test_hostile_messages_interleaved_with_a_run(tmp_path: Path) -> None:
    messages = generate_hostile_messages(HOSTILE_COUNT)
    expected = len(messages)
    assert expected > HOSTILE_COUNT // 2
    with fault_run(tmp_path, "hostile", frame_time=0.5, duplicate=0.3, quirks=True) as run:
        run.stack.start("web", "worker", "beat")
        run.start_workload()
        # The worker binds the session's routing key when it prepares the workload; the
        # broker drops (and still confirms) what is published to it before that.
        wait_until(
            lambda: run.stack.status(run.customer)["status"]["workload_status"] == "running",
            60,
            "the workload to run",
        )
        topology = IntakeTopology(
            run.stack.env["USER_MANAGER_BROKER_URL"],
            queue_name=run.stack.env["INTAKE_QUEUE"],
            dead_letter_queue_name=run.stack.env["DEAD_LETTER_QUEUE"],
        )
        SessionBindings(topology).bind(GHOST)
        keys = {
            "session": session_routing_key(_session_id(run)),
            "ghost": session_routing_key(GHOST),
        }

        def flood() -> None:
            with Connection(
                topology.url, transport_options={"confirm_publish": True}
            ) as connection:
                producer = Producer(connection.default_channel)
                for index, (route, body) in enumerate(messages):
                    producer.publish(
                        _encode(body),
                        exchange=SESSION_SUPERVISOR_EXCHANGE,
                        routing_key=keys[route],
                        content_type="application/json",
                        content_encoding="binary",
                    )
                    if index % 100 == 0:
                        time.sleep(0.05)

        flooding = threading.Thread(target=flood)
        flooding.start()
        run.faults.append(f"{expected} generated hostile messages during the run")
        flooding.join(timeout=120)
        status = run.stack.status(run.customer)["status"]["workload_status"]
        assert status == "running", (
            "the flood must end before the run: after it, the session's routing key is "
            "unbound and the broker drops what is left"
        )
        assert_every_frame_exactly_once(run, "hostile-messages", timeout=240)

        counter = redis.Redis.from_url(run.stack.env["REDIS_URL"])

        def refused_total() -> int:
            return sum(int(v) for v in counter.hvals(REFUSED_COUNTER))

        with contextlib.suppress(AssertionError):  # the exact check below names what is missing
            wait_until(lambda: refused_total() >= expected, 120, "every hostile message refused")
        time.sleep(3)
        refused = refused_total()
        worker_log = run.stack.processes["worker"].log_path.read_text(errors="replace")
        with Connection(topology.url) as connection:
            kept = topology.dead_letter_queue(connection.default_channel).queue_declare(
                passive=True
            )
        assert worker_log.count('"message": "message refused"') == refused, "logged once each"
        assert kept.message_count == refused, "each refusal kept on the dead-letter queue"
        wanted = _dead_letters_expected(messages, keys)
        found = _dead_letters(topology)
        missing = {item: n - found[item] for item, n in wanted.items() if found[item] != n}
        assert missing == {}, (
            f"{sum(missing.values())} hostile messages lost (or, if negative, refused twice) "
            f"of {expected}; for example: {list(missing.items())[:5]}"
        )
        assert run.stack.processes["worker"].alive, "the worker died"
        assert "intake could not" not in worker_log
        SessionBindings(topology).unbind(GHOST)


def _dead_letters_expected(
    messages: list[tuple[str, Any]], keys: dict[str, str]
) -> Counter[tuple[str, str]]:
    """Every hostile message must be refused exactly once: what its dead letter holds (the
    raw body when the intake refuses it, the parsed event when a handler does)."""
    expected: Counter[tuple[str, str]] = Counter()
    for route, body in messages:
        raw = _encode(body)
        kept = raw.decode("utf-8", "replace")[:65536]
        if route != "ghost":
            with contextlib.suppress(Refused):
                kept = json.dumps(parse(raw, keys[route]).to_body())
        expected[(keys[route], kept)] += 1
    return expected


def _dead_letters(topology: IntakeTopology) -> Counter[tuple[str, str]]:
    found: Counter[tuple[str, str]] = Counter()
    with Connection(topology.url) as connection:
        queue = topology.dead_letter_queue(connection.default_channel)
        while (message := queue.get(no_ack=True)) is not None:
            record = json.loads(message.body)
            found[(record["routing_key"], record["body"])] += 1
    return found


def _session_id(run: Any) -> str:
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(run.stack.env["DATABASE_URL"], poolclass=NullPool)
    with engine.connect() as connection:
        session_id = connection.execute(
            text("SELECT id FROM workloads WHERE customer_id = :c"), {"c": run.customer}
        ).scalar_one()
    engine.dispose()
    return session_id
