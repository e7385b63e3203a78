"""stragglers: speculative re-render of straggling frames, on against off, on the whole stack.

    .venv/bin/python -m bench --only stragglers             # 3 seeds: 18 runs, ~7 minutes
    .venv/bin/python -m bench --only stragglers --rounds 1  # 1 seed: 6 runs, ~2.5 minutes
    .venv/bin/python -m bench --only stragglers --smoke     # small farms, 1 seed, ~2 minutes

Opt-in: `python -m bench` without `--only` leaves it out (its runs wait out a hung user).
Add `--output var/bench-stragglers/results.json` to keep bench/results.json of other runs.

Each run is a fresh platform (tests/stack.py, as bench/eta.py's: release, web, worker and
beat on real Postgres, Redis and RabbitMQ, the simulator playing the peers and the users),
since the farm is the simulator's configuration. For each seed and farm the bench runs
speculation off (SPECULATIVE_EXTRA_PERCENT=0) and on (=10, SPECULATE_AFTER_PACES at its
default), in turn, the order swapped every other seed so a drift of the machine's load
weighs on both.

Farms (20 users, 500 frames of 0.3 s ± 0.03 s: 25 frames a user, a run of about 10 s):
- A: 2 users 10 times slower (slow_share 0.1, slow_factor 10).
- B: A, and one user (stall_share 0.05) hanging after 1.2 s of rendering (4 frames): it
  keeps its frames and its connection and never answers again.
- C: every user as fast.
Which users are slow or hang is drawn from the seed, independently (simulator/profiles.py),
so a hung user may be a slow one, hanging in its first frame; both modes of a seed have the
same users.

Supervisor settings, for both modes: REBALANCE_INTERVAL_SECONDS=1 and
RECLAIM_INTERVAL_SECONDS=1 (the defaults, 10 s, are a run's length). STALL_SECONDS=30 and
STALE_FRAME_SECONDS=30: a hung user's frames are reclaimed once it is silent for
max(STALL_SECONDS, 10 of its frame times), or for max(STALL_SECONDS, STALE_FRAME_SECONDS)
when it has delivered none. 30 s is three times a run, so without speculation farm B waits
for that rule; the default 900 s would stop at the deadline a run whose hung user is a slow
one (hung in its first frame).

Per run, from the supervisor's timeline (workload_events, the database's clock): the
makespan, `started` to `completed`. From the simulator: extra renders (the users'
`upload`s beyond one per frame, a speculation's loser included when it finished; off too,
where a tail moved to an idle user is also rendered by its donor, who is not told), frames
stored twice (store-image calls per final key, more than one) and frames lost (of the
frame range, those not in the final bucket). The supervisor's own count of speculative
copies is its timeline's `frame-duplicated` events; every kind's count is in the JSON.

A farm's goal is met when the median makespan on over the median makespan off is at most
its ratio (A 0.6, B 0.5, C 1.05 with extra renders at most 5 % of the frames), no frame is
lost and none is stored twice. The ideal makespan, for comparison: the frames, less those the
hung user delivers before it hangs, times the frame time, over the users that do not hang,
a slow user counting 1/slow_factor. The raw runs go to var/bench-stragglers/runs.<mode>.json.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from bench.eta import Farm, blend_file, last_stored_at, nodes
from bench.harness import Options, Row, at_most, log, machine_facts, ratio_at_most
from simulator.blobs import FRAMES_BUCKET
from simulator.config import SimulatorConfig
from simulator.profiles import Profile, assign_profiles
from supervisor.timeline import Kind
from tests.stack import ROOT, platform

OUTPUT_DIR = ROOT / "var" / "bench-stragglers"
FULL_SEEDS = 3
FRAME_TIME = 0.3
# Both modes: the periodic work reacts within a second, and a hung user's frames are
# reclaimed only after 30 s (the docstring says why).
SUPERVISOR_ENV = {
    "REBALANCE_INTERVAL_SECONDS": "1",
    "RECLAIM_INTERVAL_SECONDS": "1",
    "STALL_SECONDS": "30",
    "STALE_FRAME_SECONDS": "30",
}
MODES = {
    "off": {"SPECULATIVE_EXTRA_PERCENT": "0"},
    "on": {"SPECULATIVE_EXTRA_PERCENT": "10"},
}
# After `completed`, time for a loser's upload or store already under way to land.
GRACE_SECONDS = 2.0


@dataclass(frozen=True)
class Goal:
    """Makespan on / off at most `ratio`; extra renders (on) at most `extra_percent` of the
    frames when given."""

    ratio: float
    extra_percent: float | None = None

    @property
    def label(self) -> str:
        extra = "" if self.extra_percent is None else f", extra renders <= {self.extra_percent:g} %"
        return f"<= {self.ratio:g}{extra}"


_SLOW = {"slow_share": 0.1, "slow_factor": 10.0}
_BASE = {"users": 20, "frame_time": FRAME_TIME, "jitter": 0.1 * FRAME_TIME}
FARMS = (
    Farm("A", 500, {**_BASE, **_SLOW}, 20),
    Farm("B", 500, {**_BASE, **_SLOW, "stall_share": 0.05, "stall_after": 4 * FRAME_TIME}, 20),
    Farm("C", 500, dict(_BASE), 20),
)
GOALS = {"A": Goal(0.6), "B": Goal(0.5), "C": Goal(1.05, extra_percent=5.0)}


def smoke_farm(farm: Farm) -> Farm:
    """The same farm, small: 10 users of 0.1 s frames, 100 frames (one slow user, one hung
    in B), a run of a few seconds."""
    knobs = {**farm.knobs, "users": 10, "frame_time": 0.1, "jitter": 0.01}
    if "stall_after" in knobs:
        knobs["stall_after"] = 0.4
    return Farm(farm.name, 100, knobs, 10)


# --- what a run measures ----------------------------------------------------------------


@dataclass
class RunResult:
    farm: str
    mode: str
    seed: int
    frames: int
    status: str
    makespan: float  # seconds, the timeline's `started` to `completed`
    last_stored: float  # seconds, `started` to the last frame stored
    ideal: float
    uploads: int
    extra_renders: int
    stored_twice: int
    lost: int
    rendered_again: dict[int, list[str]] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)  # the timeline's, by kind
    # What each simulated user did (bench.eta.nodes): lists, uploads, longest silence.
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def extra_percent(self) -> float:
        return 100 * self.extra_renders / self.frames

    @property
    def duplicated(self) -> int:
        """Frames the supervisor handed out a second time, by its timeline."""
        return self.events.get(Kind.FRAME_DUPLICATED.value, 0)


@dataclass(frozen=True)
class Tally:
    uploads: int
    extra_renders: int
    stored_twice: int
    lost: int
    # Frames rendered more than once: the users that uploaded each, in order.
    rendered_again: dict[int, list[str]]


def tally(
    frames: int,
    timeline: Iterable[Mapping[str, Any]],
    store_calls: Mapping[int, int],
    stored: Iterable[int],
) -> Tally:
    """Uploads and the renders beyond one per frame, from the users' timeline; frames with
    more than one store-image call; frames of 1..`frames` not in the final store."""
    by_frame: dict[int, list[str]] = {}
    for entry in timeline:
        if entry["kind"] == "upload":
            by_frame.setdefault(entry["frame"], []).append(entry["user_id"])
    return Tally(
        uploads=sum(len(users) for users in by_frame.values()),
        extra_renders=sum(len(users) - 1 for users in by_frame.values()),
        stored_twice=sum(1 for count in store_calls.values() if count > 1),
        lost=len(set(range(1, frames + 1)) - set(stored)),
        rendered_again={frame: users for frame, users in by_frame.items() if len(users) > 1},
    )


def makespan_of(events: Sequence[tuple[str, float]]) -> float:
    """Seconds from the first `started` to the first `completed` of (kind, epoch) events;
    ValueError when the workload has not both."""
    started = next((at for kind, at in events if kind == "started"), None)
    completed = next((at for kind, at in events if kind == "completed"), None)
    if started is None or completed is None:
        raise ValueError(f"no started and completed in {sorted({k for k, _ in events})}")
    return completed - started


def ideal_makespan(frames: int, frame_time: float, profiles: Iterable[Profile]) -> float:
    """Seconds to render `frames` with every user busy to the end: a user renders one frame
    per frame_time * slow_factor; a hung one only until its `stall_after` seconds."""
    rate = 0.0
    delivered = 0.0
    for profile in profiles:
        per_frame = frame_time * profile.slow_factor
        if profile.stall_after is None:
            rate += 1 / per_frame
        else:
            delivered += profile.stall_after / per_frame
    if rate == 0:
        raise ValueError("no user renders to the end")
    return max(0.0, frames - delivered) / rate


def farm_profiles(farm: Farm, seed: int) -> list[Profile]:
    """The users' profiles the simulator draws for this farm and seed."""
    config = SimulatorConfig(**farm.knobs, seed=seed, demo_blend=None)
    ids = [f"{config.user_prefix}-{index:03d}" for index in range(1, config.users + 1)]
    return list(assign_profiles(ids, config).values())


# --- one run ----------------------------------------------------------------------------


_EVENTS = text(
    "SELECT e.kind, CAST(EXTRACT(EPOCH FROM e.at) AS float8) FROM workload_events e "
    "JOIN workloads w ON w.id = e.workload_id WHERE w.customer_id = :customer ORDER BY e.id"
)


def _events(database_url: str, customer: str) -> list[tuple[str, float]]:
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            rows = connection.execute(_EVENTS, {"customer": customer}).all()
    finally:
        engine.dispose()
    return [(kind, at) for kind, at in rows]


def order_of(seed: int) -> tuple[str, str]:
    """The modes' order for a seed: swapped every other seed."""
    return ("off", "on") if seed % 2 else ("on", "off")


def one_run(farm: Farm, mode: str, seed: int, workdir: Path) -> RunResult:
    """Start one workload on a fresh platform, wait for `completed` and read the figures."""
    customer = f"strag-{farm.name}-{mode}-{seed}"
    ideal = ideal_makespan(farm.frames, farm.knobs["frame_time"], farm_profiles(farm, seed))
    with tempfile.TemporaryDirectory(prefix="bench-stragglers-", dir=workdir) as folder:
        tmp = Path(folder)
        blend = blend_file(tmp, farm.frames)
        with platform(tmp, **farm.knobs, seed=seed) as stack:
            stack.env.update(SUPERVISOR_ENV)
            stack.env.update(MODES[mode])
            stack.env["INITIAL_USER_COUNT"] = str(farm.initial_users)
            stack.start("web", "worker", "beat")
            stack.start_workload(customer, blend)
            try:
                status = stack.wait_completed(customer, timeout=90 + 4 * ideal)
            except Exception as exc:
                raise RuntimeError(f"{customer}: {exc}\n{stack.logs()}") from exc
            time.sleep(GRACE_SECONDS)
            database_url = stack.env["DATABASE_URL"]
            events = _events(database_url, customer)
            last_stored = last_stored_at(database_url, customer)
            timeline = stack.simulator.user_timeline()
            store_calls = stack.simulator.store_calls(customer, "obj")
            stored = stored_numbers(stack.simulator.blob_keys(FRAMES_BUCKET), customer)
    counts = tally(farm.frames, timeline, store_calls, stored)
    started = next(at for kind, at in events if kind == "started")
    return RunResult(
        farm=farm.name,
        mode=mode,
        seed=seed,
        frames=farm.frames,
        status=status.get("workload_status", "?"),
        makespan=makespan_of(events),
        last_stored=last_stored - started,
        ideal=ideal,
        uploads=counts.uploads,
        extra_renders=counts.extra_renders,
        stored_twice=counts.stored_twice,
        lost=counts.lost,
        rendered_again=counts.rendered_again,
        events=dict(Counter(kind for kind, _ in events)),
        nodes=nodes(timeline),
    )


def stored_numbers(keys: Iterable[str], customer: str) -> set[int]:
    """Frame numbers of the final keys `<customer>/obj/<number>.<ext>`."""
    prefix = f"{customer}/obj/"
    found = set()
    for key in keys:
        stem = key[len(prefix) :].split(".", 1)[0] if key.startswith(prefix) else ""
        if stem.lstrip("-").isdigit():
            found.add(int(stem))
    return found


# --- summary and report -----------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """One farm over its seeds: makespans on and off, and what speculation cost."""

    farm: str
    seeds: tuple[int, ...]
    on: tuple[float, ...]
    off: tuple[float, ...]
    # Renders beyond one per frame, % of the frames, of the runs on and off: off, the tails
    # moved from one user to another are rendered by both (the donor is not told).
    extra_on: float
    extra_off: float
    duplicated: int  # the supervisor's speculative copies, every run on
    stored_twice: int  # every run's
    lost: int  # every run's
    ideal: float  # median over the seeds
    goal: Goal

    @property
    def on_median(self) -> float:
        return statistics.median(self.on)

    @property
    def off_median(self) -> float:
        return statistics.median(self.off)

    @property
    def ratio(self) -> float:
        return self.on_median / self.off_median

    @property
    def met(self) -> bool:
        extra_ok = self.goal.extra_percent is None or self.extra_on <= self.goal.extra_percent
        return (
            self.ratio <= self.goal.ratio and extra_ok and not self.lost and not self.stored_twice
        )


def summarise(runs: Sequence[RunResult], goals: Mapping[str, Goal] = GOALS) -> list[Summary]:
    """One summary per farm, in the order the farms first ran."""
    by_farm: dict[str, list[RunResult]] = {}
    for run in runs:
        by_farm.setdefault(run.farm, []).append(run)
    out = []
    for name, farm_runs in by_farm.items():
        on = [r for r in farm_runs if r.mode == "on"]
        off = [r for r in farm_runs if r.mode == "off"]
        if not on or not off:
            raise ValueError(f"farm {name} needs runs on and off")
        out.append(
            Summary(
                farm=name,
                seeds=tuple(sorted({r.seed for r in farm_runs})),
                on=tuple(r.makespan for r in on),
                off=tuple(r.makespan for r in off),
                extra_on=_extra_percent(on),
                extra_off=_extra_percent(off),
                duplicated=sum(r.duplicated for r in on),
                stored_twice=sum(r.stored_twice for r in farm_runs),
                lost=sum(r.lost for r in farm_runs),
                ideal=statistics.median(r.ideal for r in off),
                goal=goals[name],
            )
        )
    return out


def _extra_percent(runs: Sequence[RunResult]) -> float:
    return 100 * sum(r.extra_renders for r in runs) / sum(r.frames for r in runs)


def report_table(summaries: Sequence[Summary]) -> str:
    """The farms in Markdown: medians, the ratio against its goal, what speculation cost."""
    header = (
        "| farm | seeds | makespan on (median) | makespan off (median) | ideal | ratio on/off "
        "| goal | extra renders on / off | duplicated (on) | stored twice | lost | met |"
    )
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for s in summaries:
        seeds = ",".join(str(seed) for seed in s.seeds)
        lines.append(
            f"| {s.farm} | {seeds} | {s.on_median:.1f} s | {s.off_median:.1f} s "
            f"| {s.ideal:.1f} s | {s.ratio:.2f} | {s.goal.label} "
            f"| {s.extra_on:.1f} % / {s.extra_off:.1f} % | {s.duplicated} "
            f"| {s.stored_twice} | {s.lost} | {'met' if s.met else 'missed'} |"
        )
    return "\n".join(lines)


def rows_of(summaries: Sequence[Summary], runs: Sequence[RunResult]) -> list[Row]:
    rows = []
    for s in summaries:
        rows.append(
            Row(
                "stragglers",
                f"makespan on vs off, farm {s.farm}",
                "s",
                list(s.on),
                list(s.off),
                [ratio_at_most(s.goal.ratio)],
                f"seeds {','.join(map(str, s.seeds))}; ideal {s.ideal:.1f} s",
            )
        )
        if s.goal.extra_percent is not None:
            rows.append(
                Row(
                    "stragglers",
                    f"  extra renders (on), farm {s.farm}",
                    "%",
                    [r.extra_percent for r in runs if r.farm == s.farm and r.mode == "on"],
                    None,
                    [at_most(s.goal.extra_percent, f"<= {s.goal.extra_percent:g} %")],
                    "uploads beyond one per frame, % of the frames",
                )
            )
    # Totals, not medians: one frame stored twice or lost in any run is a miss.
    for measure, total in (
        ("frames stored twice, all runs", sum(r.stored_twice for r in runs)),
        ("frames lost, all runs", sum(r.lost for r in runs)),
    ):
        rows.append(
            Row("stragglers", measure, "", [total], None, [at_most(0, "0")], f"{len(runs)} runs")
        )
    return rows


# --- the bench --------------------------------------------------------------------------


def write_runs(
    path: Path, runs: Sequence[RunResult], summaries: Sequence[Summary], mode: str
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "mode": mode,
        "machine": machine_facts(),
        "supervisor_env": SUPERVISOR_ENV,
        "modes": MODES,
        "farms": {farm.name: asdict(farm) for farm in FARMS},
        "summaries": [
            {
                **asdict(s),
                "on_median": s.on_median,
                "off_median": s.off_median,
                "ratio": s.ratio,
                "met": s.met,
            }
            for s in summaries
        ],
        "runs": [
            {**asdict(run), "extra_percent": run.extra_percent, "duplicated": run.duplicated}
            for run in runs
        ],
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")


def _log_run(run: RunResult, seconds: float) -> None:
    log(
        f"stragglers {run.farm} {run.mode:>3} seed {run.seed}: {run.status}, makespan "
        f"{run.makespan:.1f}s (last stored {run.last_stored:.1f}s, ideal {run.ideal:.1f}s), "
        f"{run.uploads} uploads ({run.extra_renders} extra), {run.duplicated} duplicated, "
        f"{run.stored_twice} stored twice, "
        f"{run.lost} lost; {seconds:.1f}s with the stack"
    )


def run(opts: Options) -> list[Row]:
    farms = [smoke_farm(f) for f in FARMS] if opts.smoke else list(FARMS)
    # --rounds is the number of seeds.
    seeds = range(1, opts.rounds_or(FULL_SEEDS) + 1)
    runs: list[RunResult] = []
    for seed in seeds:
        for farm in farms:
            for mode in order_of(seed):
                began = time.perf_counter()
                result = one_run(farm, mode, seed, opts.workdir)
                runs.append(result)
                _log_run(result, time.perf_counter() - began)
    mode = "smoke" if opts.smoke else "full"
    summaries = summarise(runs)
    path = OUTPUT_DIR / f"runs.{mode}.json"
    write_runs(path, runs, summaries, mode)
    print(f"\nSpeculative re-render ({mode}, raw runs in {path.relative_to(ROOT)}):\n")
    print(report_table(summaries) + "\n")
    return rows_of(summaries, runs)
