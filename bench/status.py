"""status: 64 concurrent clients (wrk) on the Procfile's gunicorn, against a bare Flask app.

The database holds 1,000 running workloads made by set-based SQL: one of 1,000,000 frames
(half rendered, 100 users holding 250 frames each) and 999 of 100 frames (half rendered,
4 users). `get-workload-status` and `get-workload-progress` are loaded for the 1M-frame
workload and a 100-frame one. Baseline, in the same run and under the same gunicorn
command: bench/bare_app.py answering the same paths with the same JSON bodies.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import requests
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from bench.harness import Options, Row, at_most, log, ratio_at_least
from bench.profiling import print_summary, recording, summarize
from tests.processes import ProcfileProcess, free_port, wait_until
from tests.stack import PREFIX, platform

CONNECTIONS = 64
TIMEOUT_S = 10  # wrk leaves requests slower than this out of its latencies
P99_LIMIT_MS = 20.0
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def seed(database_url: str, *, workloads: int, big: int, big_users: int) -> None:
    """1 big and `workloads - 1` 100-frame running workloads, in four set-based statements."""
    small, small_users = 100, 4
    big_assigned, small_assigned = big_users * 250, small // 2
    statements = [
        f"""
        INSERT INTO workloads (id, customer_id, object_id, status, blend_file_path,
            blend_file_hash, scene_name, frame_start, frame_end, frame_step, total_frames,
            rendered_frames, target_user_count, users_demanded, started_at)
        SELECT md5('bench-' || i), 'bench-' || lpad(i::text, 4, '0'), 'obj', 'running',
            'bench-' || lpad(i::text, 4, '0') || '/obj/scene.blend', md5('blend-' || i),
            'Scene', 1, t.frames, 1, t.frames, t.frames / 2, t.users, 0, now()
        FROM generate_series(0, {workloads - 1}) AS i
        CROSS JOIN LATERAL (SELECT
            CASE WHEN i = 0 THEN {big} ELSE {small} END AS frames,
            CASE WHEN i = 0 THEN {big_users} ELSE {small_users} END AS users) AS t
        """,
        """
        INSERT INTO workload_users (workload_id, user_id, state)
        SELECT w.id, 'user-' || u, 'active' FROM workloads w,
            generate_series(0, w.target_user_count - 1) AS u
        """,
        f"""
        INSERT INTO frames (workload_id, number, state, user_id, attempts, final_key,
            assigned_at, rendered_at)
        SELECT w.id, n,
            CASE WHEN n <= w.rendered_frames THEN 'rendered'
                 WHEN n <= w.rendered_frames + a.assigned THEN 'assigned'
                 ELSE 'pending' END,
            CASE WHEN n <= w.rendered_frames + a.assigned
                 THEN 'user-' || (n % w.target_user_count) END,
            CASE WHEN n <= w.rendered_frames + a.assigned THEN 1 ELSE 0 END,
            CASE WHEN n <= w.rendered_frames
                 THEN w.customer_id || '/obj/' || lpad(n::text, 3, '0') || '.png' END,
            CASE WHEN n > w.rendered_frames AND n <= w.rendered_frames + a.assigned
                 THEN now() END,
            CASE WHEN n <= w.rendered_frames THEN now() END
        FROM workloads w
        CROSS JOIN LATERAL (SELECT CASE WHEN w.total_frames = {big}
            THEN {big_assigned} ELSE {small_assigned} END AS assigned) AS a
        CROSS JOIN LATERAL generate_series(1, w.total_frames) AS n
        """,
    ]
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.execute(text(statement))
        with engine.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE"))
    finally:
        engine.dispose()


def parse_wrk(output: str) -> dict[str, float]:
    """Requests/s, p50/p99 in ms and error counts from `wrk --latency` output."""

    def latency(percent: str) -> float:
        match = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.MULTILINE)
        if match is None:
            raise ValueError(f"wrk output has no {percent}% line:\n{output}")
        return float(match.group(1)) * _UNITS[match.group(2)]

    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    if rate is None or total is None:
        raise ValueError(f"unexpected wrk output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    connect, read, write, timeout = (int(g) for g in errors.groups()) if errors else (0,) * 4
    return {
        "rps": float(rate.group(1)),
        "requests": float(total.group(1)),
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "non_2xx": float(non_2xx.group(1)) if non_2xx else 0.0,
        "socket_errors": float(connect + read + write),
        "timeouts": float(timeout),
    }


def wrk(url: str, seconds: int) -> dict[str, float]:
    completed = subprocess.run(
        [
            "wrk",
            "--threads",
            "2",
            "--connections",
            str(CONNECTIONS),
            "--duration",
            f"{seconds}s",
            "--timeout",
            f"{TIMEOUT_S}s",
            "--latency",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    figures = parse_wrk(completed.stdout)
    # Wrong answers make the figures meaningless; slow ones (timeouts) are the figures.
    if figures["non_2xx"] + figures["socket_errors"] > 0.01 * max(figures["requests"], 1):
        raise RuntimeError(f"wrk saw errors on {url}:\n{completed.stdout}")
    return figures


def _bare_web(env: dict[str, str], log_dir: Path, bodies: Path) -> tuple[ProcfileProcess, str]:
    """The Procfile's `web` command with only the application swapped for the bare one."""
    bare_env = {**env, "PORT": str(free_port()), "BARE_APP_BODIES": str(bodies)}
    process = ProcfileProcess("web", bare_env, log_dir)
    if "'app:create_app()'" not in process.command:
        raise RuntimeError(f"Procfile web command changed shape: {process.command}")
    process.command = process.command.replace("'app:create_app()'", "'bench.bare_app:create_app()'")
    process.log_path = log_dir / "bare-web.log"
    process.start()
    return process, f"http://127.0.0.1:{bare_env['PORT']}{PREFIX}"


def run(opts: Options) -> list[Row]:
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (apt-get install -y wrk)")
    rounds = opts.rounds_or(3)
    seconds = 1 if opts.smoke else 5
    workloads, big, big_users = (50, 10_000, 10) if opts.smoke else (1000, 1_000_000, 100)
    endpoints = {
        f"status {big:,} frames": "/get-workload-status?customer_id=bench-0000",
        "status 100 frames": "/get-workload-status?customer_id=bench-0001",
        f"progress {big:,} frames": "/get-workload-progress?customer_id=bench-0000",
        "progress 100 frames": "/get-workload-progress?customer_id=bench-0001",
    }
    ours: dict[str, list[dict[str, float]]] = {name: [] for name in endpoints}
    bare: dict[str, list[dict[str, float]]] = {name: [] for name in endpoints}
    with tempfile.TemporaryDirectory(prefix="bench-status-", dir=opts.workdir) as folder:
        tmp = Path(folder)
        with platform(tmp, users=0) as stack:
            stack.env.pop("WEB_CONCURRENCY", None)  # the Procfile's own default
            started = time.perf_counter()
            seed(stack.env["DATABASE_URL"], workloads=workloads, big=big, big_users=big_users)
            log(f"status: seeded {workloads} workloads in {time.perf_counter() - started:.1f}s")
            stack.start("web")
            bodies = {}
            for path in endpoints.values():
                response = requests.get(stack.api + path, timeout=30)
                response.raise_for_status()
                bodies[PREFIX + path] = response.json()
            sizes = {
                name: len(requests.get(stack.api + path, timeout=30).content)
                for name, path in endpoints.items()
            }
            bodies_file = tmp / "bodies.json"
            bodies_file.write_text(json.dumps(bodies))
            bare_process, bare_api = _bare_web(stack.env, stack.log_dir, bodies_file)
            try:
                wait_until(
                    lambda: _answers(bare_api + endpoints["status 100 frames"]), 30, "bare web"
                )
                for name, path in endpoints.items():
                    if len(requests.get(bare_api + path, timeout=30).content) != sizes[name]:
                        raise RuntimeError(f"bare body size differs for {name}")
                    if not opts.smoke:
                        wrk(stack.api + path, 1)
                        wrk(bare_api + path, 1)
                for index in range(rounds):
                    for name, path in endpoints.items():
                        ours[name].append(wrk(stack.api + path, seconds))
                        bare[name].append(wrk(bare_api + path, seconds))
                        log(
                            f"status round {index + 1}/{rounds} {name}: "
                            f"{ours[name][-1]['rps']:,.0f} vs bare {bare[name][-1]['rps']:,.0f} "
                            "req/s"
                        )
                if opts.profile:
                    _profile_web(stack, endpoints, seconds)
            finally:
                bare_process.stop()
    return _rows(endpoints, ours, bare, sizes, big)


def _profile_web(stack, endpoints: dict[str, str], seconds: int) -> None:  # type: ignore[no-untyped-def]
    """One more, unmeasured, wrk run per endpoint under py-spy (CPU samples only: the
    web worker's idle app threads would drown the rest)."""
    pid = stack.processes["web"].process.pid
    for name, path in endpoints.items():
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        with recording(pid, f"status-{slug}", idle=False) as output:
            wrk(stack.api + path, seconds)
        if output is not None and output.exists():
            summary = summarize(output, within="handle_request")
            print_summary(f"web, {name} (CPU)", summary)
            output.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2))


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def _rows(
    endpoints: dict[str, str],
    ours: dict[str, list[dict[str, float]]],
    bare: dict[str, list[dict[str, float]]],
    sizes: dict[str, int],
    big: int,
) -> list[Row]:
    rows = []
    for name in endpoints:
        note = f"{CONNECTIONS} connections, body {sizes[name]:,} bytes"
        rps = [r["rps"] for r in ours[name]]
        rows.append(
            Row(
                "status",
                f"{name}: req/s",
                "/s",
                rps,
                [r["rps"] for r in bare[name]],
                [ratio_at_least(0.7)],
                note,
            )
        )
        rows.append(
            Row(
                "status",
                f"{name}: p99",
                "ms",
                [r["p99_ms"] for r in ours[name]],
                [r["p99_ms"] for r in bare[name]],
                [at_most(P99_LIMIT_MS, "< 20 ms")],
                note,
            )
        )
        timeouts = [r["timeouts"] for r in ours[name]]
        if any(timeouts):
            rows.append(
                Row(
                    "status",
                    f"{name}: requests over {TIMEOUT_S} s",
                    "",
                    timeouts,
                    [r["timeouts"] for r in bare[name]],
                    [at_most(0, "none")],
                    "left out of wrk's latencies",
                )
            )
    for kind in ("status", "progress"):
        large, small = ours[f"{kind} {big:,} frames"], ours[f"{kind} 100 frames"]
        rows.append(
            Row(
                "status",
                f"{kind}: req/s {big:,} vs 100 frames",
                "/s",
                [r["rps"] for r in large],
                [r["rps"] for r in small],
                [ratio_at_least(0.9)],
                "baseline column = the 100-frame workload",
            )
        )
    return rows
