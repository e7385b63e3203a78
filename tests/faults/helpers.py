"""Shared pieces of the fault-injection suite: a 120-frame workload through the real
Procfile processes and the simulator, short timings so recovery shows within seconds,
and the same end checks for every scenario."""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.blendgen import blend_with_range
from tests.helpers import FIXTURES
from tests.processes import wait_until
from tests.stack import Stack, platform

FRAMES = list(range(1, 121))
SOURCE = FIXTURES / "blend/blender-5.0/default_1_250.blend"
RESULTS = Path(__file__).resolve().parent / "last-results.jsonl"

FAST_RECOVERY = {
    "STALE_FRAME_SECONDS": "8",
    "RECLAIM_INTERVAL_SECONDS": "2",
    "DEMAND_INTERVAL_SECONDS": "2",
    "REBALANCE_INTERVAL_SECONDS": "2",
    "REDEMAND_SECONDS": "6",
    "STALL_SECONDS": "3",
    "BROKER_VISIBILITY_TIMEOUT_SECONDS": "30",
    "INBOX_REDISPATCH_SECONDS": "8",
    "MAX_FRAMES_PER_ASSIGNMENT": "8",
    "INITIAL_USER_COUNT": "5",
    "PEER_RETRIES": "1",
    "PEER_TIMEOUT_SECONDS": "3",
}


@dataclass
class Run:
    stack: Stack
    customer: str
    object_id: str = "fault-obj"
    started: float = 0.0
    faults: list[str] = field(default_factory=list)
    crashes: list[float] = field(default_factory=list)  # time.monotonic() of each kill

    def start_workload(self) -> None:
        response = requests.post(
            f"{self.stack.api}/start-workload",
            data={"customer_id": self.customer, "object_id": self.object_id},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        self.started = time.monotonic()

    def completed_frames(self) -> int:
        try:
            return int(self.stack.status(self.customer)["status"]["completed_frames"])
        except (requests.RequestException, KeyError, ValueError):
            return -1

    def wait_for_frames(self, count: int, timeout: float = 60) -> None:
        wait_until(lambda: self.completed_frames() >= count, timeout, f"{count} frames", 0.1)


@contextmanager
def fault_run(tmp_path: Path, customer: str, **knobs: Any) -> Iterator[Run]:
    simulator_knobs = {"users": 6, "frame_time": 0.15, "jitter": 0.05, "seed": 5, **knobs}
    with platform(tmp_path, **simulator_knobs) as stack:
        stack.env.update(FAST_RECOVERY)
        blend = blend_with_range(SOURCE, tmp_path / "fault.blend", FRAMES[0], FRAMES[-1])
        stack.simulator.add_object(customer, "fault-obj", blend)
        yield Run(stack=stack, customer=customer)


def assert_every_frame_exactly_once(run: Run, scenario: str, timeout: float = 180) -> None:
    """The checks that end every scenario; also appends the scenario's figures to RESULTS."""
    stack = run.stack
    status = stack.wait_completed(run.customer, timeout=timeout)
    seconds = time.monotonic() - run.started
    assert status["workload_status"] == "completed", f"{status}\n{stack.logs()}"
    assert status["completed_frames"] == len(FRAMES)
    assert status["completion_percentage"] == 100.0

    stored = stack.simulator.stored_frames(run.customer, run.object_id)
    assert sorted(stored) == FRAMES, "a frame is missing from the final bucket"
    uploads = stack.simulator.uploaded_digests()
    wrong = [n for n, data in stored.items() if hashlib.sha256(data).hexdigest() not in uploads[n]]
    assert wrong == [], f"frames whose stored bytes no user uploaded: {wrong}"

    def records() -> Counter[int]:
        return Counter(
            r["frameNumber"]
            for r in stack.simulator.catalog_records()
            if r["customerId"] == run.customer
        )

    wait_until(lambda: set(records()) >= set(FRAMES), 90, "every frame to be recorded")
    recorded = records()
    duplicated = sorted(n for n, count in recorded.items() if count > 1)
    assert sorted(recorded) == FRAMES, "a frame was recorded that is not in the workload"
    resent = _resent_after_a_crash(run, duplicated)
    assert sorted(set(duplicated) - set(resent)) == [], (
        f"frames recorded twice: {duplicated}\n{_duplicates_report(run, duplicated)}"
    )
    _wait_for_temp_bucket_empty(stack, unheard_of=stack.simulator.dropped_uploads())

    with RESULTS.open("a") as results:
        results.write(
            json.dumps(
                {
                    "scenario": scenario,
                    "frames": len(FRAMES),
                    "faults": run.faults,
                    "lost": 0,
                    "duplicated": len(duplicated),
                    "resent_in_flight_at_a_crash": resent,
                    "seconds_to_complete": round(seconds, 1),
                    "events_published": stack.simulator.published(),
                }
            )
            + "\n"
        )


def _wait_for_temp_bucket_empty(
    stack: Stack, timeout: float = 30, unheard_of: set[str] | frozenset[str] = frozenset()
) -> None:
    """Every upload we heard of is deleted (`unheard_of`: those whose event the User
    Manager dropped). On timeout, name each leftover and every worker log line about it."""

    def left() -> list[str]:
        return [key for key in stack.simulator.temp_keys() if key not in unheard_of]

    try:
        wait_until(lambda: left() == [], timeout, "temp uploads deleted")
    except AssertionError:
        leftovers = left()
        worker_log = stack.processes["worker"].log_path.read_text(errors="replace")
        mentions = {key: _log_lines_about(worker_log, key) for key in leftovers}
        published = stack.simulator.published()
        raise AssertionError(
            f"temporary uploads left: {json.dumps(mentions, indent=1)}\npublished: {published}"
        ) from None


def _log_lines_about(log: str, temp_key: str) -> list[str]:
    """Lines naming the key, or its user and frame (keys are temp/<session>/<user>/<frame>-x)."""
    parts = temp_key.split("/")
    user, frame = parts[-2], parts[-1].split("-")[0]
    needles = [f'"user_id": "{user}", "frame": {frame},']
    return [
        line[:400]
        for line in log.splitlines()
        if temp_key in line or any(needle in line for needle in needles)
    ]


CRASH_WINDOW_S = 1.0
# A request the killed worker wrote before it died may be read by the simulator after
# kill() returned; the scenarios start the worker again no sooner than this after a kill,
# so nothing a live worker sends arrives in between.
IN_FLIGHT_GRACE_S = 0.2
_SEND_TROUBLE = ("add-rendered-image failed", "outbox drain lost", "outbox send failed")


def _duplicates_report(run: Run, duplicated: list[int]) -> str:
    """When each duplicated record arrived (seconds after the start) and what the worker
    logged about failed sends: enough to tell a resend after an ambiguous failure from two
    drainers at once."""
    stack = run.stack
    arrivals: dict[int, list[float]] = {}
    for record, arrived in zip(
        stack.simulator.catalog_records(), stack.simulator.catalog_arrival_times(), strict=True
    ):
        if record["customerId"] == run.customer and record["frameNumber"] in duplicated:
            arrivals.setdefault(record["frameNumber"], []).append(round(arrived - run.started, 3))
    worker_log = stack.log_dir / "worker.log"
    lines = worker_log.read_text(errors="replace").splitlines() if worker_log.exists() else []
    trouble = [line[:400] for line in lines if any(t in line for t in _SEND_TROUBLE)]
    return (
        f"faults: {run.faults}\n"
        f"kills at: {[round(crash - run.started, 3) for crash in run.crashes]}\n"
        f"arrivals: {arrivals}\n"
        f"worker send trouble ({len(trouble)} lines):\n" + "\n".join(trouble[:40])
    )


def _resent_after_a_crash(run: Run, duplicated: list[int]) -> list[int]:
    """The duplicates a crash explains: the catalog is not idempotent and the outbox sends at
    least once, so a record whose send was in flight when the process was killed (its first
    copy arrived within CRASH_WINDOW_S before the kill, or read by the simulator just after
    it, within IN_FLIGHT_GRACE_S) is sent again. At most one per crash: a workload's catalog
    records go one at a time, each deleted right after its send."""
    if not duplicated or not run.crashes:
        return []
    stack = run.stack
    arrivals: dict[int, float] = {}
    for record, arrived in zip(
        stack.simulator.catalog_records(), stack.simulator.catalog_arrival_times(), strict=True
    ):
        if record["customerId"] == run.customer:
            arrivals.setdefault(record["frameNumber"], arrived)
    explained: list[int] = []
    for crash in run.crashes:
        in_flight = [
            n
            for n in duplicated
            if n not in explained
            and crash - CRASH_WINDOW_S <= arrivals[n] <= crash + IN_FLIGHT_GRACE_S
        ]
        explained.extend(in_flight[:1])
    return explained
