"""Calibrate supervisor.eta on farms played in virtual time: seconds to run, no services.

    .venv/bin/python -m bench.eta_model                    # the five farms, seeds 0-11
    .venv/bin/python -m bench.eta_model --seeds 100-139    # seeds the constants were not set on
    .venv/bin/python -m bench.eta_model --farm churn --seeds 3 --verbose
    .venv/bin/python -m bench.eta_model --no-list-start    # as if list starts were not stored

The constants of supervisor/eta.py were set on seeds 0-11 and checked on 100-139 and
300-349.

The model follows the supervisor's rules: lists are cut by supervisor.scheduling
(list_sizes, split_runs, steal_plan, stolen_lists) whenever a user holding nothing is
involved in a batch of uploads, joins, or at the 10 s rebalance; a user gets a list only
once every frame of its list is in; a steal moves frames in the database but does not tell
the donor's node, which renders its whole list (the first upload of a frame wins, a later
one is a duplicate and is not counted); a new list replaces a node's queue; a disconnected
user's frames go back to the pending pool and a replacement is asked for. Uploads arrive
after a fixed pipeline latency and are handled in batches; each sender with a claimed frame
in a batch counts one interval (the time since its last counted upload or since its list
was delivered) and folds it once, divided by the frames it claimed in the batch, as
supervisor/frames/claims.py does; the first interval after a list start is not folded
(it goes to eta.fold_list_start instead). Users never hang and frames never fail (the
silent-user reclaim is not modelled). At each 10 % of progress eta.estimate is asked, and
its answer compared with when the last frame actually came in.

The table: coverage is the share of checkpoints whose 80 % interval holds the actual
remaining time (a "warming-up" answer counts as a miss); below / above count the misses by
side; MAE@50% is the median |central - actual| / actual at the 50 % checkpoint; width is
the mean (high - low) / actual.

Farms (frames 300-1000, users 10-20, a typical frame 1-10 s, per-list start-up 2-5 s,
frames a little uneven along the scene and each render +-10 % noisy):
- uniform: every user about as fast (x0.8-1.25).
- slow-20: a fifth of the users five times slower.
- slowdown: 40 % of the users become two times slower somewhere between 40 % and 60 % of
  the workload.
- churn: 5 users at the start, the others (to 16) join over the first third of the run; a
  quarter of them disconnect later, each replaced by a new user 30-90 s later.
- heavy-tail: frame costs Pareto-distributed (alpha 2.2, at most 12 times the lightest).
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from supervisor import eta  # noqa: E402
from supervisor.scheduling import list_sizes, split_runs, steal_plan, stolen_lists  # noqa: E402

CAP = 50  # max_frames_per_assignment
UPLOAD_LATENCY = 0.15  # a render's end to its upload being handled
BATCH_SECONDS = 0.2  # uploads arriving together are handled in one batch
LIST_LATENCY = 0.1  # a list decided to its delivery (the outbox drain)
START_UP = (2.0, 5.0)  # seconds from a list's delivery to its first frame (the blend download)
REBALANCE_SECONDS = 10.0
CHECKPOINTS = tuple(range(10, 100, 10))
FARMS = ("uniform", "slow-20", "slowdown", "churn", "heavy-tail")


@dataclass
class UserSpec:
    name: str
    factor: float  # its speed: seconds per unit of frame cost, relative to the farm's
    join_at: float = 0.0
    leave_at: float | None = None
    slow_at_progress: float | None = None  # it slows down once this share is rendered
    slow_factor: float = 1.0
    replaced: bool = False  # a replacement joins after it leaves


@dataclass
class Scenario:
    farm: str
    seed: int
    frames: int
    base: float  # seconds per frame of a unit-speed user on a unit-cost frame
    costs: list[float]
    users: list[UserSpec]
    target_users: int


@dataclass
class User:
    spec: UserSpec
    active: bool = False
    held: set[int] = field(default_factory=set)
    clock_at: float | None = None
    fresh_list: bool = False
    frames_done: int = 0
    busy_seconds: float = 0.0
    pace: float | None = None
    spread: float | None = None
    samples: int = 0
    list_start: float | None = None
    generation: int = 0
    queue: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Checkpoint:
    progress: int
    remaining: float  # actual seconds until the last frame came in
    answer: eta.Estimate


@dataclass
class Run:
    scenario: Scenario
    checkpoints: list[Checkpoint]
    duration: float


def scenario(farm: str, seed: int, frames: int | None = None) -> Scenario:
    """One farm drawn from its seed (`frames` overrides its size)."""
    rng = random.Random(f"{farm}:{seed}")
    drawn = rng.randint(300, 1000)
    frames = frames or drawn
    count = rng.randint(10, 20)
    base = math.exp(rng.uniform(math.log(1.0), math.log(10.0)))
    phase, wave = rng.uniform(0, 2 * math.pi), rng.uniform(1, 3)
    costs = [1 + 0.1 * math.sin(phase + wave * 2 * math.pi * i / frames) for i in range(frames)]
    if farm == "heavy-tail":
        costs = [c * min(12.0, rng.paretovariate(2.2)) / 1.3 for c in costs]
    users = [UserSpec(f"u{i:03d}", rng.uniform(0.8, 1.25)) for i in range(count)]
    target = count
    if farm == "slow-20":
        for spec in rng.sample(users, max(1, round(count * 0.2))):
            spec.factor *= 5
    elif farm == "slowdown":
        for spec in rng.sample(users, max(1, round(count * 0.4))):
            spec.slow_at_progress, spec.slow_factor = rng.uniform(0.4, 0.6), 2.0
    elif farm == "churn":
        target = 16
        users = users[:target] + [
            UserSpec(f"u{i:03d}", rng.uniform(0.8, 1.25)) for i in range(len(users), target)
        ]
        nominal = frames * base / target
        for spec in users[5:]:
            spec.join_at = rng.uniform(0, nominal / 3)
        for spec in rng.sample(users, target // 4):
            spec.leave_at = spec.join_at + rng.uniform(0.2, 0.8) * nominal
            spec.replaced = True
    elif farm != "uniform" and farm != "heavy-tail":
        raise ValueError(f"unknown farm {farm!r}")
    return Scenario(farm, seed, frames, base, costs, users, target)


class Model:
    """One farm played in virtual time."""

    def __init__(
        self,
        scn: Scenario,
        estimator: Callable[..., eta.Estimate] = eta.estimate,
        fold: Callable[..., tuple[float, float, int]] = eta.fold,
        *,
        list_starts: bool = True,
    ) -> None:
        self.scn = scn
        self.rng = random.Random(f"run:{scn.farm}:{scn.seed}")
        self.estimator, self.fold = estimator, fold
        self.list_starts = list_starts
        self.now = 0.0
        self.events: list[tuple[float, int, str, tuple]] = []
        self.sequence = 0
        self.users: dict[str, User] = {}
        self.pending = set(range(scn.frames))
        self.holder: dict[int, str] = {}
        self.rendered: set[int] = set()
        self.arrivals: dict[float, list[tuple[str, int]]] = {}
        self.asked: list[tuple[int, float, eta.Estimate]] = []
        self.spares = 0

    # ---------------------------------------------------------------- plumbing

    def at(self, time: float, kind: str, *args: object) -> None:
        self.sequence += 1
        heapq.heappush(self.events, (time, self.sequence, kind, args))

    def run(self) -> Run:
        for spec in self.scn.users:
            self.at(spec.join_at, "join", spec)
            if spec.leave_at is not None:
                self.at(spec.leave_at, "leave", spec.name)
        self.at(REBALANCE_SECONDS, "rebalance")
        while self.events and len(self.rendered) < self.scn.frames:
            self.now, _, kind, args = heapq.heappop(self.events)
            getattr(self, f"on_{kind}")(*args)
        duration = self.now
        return Run(
            self.scn,
            [Checkpoint(p, duration - t, answer) for p, t, answer in self.asked],
            duration,
        )

    # ---------------------------------------------------------------- users and nodes

    def on_join(self, spec: UserSpec) -> None:
        self.users[spec.name] = User(spec, active=True)
        self.distribute(steal=True)

    def on_leave(self, name: str) -> None:
        user = self.users.get(name)
        if user is None or not user.active:
            return
        user.active = False
        user.generation += 1
        for frame in user.held:
            del self.holder[frame]
            self.pending.add(frame)
        user.held.clear()
        self.distribute(steal=False)
        if user.spec.replaced:
            self.spares += 1
            spec = UserSpec(f"r{self.spares:03d}", self.rng.uniform(0.8, 1.25))
            self.at(self.now + self.rng.uniform(30, 90), "join", spec)

    def on_list(self, name: str, frames: list[int]) -> None:
        """A start-rendering reaches the node: it drops what it was doing, fetches the
        blend, then renders the list in order."""
        user = self.users[name]
        if not user.active:
            return
        user.generation += 1
        user.queue = list(frames)
        user.clock_at = self.now
        self.at(self.now + self.rng.uniform(*START_UP), "render", name, user.generation)

    def on_render(self, name: str, generation: int) -> None:
        user = self.users[name]
        if generation != user.generation or not user.queue:
            return
        frame = user.queue.pop(0)
        spec = user.spec
        slow = (
            spec.slow_factor
            if spec.slow_at_progress is not None
            and len(self.rendered) >= spec.slow_at_progress * self.scn.frames
            else 1.0
        )
        seconds = self.scn.base * spec.factor * slow * self.scn.costs[frame]
        seconds *= math.exp(self.rng.gauss(0, 0.1))
        self.at(self.now + seconds, "rendered", name, generation, frame)

    def on_rendered(self, name: str, generation: int, frame: int) -> None:
        if generation != self.users[name].generation:
            return
        handled = math.ceil((self.now + UPLOAD_LATENCY) / BATCH_SECONDS) * BATCH_SECONDS
        if handled not in self.arrivals:
            self.arrivals[handled] = []
            self.at(handled, "batch", handled)
        self.arrivals[handled].append((name, frame))
        self.on_render(name, generation)

    # ---------------------------------------------------------------- the supervisor

    def on_batch(self, key: float) -> None:
        involved: set[str] = set()
        senders: Counter[str] = Counter()
        for name, frame in self.arrivals.pop(key):
            if frame in self.rendered:
                continue
            self.rendered.add(frame)
            self.pending.discard(frame)
            former = self.holder.pop(frame, None)
            if former is not None:
                self.users[former].held.discard(frame)
                involved.add(former)
            involved.add(name)
            senders[name] += 1
        for name in sorted(senders):
            self.count_work(self.users[name], senders[name])
        self.checkpoints()
        if any(not self.users[name].held for name in involved):
            self.distribute(steal=True)

    def count_work(self, user: User, frames: int) -> None:
        """As supervisor/frames/claims.py counts a sender's `frames` claimed in one batch:
        one interval, its time per frame folded once."""
        if user.clock_at is None:
            return
        interval = max(0.0, self.now - user.clock_at)
        user.frames_done += frames
        user.busy_seconds += interval
        user.clock_at = self.now
        if user.fresh_list:
            user.fresh_list = False
            user.list_start = eta.fold_list_start(user.list_start, interval)
            return
        user.pace, user.spread, user.samples = self.fold(
            user.pace, user.spread, user.samples, interval / frames
        )

    def on_rebalance(self) -> None:
        self.distribute(steal=True)
        self.at(self.now + REBALANCE_SECONDS, "rebalance")

    def distribute(self, *, steal: bool) -> None:
        active = {name: user for name, user in self.users.items() if user.active}
        receivers = sorted(name for name, user in active.items() if not user.held)
        if not receivers:
            return
        lists: dict[str, list[int]] = {}
        if self.pending:
            rates = {
                name: (u.frames_done / u.busy_seconds if u.busy_seconds > 0 else None)
                for name, u in active.items()
            }
            expected = max(self.scn.target_users, len(active))
            sizes = list_sizes(len(self.pending), receivers, rates, expected, CAP)
            lowest = sorted(self.pending)[: sum(sizes.values())]
            lists = split_runs(lowest, sizes)
            for name, frames in lists.items():
                self.give(name, frames)
        empty = [name for name in receivers if name not in lists]
        if steal and empty:
            queues = {name: sorted(u.held) for name, u in active.items() if u.held}
            stolen = stolen_lists(steal_plan(empty, queues, min_queue=2))
            for name, frames in stolen.items():
                for frame in frames:
                    self.users[self.holder[frame]].held.discard(frame)
                self.give(name, frames)
            moved = {frame for frames in stolen.values() for frame in frames}
            lists = {name: [f for f in frames if f not in moved] for name, frames in lists.items()}
            lists.update(stolen)
        for name, frames in lists.items():
            if frames:
                user = self.users[name]
                user.clock_at = self.now
                user.fresh_list = True
                self.at(self.now + LIST_LATENCY, "list", name, frames)

    def give(self, name: str, frames: Iterable[int]) -> None:
        user = self.users[name]
        for frame in frames:
            self.pending.discard(frame)
            self.holder[frame] = name
            user.held.add(frame)

    # ---------------------------------------------------------------- the estimate

    def checkpoints(self) -> None:
        done = len(self.rendered) * 100
        while len(self.asked) < len(CHECKPOINTS) and done >= CHECKPOINTS[len(self.asked)] * (
            self.scn.frames
        ):
            self.asked.append((CHECKPOINTS[len(self.asked)], self.now, self.ask()))

    def ask(self) -> eta.Estimate:
        paces = [
            eta.Pace(
                frame_seconds=u.pace,
                spread_seconds=u.spread,
                samples=u.samples,
                in_hand_seconds=(
                    self.now - u.clock_at if u.held and u.clock_at is not None else None
                ),
                held=len(u.held),
                list_start_seconds=u.list_start if self.list_starts else None,
            )
            for u in self.users.values()
            if u.active
        ]
        remaining = self.scn.frames - len(self.rendered)
        return self.estimator(remaining, paces, expected_users=self.scn.target_users)


# -------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class Score:
    checkpoints: int
    covered: int
    warming: int
    errors_at_50: list[float]
    widths: list[float]
    below: int  # actual earlier than the low end
    above: int  # actual later than the high end

    @property
    def coverage(self) -> float:
        return self.covered / self.checkpoints if self.checkpoints else 0.0

    @property
    def median_error_50(self) -> float:
        return statistics.median(self.errors_at_50) if self.errors_at_50 else math.nan

    @property
    def mean_width(self) -> float:
        return statistics.fmean(self.widths) if self.widths else math.nan


def score(runs: Iterable[Run]) -> Score:
    """A checkpoint without numbers (warming-up) counts as not covered."""
    total = covered = warming = below = above = 0
    errors: list[float] = []
    widths: list[float] = []
    for run in runs:
        for cp in run.checkpoints:
            total += 1
            answer = cp.answer
            if answer.seconds is None or answer.low_seconds is None or answer.high_seconds is None:
                warming += 1
                continue
            if answer.low_seconds <= cp.remaining <= answer.high_seconds:
                covered += 1
            elif cp.remaining < answer.low_seconds:
                below += 1
            else:
                above += 1
            if cp.remaining > 0:
                widths.append((answer.high_seconds - answer.low_seconds) / cp.remaining)
            if cp.progress == 50 and cp.remaining > 0:
                errors.append(abs(answer.seconds - cp.remaining) / cp.remaining)
    return Score(total, covered, warming, errors, widths, below, above)


def play(farm: str, seeds: Iterable[int], **model: Any) -> list[Run]:
    return [Model(scenario(farm, seed), **model).run() for seed in seeds]


def table(results: dict[str, Score]) -> str:
    lines = [
        f"{'farm':<12}{'checkpoints':>12}{'coverage':>10}{'below':>7}{'above':>7}"
        f"{'warming':>9}{'MAE@50%':>9}{'width':>8}"
    ]
    for name, s in results.items():
        lines.append(
            f"{name:<12}{s.checkpoints:>12}{s.coverage:>10.1%}{s.below:>7}{s.above:>7}"
            f"{s.warming:>9}{s.median_error_50:>9.1%}{s.mean_width:>8.2f}"
        )
    return "\n".join(lines)


def combined(scores: Iterable[Score]) -> Score:
    parts = list(scores)
    return Score(
        sum(s.checkpoints for s in parts),
        sum(s.covered for s in parts),
        sum(s.warming for s in parts),
        [e for s in parts for e in s.errors_at_50],
        [w for s in parts for w in s.widths],
        sum(s.below for s in parts),
        sum(s.above for s in parts),
    )


def targets_met(results: dict[str, Score]) -> bool:
    overall = results["overall"]
    farms = [s for name, s in results.items() if name != "overall"]
    return (
        overall.coverage >= 0.8
        and all(s.coverage >= 0.7 for s in farms)
        and overall.median_error_50 <= 0.15
    )


def parse_seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        seeds.extend(range(int(first), int(last or first) + 1))
    return seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.eta_model", description=__doc__)
    parser.add_argument("--seeds", default="0-11", help="e.g. 0-11 or 3,5,100-119")
    parser.add_argument("--farm", action="append", choices=FARMS, help="repeatable")
    parser.add_argument("--verbose", action="store_true", help="every checkpoint")
    parser.add_argument(
        "--no-list-start", action="store_true", help="estimate without the users' list starts"
    )
    args = parser.parse_args(argv)
    seeds = parse_seeds(args.seeds)
    results: dict[str, Score] = {}
    for farm in args.farm or FARMS:
        runs = play(farm, seeds, list_starts=not args.no_list_start)
        results[farm] = score(runs)
        if args.verbose:
            for run in runs:
                print(
                    f"{farm} seed {run.scenario.seed}: {run.scenario.frames} frames, "
                    f"{len(run.scenario.users)} users, base {run.scenario.base:.1f} s, "
                    f"took {run.duration:.0f} s"
                )
                for cp in run.checkpoints:
                    a = cp.answer
                    print(
                        f"  {cp.progress:>3}%  actual {cp.remaining:8.1f}  "
                        f"eta {a.seconds or 0:8.1f} [{a.low_seconds or 0:8.1f}, "
                        f"{a.high_seconds or 0:8.1f}] {a.basis}"
                    )
    results["overall"] = combined(results.values())
    print(f"seeds {args.seeds}")
    print(table(results))
    print("targets met" if targets_met(results) else "targets NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
