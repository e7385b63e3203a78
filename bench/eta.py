"""eta: issue #13's backtest of the progress ETA and its 80 % interval, on the whole stack in
real time.

Each farm runs on its own platform (tests/stack.py: the Procfile's release, web, worker and
beat against real Postgres, Redis and RabbitMQ, the simulator playing every peer and the
users), one platform per farm and seed, since the farm is the simulator's configuration.
The bench starts one workload, polls `get-workload-progress` every POLL_SECONDS and, at
each 10 % checkpoint (the first answer whose `completed_frames` reaches 10 %, 20 %, ...
90 % of the frames), keeps the answer's ETA keys and the time of the answer. The actual
remaining time of a checkpoint is the moment the last frame was stored (the latest
`frames.rendered_at`, the database's clock on this machine) less the checkpoint's time.

Farms (as bench/eta_model.py's, scaled down to seconds: a few hundred frames, 10-12 users,
a frame about 0.35-0.4 s: a run takes 13-20 s, 17-25 s with its platform):
- uniform: every user as fast, +-25 % noise per frame.
- slow-20: a fifth of the users five times slower from the start.
- slowdown: 40 % of the users two times slower once they have rendered about half their
  share.
- churn: a third of the users connected when the workload starts, the others a batch every
  few seconds after (the simulator's join schedule is started with the workload, not with
  the platform); a quarter of the users disconnect after 1-3 frames.
- heavy-tail: Pareto frame times (alpha 2.2) of the same mean.

The supervisor's periodic work keeps its default periods (rebalance 10 s, demand 15 s), so
in these short runs they weigh more than on a real farm whose frames take minutes.

Scoring follows the issue: a checkpoint is covered when low <= actual <= high; one answered
without numbers (`eta_basis` not "measured", e.g. "warming-up") counts as a miss. The
median absolute error of the central estimate is taken at the 50 % checkpoints. The rows
and the calibration table judge the answers as served.

Two diagnostic tables follow it (no targets): right after each checkpoint's answer the
bench reads the estimator's inputs from the database (estimates.PACES_LATERAL) and calls
supervisor.eta.estimate itself, `fresh` as the endpoint does but at that moment (the
endpoint answers from a document up to a second old, supervisor/snapshots.py), and
`start_up_0` with every list start-up known to be 0 s, as the simulator's users have it.
The raw checkpoints, with those inputs, go to var/bench-eta/checkpoints.<mode>.json.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from unittest import mock

import requests
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.pool import NullPool

from bench.harness import Options, Row, at_least, at_most, log
from supervisor import eta
from supervisor.workloads import estimates
from tests.stack import ROOT, Stack, platform

SOURCE = ROOT / "tests/fixtures/blend/blender-5.0/default_1_250.blend"
OUTPUT_DIR = ROOT / "var" / "bench-eta"
POLL_SECONDS = 0.2
CHECKPOINTS = tuple(range(10, 100, 10))
REPLAYS = {
    "fresh": "the estimator called on the database's paces at the answer's moment",
    "start_up_0": "the same, with every list start-up known to be 0 s (as simulated)",
}
COVERAGE_OVERALL = 0.8
COVERAGE_PER_FARM = 0.7
ERROR_AT_50 = 0.15


@dataclass(frozen=True)
class Farm:
    """One farm: the simulator's knobs (seed aside), the frames, and the users asked for."""

    name: str
    frames: int
    knobs: dict[str, Any]
    initial_users: int


FARMS = (
    Farm("uniform", 300, {"users": 10, "frame_time": 0.4, "jitter": 0.1}, 10),
    Farm(
        "slow-20",
        300,
        {"users": 10, "frame_time": 0.35, "jitter": 0.08, "slow_share": 0.2, "slow_factor": 5.0},
        10,
    ),
    Farm(
        "slowdown",
        300,
        {
            "users": 10,
            "frame_time": 0.35,
            "jitter": 0.08,
            "slowdown_share": 0.4,
            "slowdown_factor": 2.0,
            "slowdown_after": 5.0,
        },
        10,
    ),
    Farm(
        "churn",
        320,
        {
            "users": 12,
            "frame_time": 0.4,
            "jitter": 0.1,
            "join_batch": 4,
            "join_delay": 4.0,
            "disconnect_share": 0.25,
        },
        12,
    ),
    Farm(
        "heavy-tail",
        300,
        {"users": 10, "frame_time": 0.4, "frame_time_dist": "pareto", "tail": 2.2},
        10,
    ),
)
FULL_SEEDS = 3


def smoke_farm(farm: Farm) -> Farm:
    """The same farm, tiny: fewer frames and users, quicker frames (a run of a few seconds)."""
    knobs = dict(farm.knobs)
    scale = 4 / knobs["users"]
    knobs["users"] = 4
    knobs["frame_time"] = 0.1
    if "jitter" in knobs:
        knobs["jitter"] = 0.02
    if "join_batch" in knobs:
        knobs.update(join_batch=2, join_delay=1.0)
    if "slowdown_after" in knobs:
        knobs["slowdown_after"] = 1.0
    return Farm(farm.name, 80, knobs, max(1, round(farm.initial_users * scale)))


# --- one run ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One progress answer: when (epoch seconds, the request's midpoint) and what it said."""

    at: float
    completed: int
    total: int
    status: str
    active_users: int
    eta: float | None
    low: float | None
    high: float | None
    basis: str
    # The estimator replayed on the database's paces right after this answer (`replay`).
    replay: dict[str, Any] | None = None


@dataclass
class Checkpoint:
    farm: str
    seed: int
    progress: int  # percent of the frames
    completed: int  # frames stored at the answer (>= the threshold)
    at: float
    active_users: int
    eta: float | None
    low: float | None
    high: float | None
    basis: str
    actual: float  # seconds from `at` until the last frame was stored
    replay: dict[str, Any] | None = None

    @property
    def numbers(self) -> tuple[float, float, float] | None:
        """(eta, low, high) of an answer "measured", else None."""
        if self.basis != "measured" or self.eta is None or self.low is None or self.high is None:
            return None
        return self.eta, self.low, self.high

    @property
    def verdict(self) -> str:
        """inside | below (done sooner than the low end) | above (later than the high end)
        | no-estimate (an answer without numbers)."""
        numbers = self.numbers
        if numbers is None:
            return "no-estimate"
        _, low, high = numbers
        if self.actual < low:
            return "below"
        if self.actual > high:
            return "above"
        return "inside"


@dataclass
class RunResult:
    farm: str
    seed: int
    frames: int
    started_at: float
    done_at: float  # the last frame stored (database clock)
    polled_done_at: float  # the first answer that showed every frame stored
    checkpoints: list[Checkpoint] = field(default_factory=list)
    answers: int = 0
    # What each simulated user did (`nodes`): to tell a long frame from a stall.
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.done_at - self.started_at


def checkpoints_of(
    answers: Sequence[Answer], done_at: float, farm: str, seed: int
) -> list[Checkpoint]:
    """The first answer at or past each 10 % of the frames, with its actual remaining time."""
    found: list[Checkpoint] = []
    for progress in CHECKPOINTS:
        for answer in answers:
            if answer.total > 0 and answer.completed * 100 >= progress * answer.total:
                found.append(
                    Checkpoint(
                        farm=farm,
                        seed=seed,
                        progress=progress,
                        completed=answer.completed,
                        at=answer.at,
                        active_users=answer.active_users,
                        eta=answer.eta,
                        low=answer.low,
                        high=answer.high,
                        basis=answer.basis,
                        actual=done_at - answer.at,
                        replay=answer.replay,
                    )
                )
                break
    return found


def _answer(session: requests.Session, url: str, customer: str) -> Answer | None:
    sent = time.time()
    try:
        response = session.get(url, params={"customer_id": customer}, timeout=5)
    except requests.RequestException:
        return None
    received = time.time()
    if response.status_code != 200:
        return None
    body = response.json()
    return Answer(
        at=(sent + received) / 2,
        completed=body["completed_frames"],
        total=body["total_frames"],
        status=body["workload_status"],
        active_users=body.get("active_users", 0),
        eta=body.get("eta_seconds"),
        low=body.get("eta_low_seconds"),
        high=body.get("eta_high_seconds"),
        basis=body.get("eta_basis", "missing"),
    )


_PACES = text(
    "SELECT CAST(EXTRACT(EPOCH FROM now()) AS float8), w.total_frames, w.rendered_frames, "
    "w.target_user_count, " + estimates.PACES_COLUMNS + " "
    "FROM (SELECT id, total_frames, rendered_frames, target_user_count FROM workloads "
    " WHERE customer_id = :customer AND status <> 'stopped' "
    " ORDER BY created_at DESC LIMIT 1) AS w " + estimates.PACES_LATERAL
)


def replay(connection: Connection, customer: str) -> dict[str, Any] | None:
    """The estimator on the paces the database holds now, twice: as the endpoint calls it
    (`fresh`: the endpoint's answer without the age of its shared document) and with every
    user's list start-up known to be 0 s (`start_up_0`), which is what the simulator's
    users have: they render as soon as a list arrives."""
    row = connection.execute(_PACES, {"customer": customer}).one_or_none()
    if row is None:
        return None
    now, total, rendered, target, _active, *arrays = row
    users = estimates.paces(*arrays)
    left = total - rendered
    fresh = eta.estimate(left, users, expected_users=target)
    quick = [_without_start_up(user) for user in users]
    return {
        "at": now,
        # The estimator's inputs, to replay variants of it offline.
        "inputs": {
            "remaining_frames": left,
            "expected_users": target,
            "users": [asdict(user) for user in users],
        },
        "fresh": fresh.as_progress_keys(),
        "start_up_0": eta.estimate(left, quick, expected_users=target).as_progress_keys(),
    }


def _without_start_up(user: eta.Pace) -> eta.Pace:
    """The user with its lists' start-up known to be 0 s: a list start (the time from a list
    to its first delivery) of one frame."""
    if "list_start_seconds" not in {f.name for f in fields(user)}:
        raise RuntimeError("eta.Pace has no list_start_seconds to replay without")
    return replace(user, list_start_seconds=user.frame_seconds or 0.0)


def replayed(checkpoints: Sequence[Checkpoint], variant: str) -> list[Checkpoint]:
    """The checkpoints as the replay's `variant` answered them, timed at the replay."""
    out = []
    for cp in checkpoints:
        if cp.replay is None:
            continue
        keys = cp.replay[variant]
        out.append(
            replace(
                cp,
                eta=keys["eta_seconds"],
                low=keys["eta_low_seconds"],
                high=keys["eta_high_seconds"],
                basis=keys["eta_basis"],
                actual=cp.actual - (cp.replay["at"] - cp.at),
                replay=None,
            )
        )
    return out


def replayed_runs(runs: Sequence[RunResult], variant: str) -> list[RunResult]:
    return [replace(run, checkpoints=replayed(run.checkpoints, variant)) for run in runs]


def last_stored_at(database_url: str, customer: str) -> float:
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            value = connection.execute(
                text(
                    "SELECT extract(epoch FROM max(f.rendered_at)) FROM frames f "
                    "JOIN workloads w ON w.id = f.workload_id "
                    "WHERE w.customer_id = :customer AND f.state = 'rendered'"
                ),
                {"customer": customer},
            ).scalar_one()
    finally:
        engine.dispose()
    return float(value)


@contextmanager
def _farm_platform(tmp: Path, farm: Farm, seed: int) -> Iterator[Stack]:
    """The platform with the farm's simulator; late joiners wait for `start_joins`."""
    knobs = {**farm.knobs, "seed": seed}
    with ExitStack() as cleanup:
        if farm.knobs.get("join_batch"):
            from simulator.user_manager import UserManager

            # The simulator schedules its joins when it starts, before release and the
            # processes are up; the bench starts the schedule with the workload instead.
            with mock.patch.object(UserManager, "start", return_value=None):
                stack = cleanup.enter_context(platform(tmp, **knobs))
        else:
            stack = cleanup.enter_context(platform(tmp, **knobs))
        yield stack


def one_run(farm: Farm, seed: int, workdir: Path) -> RunResult:
    """Start one workload on a fresh platform and poll its progress until every frame is
    stored."""
    customer = f"eta-{farm.name}-{seed}"
    with tempfile.TemporaryDirectory(prefix="bench-eta-", dir=workdir) as folder:
        tmp = Path(folder)
        blend = blend_file(tmp, farm.frames)
        with _farm_platform(tmp, farm, seed) as stack:
            stack.env["INITIAL_USER_COUNT"] = str(farm.initial_users)
            stack.start("web", "worker", "beat")
            stack.simulator.add_object(customer, "obj", blend)
            url = f"{stack.api}/get-workload-progress"
            answers: list[Answer] = []
            # Autocommit: each replay reads now() afresh.
            engine = create_engine(
                stack.env["DATABASE_URL"], poolclass=NullPool, isolation_level="AUTOCOMMIT"
            )
            next_checkpoint = 0
            with requests.Session() as session, engine.connect() as connection:
                started_at = time.time()
                response = session.post(
                    f"{stack.api}/start-workload",
                    data={"customer_id": customer, "object_id": "obj"},
                    timeout=30,
                )
                if response.status_code != 200:
                    raise RuntimeError(f"start-workload: {response.status_code} {response.text}")
                if farm.knobs.get("join_batch"):
                    stack.simulator.user_manager.start()
                deadline = time.monotonic() + 60 + 4 * _expected_seconds(farm)
                tick = time.monotonic()
                while True:
                    answer = _answer(session, url, customer)
                    if answer is not None:
                        if _reached(answer, next_checkpoint):
                            answer = replace(answer, replay=replay(connection, customer))
                            while _reached(answer, next_checkpoint):
                                next_checkpoint += 1
                        answers.append(answer)
                        if answer.total and answer.completed >= answer.total:
                            break
                        if answer.status in {"failed", "stopped"}:
                            raise RuntimeError(f"eta {customer}: workload {answer.status}")
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"eta {customer}: not done in time ({answers[-1:]})\n{stack.logs()}"
                        )
                    tick += POLL_SECONDS
                    time.sleep(max(0.0, tick - time.monotonic()))
            engine.dispose()
            done_at = last_stored_at(stack.env["DATABASE_URL"], customer)
            timeline = stack.simulator.user_timeline()
    result = RunResult(
        farm=farm.name,
        seed=seed,
        frames=farm.frames,
        started_at=started_at,
        done_at=done_at,
        polled_done_at=answers[-1].at,
        checkpoints=checkpoints_of(answers, done_at, farm.name, seed),
        answers=len(answers),
        nodes=nodes(timeline),
    )
    return result


def nodes(timeline: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per simulated user: frame lists received, frames uploaded, and its longest silence
    while rendering (seconds from its previous event, a list, upload or reset, to an upload)."""
    out: dict[str, dict[str, Any]] = {}
    last: dict[str, float] = {}
    for entry in timeline:
        user = entry["user_id"]
        node = out.setdefault(user, {"lists": 0, "uploads": 0, "longest_silence": 0.0})
        kind = entry["kind"]
        if kind == "list":
            node["lists"] += 1
        elif kind == "upload":
            node["uploads"] += 1
            if user in last:
                silence = round(entry["t"] - last[user], 3)
                node["longest_silence"] = max(node["longest_silence"], silence)
        else:
            node[kind] = node.get(kind, 0) + 1
        last[user] = entry["t"]
    return out


def _reached(answer: Answer, index: int) -> bool:
    """Whether the answer is at or past CHECKPOINTS[index] (False past the last one)."""
    return (
        index < len(CHECKPOINTS)
        and answer.total > 0
        and answer.completed * 100 >= CHECKPOINTS[index] * answer.total
    )


def blend_file(folder: Path, frames: int) -> Path:
    from tests.blendgen import blend_with_range

    return blend_with_range(SOURCE, folder / "eta.blend", 1, frames)


def _expected_seconds(farm: Farm) -> float:
    knobs = farm.knobs
    return farm.frames * knobs["frame_time"] / max(1, knobs["users"])


# --- scoring ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Score:
    checkpoints: int
    inside: int
    below: int
    above: int
    no_estimate: int
    errors_at_50: tuple[float, ...]
    widths: tuple[float, ...]

    @property
    def coverage(self) -> float:
        return self.inside / self.checkpoints if self.checkpoints else math.nan

    @property
    def median_error_50(self) -> float:
        return statistics.median(self.errors_at_50) if self.errors_at_50 else math.nan

    @property
    def mean_width(self) -> float:
        return statistics.fmean(self.widths) if self.widths else math.nan


def score(checkpoints: Sequence[Checkpoint]) -> Score:
    """Coverage counts an answer without numbers as a miss; the error at 50 % and the
    widths (high - low) / actual are over the answers with numbers."""
    verdicts = [cp.verdict for cp in checkpoints]
    errors: list[float] = []
    widths: list[float] = []
    for cp in checkpoints:
        numbers = cp.numbers
        if numbers is None or cp.actual <= 0:
            continue
        central, low, high = numbers
        widths.append((high - low) / cp.actual)
        if cp.progress == 50:
            errors.append(abs(central - cp.actual) / cp.actual)
    return Score(
        checkpoints=len(checkpoints),
        inside=verdicts.count("inside"),
        below=verdicts.count("below"),
        above=verdicts.count("above"),
        no_estimate=verdicts.count("no-estimate"),
        errors_at_50=tuple(errors),
        widths=tuple(widths),
    )


def scores(runs: Sequence[RunResult]) -> dict[str, Score]:
    """One score per farm, in the order they ran, then "overall"."""
    by_farm: dict[str, list[Checkpoint]] = {}
    for run in runs:
        by_farm.setdefault(run.farm, []).extend(run.checkpoints)
    out = {name: score(cps) for name, cps in by_farm.items()}
    out["overall"] = score([cp for cps in by_farm.values() for cp in cps])
    return out


def _share(part: int, whole: int) -> str:
    return f"{part}/{whole} ({100 * part / whole:.0f} %)" if whole else "-"


def _percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.0f} %"


def calibration_table(results: dict[str, Score], runs: Sequence[RunResult]) -> str:
    """The issue's calibration table in Markdown, one line per farm and one overall."""
    header = (
        "| farm | runs | checkpoints | inside 80 % | below low | above high | no estimate "
        "| median abs error at 50 % | mean width |"
    )
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for name, s in results.items():
        count = len({r.seed for r in runs if r.farm == name}) if name != "overall" else len(runs)
        width = "-" if math.isnan(s.mean_width) else f"{s.mean_width:.2f}x"
        label = f"**{name}**" if name == "overall" else name
        lines.append(
            f"| {label} | {count} | {s.checkpoints} | {_share(s.inside, s.checkpoints)} "
            f"| {s.below} | {s.above} | {s.no_estimate} | {_percent(s.median_error_50)} "
            f"| {width} |"
        )
    return "\n".join(lines)


def rows_of(results: dict[str, Score], runs: Sequence[RunResult]) -> list[Row]:
    overall = results["overall"]
    note = (
        f"{len(runs)} runs; an answer without numbers counts as a miss "
        f"({overall.no_estimate} of {overall.checkpoints})"
    )
    rows = [
        Row(
            "eta",
            "80 % interval coverage, all farms",
            "",
            [overall.coverage],
            None,
            [at_least(COVERAGE_OVERALL, ">= 0.8")],
            note,
        )
    ]
    for name, s in results.items():
        if name == "overall":
            continue
        rows.append(
            Row(
                "eta",
                f"  coverage: {name}",
                "",
                [s.coverage],
                None,
                [at_least(COVERAGE_PER_FARM, ">= 0.7")],
                f"{s.inside}/{s.checkpoints} inside, {s.below} below low, {s.above} above "
                f"high, {s.no_estimate} without numbers",
            )
        )
    rows.append(
        Row(
            "eta",
            "median |eta - actual| / actual at 50 %",
            "",
            [overall.median_error_50],
            None,
            [at_most(ERROR_AT_50, "<= 0.15")],
            f"{len(overall.errors_at_50)} checkpoints at 50 % with numbers",
        )
    )
    rows.append(
        Row(
            "eta",
            "mean interval width / actual",
            "",
            [overall.mean_width],
            None,
            [],
            "(high - low) / actual remaining time, over answers with numbers",
        )
    )
    rows.append(
        Row(
            "eta",
            "run: start-workload -> last frame stored",
            "s",
            [r.seconds for r in runs],
            None,
            [],
            "one sample per farm and seed",
        )
    )
    return rows


# --- the bench --------------------------------------------------------------------------


def _log_run(run: RunResult) -> None:
    log(
        f"eta {run.farm} seed {run.seed}: {run.frames} frames in {run.seconds:.1f}s, "
        f"{run.answers} answers, last seen {run.polled_done_at - run.done_at:+.2f}s after "
        "it was stored"
    )
    for cp in run.checkpoints:
        found = cp.numbers
        numbers = (
            f"{cp.basis:>33}"
            if found is None
            else f"eta {found[0]:7.1f} [{found[1]:7.1f}, {found[2]:7.1f}]"
        )
        log(
            f"  {cp.progress:>3}% ({cp.completed:>4})  actual {cp.actual:6.1f}  {numbers}  "
            f"users {cp.active_users:>2}  {cp.verdict}"
        )


def write_checkpoints(path: Path, runs: Sequence[RunResult], mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # The estimator changes while it is tuned: name the version these figures belong to.
    sources = (
        "supervisor/eta.py",
        "supervisor/workloads/estimates.py",
        "supervisor/frames/claims.py",
    )
    payload = {
        "mode": mode,
        "sources": {
            name: hashlib.sha256((ROOT / name).read_bytes()).hexdigest()[:16] for name in sources
        },
        "farms": {farm.name: asdict(farm) for farm in FARMS},
        "runs": [
            {
                **{k: v for k, v in asdict(run).items() if k != "checkpoints"},
                "checkpoints": [{**asdict(cp), "verdict": cp.verdict} for cp in run.checkpoints],
            }
            for run in runs
        ],
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")


def run(opts: Options) -> list[Row]:
    farms = [smoke_farm(f) for f in FARMS] if opts.smoke else list(FARMS)
    # --rounds is the number of seeds per farm.
    seeds = range(1, opts.rounds_or(FULL_SEEDS) + 1)
    runs: list[RunResult] = []
    for seed in seeds:
        for farm in farms:
            began = time.perf_counter()
            result = one_run(farm, seed, opts.workdir)
            runs.append(result)
            _log_run(result)
            log(f"eta {farm.name} seed {seed}: {time.perf_counter() - began:.1f}s with the stack")
    mode = "smoke" if opts.smoke else "full"
    path = OUTPUT_DIR / f"checkpoints.{mode}.json"
    write_checkpoints(path, runs, mode)
    results = scores(runs)
    print(f"\nETA calibration ({mode}, raw checkpoints in {path.relative_to(ROOT)}):\n")
    print(calibration_table(results, runs) + "\n")
    for variant, title in REPLAYS.items():
        again = replayed_runs(runs, variant)
        print(f"Diagnostic, {title}:\n\n{calibration_table(scores(again), again)}\n")
    return rows_of(results, runs)
