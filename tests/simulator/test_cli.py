"""`python -m simulator`: flags map onto SimulatorConfig; the process logs JSON lines and
stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from simulator import SimulatorConfig
from simulator.__main__ import config_from, parse_args

ROOT = Path(__file__).resolve().parents[2]


def test_every_knob_has_a_flag(tmp_path: Path) -> None:
    args = parse_args(
        [
            "--host", "127.0.0.2", "--port", "14000", "--data-dir", str(tmp_path),
            "--broker-url", "redis://127.0.0.1:6379/5", "--users", "7", "--frame-time", "0.2",
            "--jitter", "0.1", "--join-delay", "1.5", "--join-batch", "2",
            "--disconnect-share", "0.1", "--fail-share", "0.2", "--early-complete-share", "0.3",
            "--duplicate", "0.4", "--reorder", "0.25", "--quirks", "--peer-mode", "ideal",
            "--seed", "9",
            "--demo-blend", "default_1_250.blend",
            "--queue", "Q", "--private-queue", "--workers", "2",
        ]
    )  # fmt: skip
    assert config_from(args) == SimulatorConfig(
        host="127.0.0.2",
        port=14000,
        data_dir=tmp_path,
        broker_url="redis://127.0.0.1:6379/5",
        users=7,
        frame_time=0.2,
        jitter=0.1,
        join_delay=1.5,
        join_batch=2,
        disconnect_share=0.1,
        fail_share=0.2,
        early_complete_share=0.3,
        duplicate=0.4,
        reorder=0.25,
        quirks=True,
        peer_mode="ideal",
        seed=9,
        demo_blend="default_1_250.blend",
        user_manager_queue="Q",
        private_queue=True,
        workers=2,
    )


def test_every_farm_profile_knob_has_a_flag() -> None:
    args = parse_args(
        [
            "--frame-time-dist", "pareto", "--tail", "1.8", "--slow-share", "0.1",
            "--slow-factor", "3", "--slowdown-share", "0.2", "--slowdown-factor", "2.5",
            "--slowdown-after", "40", "--stall-share", "0.05", "--stall-after", "90",
        ]
    )  # fmt: skip
    config = config_from(args)
    profile = {name: getattr(config, name) for name in (
        "frame_time_dist", "tail", "slow_share", "slow_factor", "slowdown_share",
        "slowdown_factor", "slowdown_after", "stall_share", "stall_after",
    )}  # fmt: skip
    assert profile == {
        "frame_time_dist": "pareto",
        "tail": 1.8,
        "slow_share": 0.1,
        "slow_factor": 3.0,
        "slowdown_share": 0.2,
        "slowdown_factor": 2.5,
        "slowdown_after": 40.0,
        "stall_share": 0.05,
        "stall_after": 90.0,
    }
    assert config_from(parse_args([])) == SimulatorConfig(
        port=13000, data_dir=Path("var/simulator")
    )  # profiles off unless asked for


def test_defaults_bind_to_localhost_on_the_blob_service_port() -> None:
    config = config_from(parse_args([]))
    assert (config.host, config.port, config.users) == ("127.0.0.1", 13000, 5)
    assert config.broker_url == "amqp://guest:guest@127.0.0.1:5672//"
    assert config_from(parse_args(["--demo-blend", ""])).demo_blend is None


@pytest.mark.parametrize(
    "knobs",
    [
        {"fail_share": 1.5},
        {"duplicate": -0.1},
        {"frame_time": -1},
        {"users": -1},
        {"port": 70000},
        {"reorder": -0.1},
    ],
)
def test_out_of_range_knobs_are_refused(knobs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        SimulatorConfig(**knobs)


def test_the_broker_password_is_not_shown() -> None:
    shown = SimulatorConfig(broker_url="amqp://user:secret@host:5672//").public()["broker_url"]
    assert shown == "amqp://user:***@host:5672//"


def test_the_cli_serves_until_sigterm_and_logs_json(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "simulator", "--port", "0", "--broker-url", "memory://",
        "--private-queue", "--data-dir", str(tmp_path / "data"), "--users", "2",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        lines = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            lines.append(json.loads(line))
            if lines[-1].get("event") == "serving":
                break
        base_url = lines[-1]["base_url"]
        state = requests.get(f"{base_url}/simulator/state", timeout=5).json()
        assert state["idle_users"] == ["sim-user-001", "sim-user-002"]
        assert (tmp_path / "data" / "buckets" / "blend-files" / "demo-customer").is_dir()
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    assert process.returncode == 0
    assert out == ""
    rest = [json.loads(line) for line in err.splitlines()]
    assert {"time", "level", "name", "message"} <= set(rest[-1])
    assert rest[-1]["event"] == "stopped"
