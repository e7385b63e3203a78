"""intake: `user-frame-rendered` events through the real stack, against a bare consumer.

Procfile processes (release, web, worker, beat) run against the simulator on the real
Postgres, Redis and RabbitMQ (tests/stack.py). Simulated users render instantly
(frame_time 0) and upload 4 KiB images, so the events pile up on the intake queue and the
figure is the supervisor's pace: consume, transfer temp -> final, mark rendered, record in
the catalog (through the outbox).

Baseline, in the same run and on the same broker: a bare kombu consumer that only decodes
and acks the same number of messages of the same shape, published beforehand to a
temporary durable queue as persistent messages.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import requests
from kombu import Connection, Consumer, Exchange, Producer, Queue
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from bench.harness import (
    MiB,
    Options,
    Row,
    RssSampler,
    at_least,
    cpu_seconds,
    log,
    ratio_at_least,
)
from bench.profiling import PROFILE_DIR, print_summary, recording, summarize
from simulator.png import frame_png
from tests import services
from tests.blendgen import blend_with_output, blend_with_range
from tests.stack import ROOT, platform

SOURCE = ROOT / "tests/fixtures/blend/blender-5.0/default_1_250.blend"
IMAGE_BYTES = 4096
PREFETCH = 256  # as tasks/intake.py, so the bare consumer gets the same window
# This process hosts the simulator's four peers and its users' threads. With CPython's
# default 5 ms a catalog request waited behind the users' Python work, and the catalog
# lane (one record per round trip) measured that; real peers are separate processes.
SIMULATOR_SWITCH_SECONDS = 0.0005


def sized_png(blend_path: Path | None, frame: int) -> bytes:
    """The simulator's placeholder PNG padded to IMAGE_BYTES with a tEXt chunk."""
    del blend_path
    png = frame_png(frame)
    overhead = 12 + len(b"Comment\x00")
    filler = max(0, IMAGE_BYTES - len(png) - overhead)
    data = b"Comment\x00" + b"." * filler
    chunk = (
        struct.pack(">I", len(data))
        + b"tEXt"
        + data
        + struct.pack(">I", zlib.crc32(b"tEXt" + data) & 0xFFFFFFFF)
    )
    return png[:-12] + chunk + png[-12:]


def event_body(session_id: str, frame: int) -> dict[str, object]:
    """A `user-frame-rendered` body exactly as the simulator publishes it."""
    return {
        "topic": "user-frame-rendered",
        "supervisor-id": session_id,
        "data": {
            "user-id": "sim-user-001",
            "frame-number": frame,
            "image-extension": "png",
            "image-binary-path": f"temp/{session_id}/sim-user-001/{frame}-0123abcd.png",
        },
    }


def bare_consume_rate(amqp_url: str, count: int) -> float:
    """Messages per second a consumer that only decodes and acks reaches on this broker."""
    session_id = uuid.uuid4().hex
    queue = Queue(f"bench-bare-intake-{session_id[:8]}", durable=True, auto_delete=False)
    with Connection(amqp_url, heartbeat=0) as connection:
        channel = connection.channel()
        bound = queue(channel)
        bound.declare()
        try:
            producer = Producer(channel, exchange=Exchange(""), serializer="json")
            for frame in range(1, count + 1):
                producer.publish(
                    event_body(session_id, frame), routing_key=queue.name, delivery_mode=2
                )
            deadline = time.monotonic() + 60
            while bound.queue_declare(passive=True).message_count < count:
                if time.monotonic() > deadline:
                    raise RuntimeError("bare baseline: messages did not reach the queue")
                time.sleep(0.05)
            done = 0

            def on_message(message) -> None:  # type: ignore[no-untyped-def]
                nonlocal done
                json.loads(message.body)
                message.ack()
                done += 1

            consumer = Consumer(
                channel, queues=[bound], on_message=on_message, prefetch_count=PREFETCH
            )
            started = time.perf_counter()
            with consumer:
                while done < count:
                    connection.drain_events(timeout=10)
            seconds = time.perf_counter() - started
        finally:
            bound.delete()
            channel.close()
    return count / seconds


def _rendered_span(database_url: str, customer: str) -> tuple[int, float, float]:
    """(rendered frames, epoch of the first, epoch of the last) from `frames.rendered_at`."""
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            row = connection.execute(
                text(
                    "SELECT count(*), extract(epoch FROM min(f.rendered_at)), "
                    "extract(epoch FROM max(f.rendered_at)) FROM frames f "
                    "JOIN workloads w ON w.id = f.workload_id "
                    "WHERE w.customer_id = :customer AND f.state = 'rendered'"
                ),
                {"customer": customer},
            ).one()
    finally:
        engine.dispose()
    return int(row[0]), float(row[1]), float(row[2])


def _catalog_count(stack, customer: str) -> int:  # type: ignore[no-untyped-def]
    return stack.simulator.catalog_count(customer)


def _one_round(stack, customer: str, frames: int, blend: Path) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Start a workload of `frames` frames and wait for every catalog record."""
    stack.simulator.add_object(customer, "obj", blend)
    cpu_before = _cpu(stack)
    began = time.time()
    response = requests.post(
        f"{stack.api}/start-workload",
        data={"customer_id": customer, "object_id": "obj"},
        timeout=30,
    )
    if response.status_code != 200:
        raise RuntimeError(f"start-workload: {response.status_code} {response.text[:200]}")
    deadline = time.monotonic() + max(120.0, frames / 5)
    while _catalog_count(stack, customer) < frames:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"intake: {_catalog_count(stack, customer)}/{frames} catalog records in time\n"
                + stack.logs()
            )
        time.sleep(0.1)
    catalog_done = time.time()
    cpu_after = _cpu(stack)
    status = stack.wait_completed(customer, timeout=60)
    if status["workload_status"] != "completed":
        raise RuntimeError(f"intake: workload ended {status}")
    count, first, last = _rendered_span(stack.env["DATABASE_URL"], customer)
    figures = {
        "to_catalog": frames / (catalog_done - first),
        "marked": (count - 1) / (last - first) if last > first else float("nan"),
        "wall": frames / (catalog_done - began),
    }
    for group, seconds in cpu_after.items():
        figures[f"cpu:{group}"] = (seconds - cpu_before.get(group, 0.0)) / frames * 1000
    return figures


def _cpu(stack) -> dict[str, float]:  # type: ignore[no-untyped-def]
    return cpu_seconds(
        trees={name: process.process.pid for name, process in stack.processes.items()},
        single={"bench process (simulator)": os.getpid()},
        names={
            "postgres (all)": ("postgres",),
            "rabbitmq": ("beam.smp",),
            "redis": ("redis-server",),
        },
    )


@contextmanager
def _switch_interval(seconds: float) -> Iterator[None]:
    """CPython's thread switch interval for this process while the block runs."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def run(opts: Options) -> list[Row]:
    frames, users = (200, 10) if opts.smoke else (5000, 100)
    rounds = opts.rounds_or(2)
    amqp_url = services.rabbitmq_url()
    ours: dict[str, list[float]] = {}
    bare: list[float] = []
    rss: list[float] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-intake-", dir=opts.workdir) as folder,
        mock.patch("simulator.core.render_frame", sized_png),
        _switch_interval(SIMULATOR_SWITCH_SECONDS),
    ):
        tmp = Path(folder)
        # The scene writes the placeholder's 160x90 PNG, so every frame passes the checks.
        blend = blend_with_output(
            blend_with_range(SOURCE, tmp / "range.blend", 1, frames),
            tmp / "intake.blend",
            width=160,
            height=90,
        )
        knobs = {"users": users, "frame_time": 0.0, "jitter": 0.0}
        with platform(tmp, **knobs) as stack:
            stack.env["INITIAL_USER_COUNT"] = str(users)
            stack.start("web", "worker", "beat")
            worker_pid = stack.processes["worker"].process.pid
            time.sleep(2)  # let the worker's consumers come up before the first start
            for index in range(rounds):
                bare.append(bare_consume_rate(amqp_url, frames))
                log(f"intake round {index + 1}/{rounds}: bare {bare[-1]:,.0f} msg/s")
                sampler = RssSampler(worker_pid, tree=True, every=0.1)
                sampler.start()
                figures = _one_round(stack, f"intake-{index}", frames, blend)
                rss.append(sampler.stop() / MiB)
                for key, value in figures.items():
                    ours.setdefault(key, []).append(value)
                log(f"intake round {index + 1}/{rounds}: {figures['to_catalog']:.1f} events/s")
            if opts.profile:
                _profiled_round(stack, worker_pid, frames, blend)
    target = [at_least(1000, ">= 1,000/s"), ratio_at_least(0.3)]
    note = f"{frames} events, {users} users, 4 KiB images"
    rows = [
        Row(
            "intake",
            "events/s, first stored -> last catalog record",
            "/s",
            ours["to_catalog"],
            bare,
            target,
            note,
        ),
        Row(
            "intake",
            "events/s, first -> last marked rendered",
            "/s",
            ours["marked"],
            bare,
            target,
            note,
        ),
        Row(
            "intake",
            "events/s, start-workload -> last catalog record",
            "/s",
            ours["wall"],
            bare,
            [],
            note,
        ),
        Row("intake", "worker RSS peak (process tree)", "MiB", rss, None, [], note),
    ]
    for key, values in sorted(ours.items()):
        if key.startswith("cpu:"):
            rows.append(
                Row(
                    "intake",
                    f"CPU s per 1,000 events: {key[4:]}",
                    "s",
                    values,
                    None,
                    [],
                    "servers are shared with anything else running on the machine",
                )
            )
    return rows


def _profiled_round(stack, worker_pid: int, frames: int, blend: Path) -> None:  # type: ignore[no-untyped-def]
    """Two more rounds under py-spy, kept out of the figures: wall time (idle included) of
    the worker, which shows what a task waits on; then CPU time (busy samples only) of the
    worker and of this process, which hosts the simulator, and shows what costs cores."""
    summaries: dict[str, object] = {}
    with recording(worker_pid, "intake-worker") as output:
        _one_round(stack, "intake-profiled", frames, blend)
    if output is not None and output.exists():
        summaries["tasks (wall time)"] = summarize(output, within="fast_trace_task")
        summaries["intake consumer (wall time)"] = summarize(
            output, within="IntakeConsumer.on_message"
        )
    with (
        recording(worker_pid, "intake-worker-cpu", idle=False) as worker_cpu,
        recording(os.getpid(), "intake-simulator-cpu", idle=False, children=False) as simulator_cpu,
    ):
        _one_round(stack, "intake-profiled-cpu", frames, blend)
    if worker_cpu is not None and worker_cpu.exists():
        summaries["worker (CPU time)"] = summarize(worker_cpu)
    if simulator_cpu is not None and simulator_cpu.exists():
        summaries["bench process: simulator (CPU time)"] = summarize(simulator_cpu)
    for title, summary in summaries.items():
        print_summary(f"intake {title}", summary)
    if summaries:
        PROFILE_DIR.mkdir(parents=True, exist_ok=True)
        (PROFILE_DIR / "intake.summary.json").write_text(json.dumps(summaries, indent=2))
