"""scaleout: the many-workload intake load with 1, 2 and 4 worker processes.

Scenario B of the intake benchmark (20 workloads of 200 frames started together, 50
simulated users, status polled) on one Procfile stack, with N instances of the Procfile's
`worker` (WORKER_CONCURRENCY as configured, each with its own intake consumer on the
shared intake queue), a fresh customer per N and per round. Per N: frames/s to the
catalog, CPU per frame of every process and of the workers, and the machine's
utilisation, total CPU s / (wall s x cores).

The serialized fraction is Karp-Flatt's, from the throughput speedup S(N) = X(N) / X(1)
on p = min(N, cores) cores: e = (1/S - 1/p) / (1 - 1/p). Read it with the utilisation: a
high e with the cores saturated says the box is full (CPU-bound), a high e with cores to
spare says something serializes the work.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from bench.harness import Options, Row, log, median
from bench.intake import (
    POLL_HZ,
    intake_blend,
    run_scenario,
    scenarios,
    simulated_stack,
    wait_for_consumers,
)

WORKER_COUNTS = (1, 2, 4)


def karp_flatt(speedup: float, processors: int) -> float | None:
    """The experimentally determined serial fraction; None on one processor."""
    if processors <= 1 or speedup <= 0:
        return None
    return (1 / speedup - 1 / processors) / (1 - 1 / processors)


def run(opts: Options, *, poll_hz: float = POLL_HZ) -> list[Row]:
    from tests.stack import worker_names

    _, scenario = scenarios(opts.smoke)
    rounds = opts.rounds_or(2)
    cores = os.cpu_count() or 1
    found: dict[int, dict[str, list[float]]] = {count: {} for count in WORKER_COUNTS}
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-", dir=opts.workdir) as folder:
        tmp = Path(folder)
        blend = intake_blend(tmp, scenario.frames)
        with simulated_stack(tmp, scenario.users) as stack:
            stack.start("web", "beat")
            for index in range(rounds):
                for count in WORKER_COUNTS:
                    names = worker_names(count)
                    stack.start(*names)
                    try:
                        wait_for_consumers(stack, count)
                        figures = run_scenario(
                            stack, scenario, f"scaleout-{count}w-{index}", blend, poll_hz=poll_hz
                        )
                    finally:
                        for name in names:
                            stack.processes.pop(name).stop()
                    workers = sum(v for k, v in figures.items() if k.startswith("cpu:worker"))
                    figures["workers_cpu"] = workers
                    figures["utilisation"] = figures["cpu_total_s"] / (figures["window_s"] * cores)
                    for key, value in figures.items():
                        found[count].setdefault(key, []).append(value)
                    log(
                        f"scaleout round {index + 1}/{rounds}, {count} worker(s): "
                        f"{figures['to_catalog']:,.0f} frames/s, {workers:.2f} ms worker CPU "
                        f"per frame, utilisation {figures['utilisation']:.0%}"
                    )
    return _rows(scenario.note, found, cores)


def _rows(note: str, found: dict[int, dict[str, list[float]]], cores: int) -> list[Row]:
    rows: list[Row] = []
    single = found[1]["to_catalog"]
    for count, figures in found.items():
        prefix = f"{count} worker process{'es' if count > 1 else ''}"
        rows += [
            Row(
                "scaleout",
                f"{prefix}: frames/s, first stored -> last catalog record (vs 1 worker)",
                "/s",
                figures["to_catalog"],
                single if count > 1 else None,
                [],
                note,
            ),
            Row(
                "scaleout",
                f"{prefix}: CPU ms per frame, all processes",
                "ms",
                figures["cpu:all processes"],
                None,
                [],
                "workers, web, beat, Postgres, RabbitMQ, Redis, simulator",
            ),
            Row(
                "scaleout",
                f"{prefix}: CPU ms per frame, workers",
                "ms",
                figures["workers_cpu"],
                None,
                [],
                note,
            ),
            Row(
                "scaleout",
                f"{prefix}: machine utilisation, CPU s / (wall s x {cores} cores)",
                "",
                figures["utilisation"],
                None,
                [],
                "start-workload -> last catalog record",
            ),
        ]
        if count > 1:
            speedup = median(figures["to_catalog"]) / median(single)
            serial = karp_flatt(speedup, min(count, cores))
            if serial is not None:
                rows.append(
                    Row(
                        "scaleout",
                        f"{prefix}: serialized fraction (Karp-Flatt), S = {speedup:.2f}",
                        "",
                        [serial],
                        None,
                        [],
                        f"p = min({count}, {cores} cores); read with the utilisation",
                    )
                )
    return rows
