"""status: 64 concurrent clients (wrk) on the Procfile's gunicorn, against a bare Flask app.

The database holds 1,000 running workloads made by set-based SQL: one of 1,000,000 frames
(half rendered, 100 users holding 250 frames each, some failed frames waiting) and 999 of
100 frames (half rendered, 4 users), with what the dashboard reads: rendered counts per grid
cell, a timeline, and each user's measured pace. `get-workload-status` and
`get-workload-progress` are loaded for the 1M-frame workload and a 100-frame one. Baseline,
in the same run and under the same gunicorn command: bench/bare_app.py answering the same
paths with the same JSON bodies.

The dashboard (issue #13) is loaded in the same run and gunicorn: a workload's update
(`/dashboard/api/workloads/<customer>`, also with If-None-Match as the page polls it) and
its page. Their baseline is our own status endpoint for the same workload in the same
round: an update should cost at most twice a status call. The document behind an update,
computed at most once a second per watched workload, is timed apart by calling
`workload_document` directly.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from bench.harness import Options, Row, at_most, log, ratio_at_least, ratio_at_most
from bench.profiling import print_summary, recording, summarize
from supervisor.frames import grid, latest
from supervisor.timeline import Kind
from tests.processes import ProcfileProcess, free_port, wait_until
from tests.stack import PREFIX, platform

CONNECTIONS = 64
TIMEOUT_S = 10  # wrk leaves requests slower than this out of its latencies
# Issue #15: status and progress against the bare app, same gunicorn command, same round.
THROUGHPUT_RATIO = 0.8
P99_RATIO = 1.2
# An update of the dashboard may cost up to twice a status call (issue #13).
DASHBOARD_RATIO = 0.5
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
BIG, SMALL = "bench-0000", "bench-0001"
SMALL_FRAMES = 100
HELD_PER_USER = 250
# Failed frames waiting to be rendered again in the big workload: about this many.
FAILED_WAITING = 100

# Each wrk thread sends the last ETag it saw as If-None-Match, as the dashboard page does
# when it polls; `done` prints how many answers were 304.
_CONDITIONAL_LUA = """
local etag = nil
not_modified, full = 0, 0
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function request()
  if etag then
    return wrk.format(nil, nil, {["If-None-Match"] = etag})
  end
  return wrk.format()
end

function response(status, headers, body)
  if status == 304 then not_modified = not_modified + 1 else full = full + 1 end
  for name, value in pairs(headers) do
    if string.lower(name) == "etag" then etag = value end
  end
end

function done(summary, latency, requests)
  local n, f = 0, 0
  for _, thread in ipairs(threads) do
    n = n + thread:get("not_modified")
    f = f + thread:get("full")
  end
  io.write(string.format("answers: %d not modified, %d full\\n", n, f))
end
"""


def workload_id(index: int) -> str:
    """The id `seed` gives workload `index` (md5('bench-' || index) in SQL)."""
    return hashlib.md5(f"bench-{index}".encode()).hexdigest()


def failed_every(big: int) -> int:
    """Every how many frames the big workload has a failed frame waiting (pending frames only)."""
    return max(2, big // (2 * FAILED_WAITING))


def seed(database_url: str, *, workloads: int, big: int, big_users: int) -> None:
    """1 big and `workloads - 1` 100-frame running workloads, set-based: workloads, users
    (with a measured pace, so the ETA is "measured"), frames (the big one's failed frames
    waiting among its pending ones), the grid's rendered counts per cell (as migration 0006
    counts them), and a timeline (started, users-added per user, frame-refused per failed
    frame)."""
    small, small_users = SMALL_FRAMES, 4
    big_assigned, small_assigned = big_users * HELD_PER_USER, small // 2
    failed = (
        f"w.total_frames = {big} AND n > w.rendered_frames + a.assigned "
        f"AND n % {failed_every(big)} = 0"
    )
    statements = [
        f"""
        INSERT INTO workloads (id, customer_id, object_id, status, blend_file_path,
            blend_file_hash, scene_name, frame_start, frame_end, frame_step, total_frames,
            rendered_frames, target_user_count, users_demanded, started_at)
        SELECT md5('bench-' || i), 'bench-' || lpad(i::text, 4, '0'), 'obj', 'running',
            'bench-' || lpad(i::text, 4, '0') || '/obj/scene.blend', md5('blend-' || i),
            'Scene', 1, t.frames, 1, t.frames, t.frames / 2, t.users, 0,
            now() - interval '1 hour'
        FROM generate_series(0, {workloads - 1}) AS i
        CROSS JOIN LATERAL (SELECT
            CASE WHEN i = 0 THEN {big} ELSE {small} END AS frames,
            CASE WHEN i = 0 THEN {big_users} ELSE {small_users} END AS users) AS t
        """,
        # Paces of 20-29 s per frame from 12 frame times each; each user has had its
        # current frame in hand for half its pace.
        """
        INSERT INTO workload_users (workload_id, user_id, state, frames_done, busy_seconds,
            pace_seconds, pace_spread, pace_samples, clock_at, joined_at)
        SELECT w.id, 'user-' || u, 'active', w.rendered_frames / w.target_user_count,
            (w.rendered_frames / w.target_user_count) * p.pace, p.pace, 0.2 * p.pace, 12,
            now() - make_interval(secs => 0.5 * p.pace), w.started_at
        FROM workloads w
        CROSS JOIN LATERAL generate_series(0, w.target_user_count - 1) AS u
        CROSS JOIN LATERAL (SELECT CAST(20 + u % 10 AS float8) AS pace) AS p
        """,
        f"""
        INSERT INTO frames (workload_id, number, state, user_id, attempts, final_key,
            assigned_at, rendered_at, last_error)
        SELECT w.id, n,
            CASE WHEN n <= w.rendered_frames THEN 'rendered'
                 WHEN n <= w.rendered_frames + a.assigned THEN 'assigned'
                 ELSE 'pending' END,
            CASE WHEN n <= w.rendered_frames + a.assigned
                 THEN 'user-' || (n % w.target_user_count) END,
            CASE WHEN n <= w.rendered_frames + a.assigned OR ({failed}) THEN 1 ELSE 0 END,
            CASE WHEN n <= w.rendered_frames
                 THEN w.customer_id || '/obj/' || lpad(n::text, 3, '0') || '.png' END,
            CASE WHEN n > w.rendered_frames AND n <= w.rendered_frames + a.assigned
                 THEN now() END,
            CASE WHEN n <= w.rendered_frames THEN now() END,
            CASE WHEN {failed} THEN 'upload refused by user-' || (n % w.target_user_count) END
        FROM workloads w
        CROSS JOIN LATERAL (SELECT CASE WHEN w.total_frames = {big}
            THEN {big_assigned} ELSE {small_assigned} END AS assigned) AS a
        CROSS JOIN LATERAL generate_series(1, w.total_frames) AS n
        """,
        # Exactly as migration 0006 counts the frames rendered before it.
        f"""
        INSERT INTO frame_buckets (workload_id, bucket, rendered)
        SELECT f.workload_id, ((f.number - w.frame_start) / w.frame_step)
            / ((w.total_frames + {grid.GRID_CELLS} - 1) / {grid.GRID_CELLS}), count(*)
        FROM frames f JOIN workloads w ON w.id = f.workload_id
        WHERE f.state = 'rendered' GROUP BY 1, 2
        """,
        f"""
        INSERT INTO workload_events (workload_id, at, kind, frames, detail)
        SELECT id, started_at, '{Kind.STARTED.value}', total_frames,
            'scene Scene, ' || target_user_count || ' users asked for'
        FROM workloads ORDER BY id
        """,
        f"""
        INSERT INTO workload_events (workload_id, at, kind, user_id)
        SELECT workload_id, joined_at, '{Kind.USERS_ADDED.value}', user_id
        FROM workload_users ORDER BY workload_id, user_id
        """,
        f"""
        INSERT INTO workload_events (workload_id, at, kind, user_id, detail)
        SELECT f.workload_id, now(), '{Kind.FRAME_REFUSED.value}',
            'user-' || (f.number % w.target_user_count),
            'frame ' || f.number || ': ' || f.last_error
        FROM frames f JOIN workloads w ON w.id = f.workload_id
        WHERE f.state = 'pending' AND f.last_error IS NOT NULL ORDER BY f.number
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


def remember_last_frames(redis_url: str, rendered: dict[str, int]) -> None:
    """The last frames stored, as the intake notes them, for the dashboard's previews and
    frames per second (workload id -> its last rendered frame number)."""
    client = redis.Redis.from_url(redis_url)
    try:
        latest.remember(
            client,
            [
                (workload, number, f"user-{number % 4}")
                for workload, last in rendered.items()
                for number in range(last - latest.KEEP + 1, last + 1)
            ],
        )
    finally:
        client.close()


def parse_wrk(output: str) -> dict[str, float]:
    """Requests/s, p50/p99 in ms and error counts from `wrk --latency` output (and the
    304 count when the conditional script ran)."""

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
    figures = {
        "rps": float(rate.group(1)),
        "requests": float(total.group(1)),
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "non_2xx": float(non_2xx.group(1)) if non_2xx else 0.0,
        "socket_errors": float(connect + read + write),
        "timeouts": float(timeout),
    }
    answers = re.search(r"answers: (\d+) not modified, (\d+) full", output)
    if answers:
        figures["not_modified"] = float(answers.group(1))
        figures["full"] = float(answers.group(2))
    return figures


def wrk(url: str, seconds: int, script: Path | None = None) -> dict[str, float]:
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
            *(["--script", str(script)] if script else []),
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


@dataclass(frozen=True)
class DashboardLoad:
    """A dashboard URL path, loaded like the status endpoints; `baseline` names the status
    endpoint of the same workload; `conditional` polls with If-None-Match."""

    path: str
    baseline: str
    conditional: bool = False


def run(opts: Options) -> list[Row]:
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (apt-get install -y wrk)")
    rounds = opts.rounds_or(3)
    seconds = 1 if opts.smoke else 5
    workloads, big, big_users = (50, 10_000, 10) if opts.smoke else (1000, 1_000_000, 100)
    document_calls = 3 if opts.smoke else 30
    status_big, status_small = f"status {big:,} frames", "status 100 frames"
    endpoints = {
        status_big: f"/get-workload-status?customer_id={BIG}",
        status_small: f"/get-workload-status?customer_id={SMALL}",
        f"progress {big:,} frames": f"/get-workload-progress?customer_id={BIG}",
        "progress 100 frames": f"/get-workload-progress?customer_id={SMALL}",
    }
    boards = {
        f"dashboard update {big:,} frames": DashboardLoad(
            f"/dashboard/api/workloads/{BIG}", status_big
        ),
        "dashboard update 100 frames": DashboardLoad(
            f"/dashboard/api/workloads/{SMALL}", status_small
        ),
        f"dashboard update {big:,} frames, If-None-Match": DashboardLoad(
            f"/dashboard/api/workloads/{BIG}", status_big, conditional=True
        ),
        f"dashboard page {big:,} frames": DashboardLoad(f"/dashboard/{BIG}", status_big),
        "dashboard page 100 frames": DashboardLoad(f"/dashboard/{SMALL}", status_small),
    }
    ours: dict[str, list[dict[str, float]]] = {name: [] for name in [*endpoints, *boards]}
    bare: dict[str, list[dict[str, float]]] = {name: [] for name in endpoints}
    with tempfile.TemporaryDirectory(prefix="bench-status-", dir=opts.workdir) as folder:
        tmp = Path(folder)
        script = tmp / "conditional.lua"
        script.write_text(_CONDITIONAL_LUA)
        with platform(tmp, users=0) as stack:
            stack.env.pop("WEB_CONCURRENCY", None)  # the Procfile's own default
            started = time.perf_counter()
            seed(stack.env["DATABASE_URL"], workloads=workloads, big=big, big_users=big_users)
            remember_last_frames(
                stack.env["REDIS_URL"],
                {workload_id(0): big // 2, workload_id(1): SMALL_FRAMES // 2},
            )
            log(f"status: seeded {workloads} workloads in {time.perf_counter() - started:.1f}s")
            stack.start("web")
            origin = f"http://127.0.0.1:{stack.env['PORT']}"
            urls = {name: stack.api + path for name, path in endpoints.items()}
            urls.update({name: origin + load.path for name, load in boards.items()})
            bodies = {}
            for path in endpoints.values():
                response = requests.get(stack.api + path, timeout=30)
                response.raise_for_status()
                bodies[PREFIX + path] = response.json()
            sizes = {name: len(requests.get(url, timeout=30).content) for name, url in urls.items()}
            checked = _check_dashboard(origin)
            bodies_file = tmp / "bodies.json"
            bodies_file.write_text(json.dumps(bodies))
            bare_process, bare_api = _bare_web(stack.env, stack.log_dir, bodies_file)
            try:
                wait_until(lambda: _answers(bare_api + endpoints[status_small]), 30, "bare web")
                for name, path in endpoints.items():
                    if len(requests.get(bare_api + path, timeout=30).content) != sizes[name]:
                        raise RuntimeError(f"bare body size differs for {name}")
                    if not opts.smoke:
                        wrk(urls[name], 1)
                        wrk(bare_api + path, 1)
                if not opts.smoke:
                    for name, load in boards.items():
                        wrk(urls[name], 1, script if load.conditional else None)
                for index in range(rounds):
                    for name, path in endpoints.items():
                        ours[name].append(wrk(urls[name], seconds))
                        bare[name].append(wrk(bare_api + path, seconds))
                        log(
                            f"status round {index + 1}/{rounds} {name}: "
                            f"{ours[name][-1]['rps']:,.0f} vs bare {bare[name][-1]['rps']:,.0f} "
                            "req/s"
                        )
                    for name, load in boards.items():
                        ours[name].append(
                            wrk(urls[name], seconds, script if load.conditional else None)
                        )
                        log(
                            f"status round {index + 1}/{rounds} {name}: "
                            f"{ours[name][-1]['rps']:,.0f} vs {load.baseline} "
                            f"{ours[load.baseline][-1]['rps']:,.0f} req/s"
                        )
                if opts.profile:
                    _profile_web(stack, urls, seconds)
            finally:
                bare_process.stop()
            documents = document_times(stack.env, [BIG, SMALL], document_calls)
    rows = _rows(endpoints, ours, bare, sizes, big)
    rows += _dashboard_rows(boards, ours, sizes, big, checked)
    rows.append(_document_row(documents, big, big_users, document_calls))
    return rows


def _check_dashboard(origin: str) -> dict[str, Any]:
    """The seed shows on the dashboard: the grid adds up to the rendered frames, the big
    workload has failed frames waiting. Returns facts for the rows' notes."""
    facts: dict[str, Any] = {}
    for customer in (BIG, SMALL):
        response = requests.get(f"{origin}/dashboard/api/workloads/{customer}", timeout=30)
        response.raise_for_status()
        document = response.json()
        frames = document["grid"]
        if sum(frames["rendered"]) != document["workload"]["rendered_frames"]:
            raise RuntimeError(f"{customer}: grid's rendered cells do not add up")
        facts[customer] = {
            "cells": frames["cells"],
            "failed": sum(frames["failed"]),
            "eta_basis": document["eta"]["eta_basis"],
        }
        if document["eta"]["eta_basis"] != "measured":
            log(f"status: {customer}'s ETA is {document['eta']['eta_basis']}, not measured")
    if not facts[BIG]["failed"]:
        raise RuntimeError(f"{BIG}: no failed frame waiting on the grid")
    return facts


def document_times(env: dict[str, str], customers: list[str], calls: int) -> dict[str, Any]:
    """Milliseconds per document made and encoded (`workload_document`, `Snapshot.of`: what
    a cache miss costs, at most once a second per watched workload), in this process,
    alternating the customers."""
    from supervisor.config import Settings
    from supervisor.dashboard import Snapshot
    from supervisor.dashboard.documents import workload_document
    from supervisor.inline import inline_services

    settings = Settings(
        _env_file=None,
        database_url=env["DATABASE_URL"],
        redis_url=env["REDIS_URL"],
        user_manager_broker_url="memory://",
    )
    sv = inline_services(settings)
    try:
        sizes = {
            customer: len(Snapshot.of(workload_document(sv, customer)).body)
            for customer in customers
        }
        times: dict[str, list[float]] = {customer: [] for customer in customers}
        for _ in range(calls):
            for customer in customers:
                began = time.perf_counter()
                Snapshot.of(workload_document(sv, customer))
                times[customer].append((time.perf_counter() - began) * 1000)
    finally:
        sv.close()
    log(
        "status: document ms (median) "
        + ", ".join(f"{c} {statistics.median(t):.2f}" for c, t in times.items())
    )
    return {"times": times, "sizes": sizes}


def _profile_web(stack, urls: dict[str, str], seconds: int) -> None:  # type: ignore[no-untyped-def]
    """One more, unmeasured, wrk run per endpoint under py-spy (CPU samples only: the
    web worker's idle app threads would drown the rest)."""
    pid = stack.processes["web"].process.pid
    for name, url in urls.items():
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        with recording(pid, f"status-{slug}", idle=False) as output:
            wrk(url, seconds)
        if output is not None and output.exists():
            summary = summarize(output, within="handle_request")
            print_summary(f"web, {name} (CPU)", summary)
            output.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2))


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def _timeouts_row(name: str, ours: list[float], baseline: list[float]) -> Row:
    return Row(
        "status",
        f"{name}: requests over {TIMEOUT_S} s",
        "",
        ours,
        baseline,
        [at_most(0, "none")],
        "left out of wrk's latencies",
    )


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
                [ratio_at_least(THROUGHPUT_RATIO)],
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
                [ratio_at_most(P99_RATIO)],
                note,
            )
        )
        timeouts = [r["timeouts"] for r in ours[name]]
        if any(timeouts):
            rows.append(_timeouts_row(name, timeouts, [r["timeouts"] for r in bare[name]]))
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


def _dashboard_rows(
    boards: dict[str, DashboardLoad],
    ours: dict[str, list[dict[str, float]]],
    sizes: dict[str, int],
    big: int,
    checked: dict[str, Any],
) -> list[Row]:
    """Each dashboard load against our status endpoint of the same workload, same round."""
    rows = []
    for name, load in boards.items():
        figures, baseline = ours[name], ours[load.baseline]
        note = (
            f"baseline column = our {load.baseline} in the same round; {CONNECTIONS} "
            f"connections, body {sizes[name]:,} bytes"
        )
        if load.conditional:
            answered = sum(r.get("not_modified", 0) + r.get("full", 0) for r in figures)
            share = sum(r.get("not_modified", 0) for r in figures) / max(answered, 1)
            note += f"; {share:.1%} of answers were 304"
        rows.append(
            Row(
                "status",
                f"{name}: req/s",
                "/s",
                [r["rps"] for r in figures],
                [r["rps"] for r in baseline],
                [ratio_at_least(DASHBOARD_RATIO)],
                note,
            )
        )
        rows.append(
            Row(
                "status",
                f"{name}: p99",
                "ms",
                [r["p99_ms"] for r in figures],
                [r["p99_ms"] for r in baseline],
                [],
                note,
            )
        )
        timeouts = [r["timeouts"] for r in figures]
        if any(timeouts):
            rows.append(_timeouts_row(name, timeouts, [r["timeouts"] for r in baseline]))
    large, small = f"dashboard update {big:,} frames", "dashboard update 100 frames"
    rows.append(
        Row(
            "status",
            f"dashboard update: req/s {big:,} vs 100 frames",
            "/s",
            [r["rps"] for r in ours[large]],
            [r["rps"] for r in ours[small]],
            [],
            f"baseline column = the 100-frame workload; grid {checked[BIG]['cells']:,} vs "
            f"{checked[SMALL]['cells']} cells, body {sizes[large]:,} vs {sizes[small]:,} "
            f"bytes; ETA {checked[BIG]['eta_basis']}, {checked[BIG]['failed']} failed waiting",
        )
    )
    return rows


def _document_row(documents: dict[str, Any], big: int, big_users: int, calls: int) -> Row:
    times, sizes = documents["times"], documents["sizes"]
    return Row(
        "status",
        f"dashboard document {big:,} vs 100 frames: ms per document",
        "ms",
        times[BIG],
        times[SMALL],
        [],
        f"workload_document + Snapshot.of called directly, {calls} times each (a cache "
        f"miss: at most once a second per watched workload); meant to grow with users "
        f"({big_users}) and frames out with them ({big_users * HELD_PER_USER:,}), not with "
        f"total frames; {sizes[BIG]:,} vs {sizes[SMALL]:,} bytes",
    )
