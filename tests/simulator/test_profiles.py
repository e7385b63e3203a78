"""Farm profiles: slow users, users that slow down, heavy-tailed frame times and hung users.

Most tests run a UserPool on a virtual clock (a scheduler that jumps from timer to timer), so
frame times are exact and nothing depends on the machine's load; one test per behaviour that
crosses HTTP runs the real simulator."""

from __future__ import annotations

import heapq
import itertools
import math
import random
import statistics
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests

from simulator import Simulator, SimulatorConfig
from simulator import users as users_module
from simulator.blobs import BlobStore
from simulator.profiles import assign_profiles, sample_frame_time
from simulator.users import NoAnswer, UserPool
from tests.simulator.helpers import SEND, SEND_ACK

MakeSim = Callable[..., Simulator]
SESSION = "s-profiles"
HASH = "hash-of-the-blend"


class VirtualFarm:
    """A UserPool whose timers run on a virtual clock, and every event it routes, timed."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **knobs: Any) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._count = itertools.count()
        self.events: list[tuple[float, str, str, dict[str, Any]]] = []
        self.lists: dict[str, list[int]] = {}
        monkeypatch.setattr(users_module, "time", SimpleNamespace(monotonic=lambda: self.now))
        config = SimulatorConfig(**{"frame_time": 1.0, "seed": 1, **knobs})
        self.pool = UserPool(
            config,
            blobs=BlobStore(tmp_path / "blobs"),
            route=self._route,
            scheduler=self,  # type: ignore[arg-type]
            renderer=lambda _blend, frame: b"png-%d" % frame,
            blend_lookup=lambda _hash: None,
        )

    def _route(self, session_id: str | None, topic: str, data: dict[str, Any]) -> bool:
        user = data.get("user-id") or data.get("user_id")
        self.events.append((self.now, str(user), topic, data))
        return True

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (self.now + max(0.0, delay), next(self._count), fn))

    def run(self, until: float = math.inf) -> None:
        """Fire every timer due by `until` in time order, then stand at `until`."""
        while self._heap and self._heap[0][0] <= until:
            when, _, fn = heapq.heappop(self._heap)
            self.now = when
            fn()
        if until < math.inf:
            self.now = max(self.now, until)

    def start_all(self, frames: int, count: int | None = None) -> list[str]:
        users = self.pool.take_idle(count or len(self.pool.idle()), SESSION)
        for index, user in enumerate(users):
            self.lists[user] = list(range(index * 1000, index * 1000 + frames))
            data = {"blend_file_hash": HASH, "frame_list": self.lists[user]}
            assert self.pool.deliver(user, "start-rendering", data) is True
        return users

    def frame_times(self, user: str) -> list[float]:
        return [t for t, u, topic, _ in self.events if u == user and topic == "user-frame-rendered"]

    def topics(self, user: str) -> list[str]:
        return [topic for _, u, topic, _ in self.events if u == user]

    def state(self, user: str) -> dict[str, Any]:
        return self.pool.snapshot()[user]


def intervals(times: list[float], start: float = 0.0) -> list[float]:
    """Time between frames, the first from `start` (rounded: the clock adds floats)."""
    return [round(b - a, 9) for a, b in zip([start, *times], times, strict=False)]


# ---------------------------------------------------------------- the sampling itself


def test_pareto_frame_times_average_the_frame_time_and_have_a_heavy_tail() -> None:
    rng = random.Random(7)
    draws = [sample_frame_time(rng, 0.2, "pareto", 2.5) for _ in range(200_000)]
    assert statistics.fmean(draws) == pytest.approx(0.2, rel=0.03)
    assert min(draws) >= 0.2 * 1.5 / 2.5  # the scale: no frame is quicker
    assert max(draws) > 5 * 0.2
    assert statistics.median(draws) < 0.2


def test_lognormal_frame_times_average_the_frame_time_with_the_median_below() -> None:
    rng = random.Random(8)
    draws = [sample_frame_time(rng, 0.2, "lognormal", 0.5) for _ in range(100_000)]
    assert statistics.fmean(draws) == pytest.approx(0.2, rel=0.02)
    assert statistics.median(draws) == pytest.approx(0.2 * math.exp(-0.125), rel=0.02)


@pytest.mark.parametrize(
    ("dist", "light", "heavy"), [("pareto", 5.0, 1.5), ("lognormal", 0.2, 1.0)]
)
def test_the_tail_knob_shapes_the_tail(dist: str, light: float, heavy: float) -> None:
    def p999(tail: float) -> float:
        rng = random.Random(9)
        draws = sorted(sample_frame_time(rng, 1.0, dist, tail) for _ in range(50_000))
        return draws[int(len(draws) * 0.999)]

    assert p999(heavy) > 2 * p999(light)


def test_fixed_frame_times_draw_as_before() -> None:
    rng = random.Random(3)
    state = rng.getstate()
    assert sample_frame_time(rng, 0.5) == 0.5
    assert rng.getstate() == state  # no jitter, no draw: seeded runs keep their sequences
    expected = 0.5 + random.Random(3).uniform(-0.1, 0.1)
    assert sample_frame_time(rng, 0.5, jitter=0.1) == expected
    assert sample_frame_time(random.Random(4), 0.01, jitter=5.0) >= 0.0


def test_the_default_tail_is_used_when_none_is_given() -> None:
    assert SimulatorConfig(frame_time_dist="pareto").frame_time_shape == 2.5
    assert SimulatorConfig(frame_time_dist="lognormal").frame_time_shape == 0.5
    assert SimulatorConfig(frame_time_dist="pareto", tail=1.2).frame_time_shape == 1.2
    assert SimulatorConfig().frame_time_shape is None


# ---------------------------------------------------------------- who gets which profile


def test_shares_pick_exactly_that_many_users_the_same_for_a_seed() -> None:
    ids = [f"u{i:02d}" for i in range(20)]
    config = SimulatorConfig(
        seed=5, slow_share=0.1, slow_factor=3, stall_share=0.25, slowdown_share=0.5,
        slowdown_factor=2, slowdown_after=4,
    )  # fmt: skip
    profiles = assign_profiles(ids, config)
    assert assign_profiles(ids, config) == profiles
    assert sum(p.slow_factor == 3 for p in profiles.values()) == 2
    assert sum(p.stall_after is not None for p in profiles.values()) == 5
    assert sum(p.slowdown_after == 4 for p in profiles.values()) == 10

    def slow_users(seed: int) -> frozenset[str]:
        config = SimulatorConfig(seed=seed, slow_share=0.1, slow_factor=3)
        return frozenset(u for u, p in assign_profiles(ids, config).items() if p.slow_factor == 3)

    assert len({slow_users(seed) for seed in range(6)}) > 1  # the seed chooses them


def test_profiles_leave_a_seeded_runs_other_draws_alone(make_sim: MakeSim) -> None:
    knobs = {"broker_url": "memory://", "users": 10, "seed": 42, "disconnect_share": 0.3}
    knobs["early_complete_share"] = 0.5

    def plan(sim: Simulator) -> dict[str, tuple[object, object]]:
        users = sim.state()["users"]
        return {u: (s["disconnects_after"], s["early_complete"]) for u, s in users.items()}

    plain = plan(make_sim(**knobs))
    profiled = make_sim(**knobs, slow_share=0.3, slow_factor=2, stall_share=0.2, stall_after=1)
    assert plan(profiled) == plain
    users = profiled.state()["users"]
    assert sorted(s["speed_factor"] for s in users.values()) == [1.0] * 7 + [2.0] * 3
    assert sum(s["stalls_after"] == 1 for s in users.values()) == 2
    assert not any(s["stalled"] for s in users.values())


# ---------------------------------------------------------------- behaviour on a virtual clock


def test_slow_users_take_the_factor_times_longer_over_each_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    farm = VirtualFarm(tmp_path, monkeypatch, users=4, slow_share=0.5, slow_factor=3)
    users = farm.start_all(frames=6)
    farm.run()

    slow = [u for u in users if farm.state(u)["speed_factor"] == 3]
    assert len(slow) == 2
    for user in users:
        expected = 3.0 if user in slow else 1.0
        assert intervals(farm.frame_times(user)) == [expected] * 6
        assert farm.topics(user)[-1] == "user-rendering-completed"


def test_heavy_tailed_slow_users_average_the_factor_times_the_frame_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    farm = VirtualFarm(
        tmp_path, monkeypatch, users=2, slow_share=0.5, slow_factor=2,
        frame_time_dist="pareto", tail=3.0,
    )  # fmt: skip
    users = farm.start_all(frames=3000)
    farm.run()

    means = {u: statistics.fmean(intervals(farm.frame_times(u))) for u in users}
    slow, fast = sorted(users, key=lambda u: farm.state(u)["speed_factor"], reverse=True)
    assert means[fast] == pytest.approx(1.0, rel=0.1)
    assert means[slow] / means[fast] == pytest.approx(2.0, rel=0.15)
    assert len(set(intervals(farm.frame_times(fast)))) > 100  # drawn, not fixed


def test_a_user_slows_down_after_its_seconds_of_rendering_not_of_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    farm = VirtualFarm(
        tmp_path, monkeypatch, users=2, slowdown_share=0.5, slowdown_factor=4, slowdown_after=3,
    )  # fmt: skip
    farm.run(until=50.0)  # idle for a while: that is no rendering
    users = farm.start_all(frames=6)
    slowing = next(u for u in users if farm.state(u)["slows_down_after"] == 3)
    steady = next(u for u in users if u != slowing)
    assert farm.state(slowing)["speed_factor"] == 1.0
    farm.run()

    assert intervals(farm.frame_times(slowing))[1:] == [1.0, 1.0, 4.0, 4.0, 4.0]
    assert intervals(farm.frame_times(steady))[1:] == [1.0] * 5
    state = farm.state(slowing)
    assert (state["speed_factor"], state["render_seconds"]) == (4.0, 15.0)


def test_a_stalling_user_keeps_its_frames_and_never_delivers_or_disconnects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    farm = VirtualFarm(tmp_path, monkeypatch, users=3, stall_share=0.34, stall_after=3.5)
    users = farm.start_all(frames=10)
    [hung] = [u for u in users if farm.state(u)["stalls_after"] == 3.5]
    farm.run(until=3.4)
    assert not farm.state(hung)["stalled"]
    farm.run(until=1000.0)

    assert farm.topics(hung) == ["user-frame-rendered"] * 3
    state = farm.state(hung)
    assert (state["stalled"], state["status"]) == (True, "rendering")
    assert (state["queue_length"], state["rendered_frames"]) == (7, farm.lists[hung][:3])
    assert state["render_seconds"] == 3.5
    for other in set(users) - {hung}:
        assert farm.topics(other) == ["user-frame-rendered"] * 10 + ["user-rendering-completed"]

    # It hears nothing more: no answer to an acknowledged call, nothing done on the others.
    with pytest.raises(NoAnswer):
        farm.pool.deliver(hung, "retrieve-frame", {"frame-number": 1000})
    assert farm.pool.deliver(hung, "stop-work", {}) is True
    assert farm.pool.deliver(hung, "start-rendering", {"frame_list": [5]}) is True
    farm.run()
    assert farm.topics(hung) == ["user-frame-rendered"] * 3
    assert farm.state(hung)["queue_length"] == 7
    assert [e["kind"] for e in farm.pool.timeline() if e["user_id"] == hung][-1] == "stall"


def test_profiles_combine_with_disconnects_and_late_joiners(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    farm = VirtualFarm(
        tmp_path, monkeypatch, users=8, seed=3, join_batch=2, join_delay=5.0,
        disconnect_share=0.5, slow_share=0.5, slow_factor=2, stall_share=0.25, stall_after=0.5,
    )  # fmt: skip
    assert len(farm.pool.idle()) == 2  # real peers: the others connect later
    farm.run(until=30.0)
    assert len(farm.pool.connect_next(6)) == 6
    users = farm.start_all(frames=5)
    farm.run()

    assert len(users) == 8
    for user in users:
        state, topics = farm.state(user), farm.topics(user)
        if state["stalls_after"] is not None:  # hangs in its first frame, before any disconnect
            assert (topics, state["stalled"], state["status"]) == ([], True, "rendering")
            continue
        frames = intervals(farm.frame_times(user), start=30.0)
        assert set(frames) == {state["speed_factor"]}
        if state["disconnects_after"] is not None:
            assert topics == ["user-frame-rendered"] * state["disconnects_after"] + [
                "user-disconnected"
            ]
            assert state["status"] == "disconnected"
        else:
            assert topics == ["user-frame-rendered"] * 5 + ["user-rendering-completed"]
    kinds = {(farm.state(u)["speed_factor"], farm.state(u)["stalled"]) for u in users}
    assert {(1.0, False), (2.0, False)} <= kinds
    assert any(farm.state(u)["status"] == "disconnected" for u in users)


# ---------------------------------------------------------------- the real simulator


def test_a_slow_user_renders_slower_in_real_time(make_sim: MakeSim) -> None:
    sim = make_sim(broker_url="memory://", users=2, seed=5, slow_share=0.5, slow_factor=4)
    users = sim.users.take_idle(2, SESSION)
    for index, user in enumerate(users):
        frames = list(range(index * 100, index * 100 + 15))
        data = {"blend_file_hash": HASH, "frame_list": frames}
        body = {"user_id": user, "topic": "start-rendering", "data": data}
        assert requests.post(sim.base_url + SEND, json=body, timeout=5).status_code == 200

    def all_uploaded() -> dict[str, list[float]] | None:
        times: dict[str, list[float]] = {u: [] for u in users}
        for entry in sim.user_timeline():
            if entry["kind"] == "upload":
                times[entry["user_id"]].append(entry["t"])
        return times if all(len(t) == 15 for t in times.values()) else None

    times = sim.wait_until(all_uploaded)
    pace = {u: (t[-1] - t[0]) / 14 for u, t in times.items()}
    factors = {u: s["speed_factor"] for u, s in sim.state()["users"].items()}
    slow, fast = sorted(users, key=factors.__getitem__, reverse=True)
    assert (factors[slow], factors[fast]) == (4.0, 1.0)
    assert 2.0 < pace[slow] / pace[fast] < 8.0


@pytest.mark.parametrize("peer_mode", ["real", "ideal"])
def test_a_hung_user_over_http(make_sim: MakeSim, peer_mode: str) -> None:
    sim = make_sim(
        broker_url="memory://", users=1, stall_share=1.0, stall_after=0.0, peer_mode=peer_mode
    )
    [user] = sim.users.take_idle(1, SESSION)
    start = {"user_id": user, "topic": "start-rendering", "data": {"frame_list": [1, 2, 3]}}
    assert requests.post(sim.base_url + SEND, json=start, timeout=5).status_code == 200

    def hung() -> dict[str, Any] | None:
        state = sim.state()["users"][user]
        return state if state["stalled"] else None

    state = sim.wait_until(hung)
    assert (state["status"], state["queue_length"], state["frames_done"]) == ("rendering", 3, 0)

    ask = {"user_id": user, "topic": "retrieve-frame", "data": {"frame-number": 1}}
    answer = requests.post(sim.base_url + SEND_ACK, json=ask, timeout=5)
    assert (answer.status_code, answer.json()) == (500, {"detail": "Internal Server Error"})
    stop = {"user_id": user, "topic": "stop-work", "data": {}}
    assert requests.post(sim.base_url + SEND, json=stop, timeout=5).status_code == 200
    assert sim.state()["users"][user]["queue_length"] == 3
    assert sim.temp_keys() == []


# ---------------------------------------------------------------- knobs


@pytest.mark.parametrize(
    ("knobs", "named"),
    [
        ({"slow_share": 1.5}, "slow_share"),
        ({"slowdown_share": -0.1}, "slowdown_share"),
        ({"stall_share": 2}, "stall_share"),
        ({"slow_factor": 0.5}, "slow_factor"),
        ({"slowdown_factor": float("nan")}, "slowdown_factor"),
        ({"slowdown_after": -1}, "slowdown_after"),
        ({"stall_after": float("inf")}, "stall_after"),
        ({"frame_time_dist": "uniform"}, "frame_time_dist"),
        ({"tail": 2.0}, "tail"),
        ({"frame_time_dist": "lognormal", "tail": 0.0}, "sigma"),
        ({"frame_time_dist": "pareto", "tail": 1.0}, "alpha"),
        ({"frame_time_dist": "pareto", "tail": float("nan")}, "tail"),
        ({"frame_time_dist": "lognormal", "jitter": 0.1}, "jitter"),
    ],
)
def test_bad_profile_knobs_are_refused_by_name(knobs: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        SimulatorConfig(**knobs)


def test_profiles_are_off_by_default() -> None:
    config = SimulatorConfig(users=4)
    profiles = assign_profiles([f"u{i}" for i in range(4)], config)
    assert {(p.speed_factor(1e9), p.stall_after) for p in profiles.values()} == {(1.0, None)}
    assert config.frame_time_dist == "fixed"
