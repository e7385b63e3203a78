"""intake: `user-frame-rendered` events through the real stack, against a real ceiling.

Procfile processes (release, web, worker, beat) run against the simulator on the real
Postgres, Redis and RabbitMQ (tests/stack.py). Simulated users render instantly
(frame_time 0) and upload 4 KiB images, so the events pile up on the intake queue and the
figure is the supervisor's pace: consume, transfer temp -> final, mark rendered, record in
the catalog. Two loads, the one an outside tester used and a many-workload one:

* A: one workload of 2,000 frames, 50 users;
* B: 20 workloads of 200 frames, started together, the same 50 users shared.

While each runs, a poller asks get-workload-status for every workload `POLL_HZ` times a
second, as the outside tester did. CPU is accounted per process group over the same
window (start-workload -> last catalog record).

Baselines, side by side in each round on the same box:

* the ceiling: a consumer in a child process (its CPU is its own), no database, that for
  each event makes the calls the supervisor makes, with keep-alive, against the same
  simulator: retrieve-temp streamed into store-image, delete-temp, add-rendered-image;
* decode-and-ack: a consumer that only decodes and acks messages of the same shape.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import socket
import struct
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from unittest import mock
from urllib.parse import quote, urlsplit

import requests
from kombu import Connection, Consumer, Exchange, Producer, Queue
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool
from urllib3.fields import RequestField

from bench.harness import (
    MiB,
    Options,
    Row,
    RssSampler,
    at_least,
    at_most,
    cpu_seconds,
    log,
    ratio_at_least,
    run_child,
)

IMAGE_BYTES = 4096
PREFETCH = 256  # as tasks/intake.py, so the bare consumers get the same window
POLL_HZ = 5.0  # get-workload-status calls per second and workload, as the outside tester
CEILING_THREADS = 8
# This process hosts the simulator's four peers and its users' threads. With CPython's
# default 5 ms a catalog request waited behind the users' Python work, and the catalog
# lane (one record per round trip) measured that; real peers are separate processes.
SIMULATOR_SWITCH_SECONDS = 0.0005
BLOB = "/api/blob-service"
CATALOG = "/api/mongodb-service/blender-objects"
UPLOAD_CHUNK_BYTES = 2 * 1024 * 1024  # as supervisor/peers/multipart.py
ROUND_TRIP_CALLS = "retrieve-temp -> store-image, delete-temp, add-rendered-image"


@dataclass(frozen=True)
class Scenario:
    """`workloads` workloads of `frames` frames each, started together."""

    key: str
    workloads: int
    frames: int
    users: int

    @property
    def total(self) -> int:
        return self.workloads * self.frames

    @property
    def label(self) -> str:
        return f"{self.key}: {self.workloads} x {self.frames:,}"

    @property
    def note(self) -> str:
        return (
            f"{self.workloads} workload(s) x {self.frames:,} frames, {self.users} users, "
            "4 KiB PNGs, frame_time 0"
        )


def scenarios(smoke: bool) -> tuple[Scenario, Scenario]:
    if smoke:
        return Scenario("A", 1, 200, 10), Scenario("B", 4, 50, 10)
    return Scenario("A", 1, 2000, 50), Scenario("B", 20, 200, 50)


def sized_png(blend_path: Path | None, frame: int) -> bytes:
    """The simulator's placeholder PNG padded to IMAGE_BYTES with a tEXt chunk."""
    from simulator.png import frame_png

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


def event_body(session_id: str, frame: int, temp_key: str | None = None) -> dict[str, object]:
    """A `user-frame-rendered` body exactly as the simulator publishes it."""
    return {
        "topic": "user-frame-rendered",
        "supervisor-id": session_id,
        "data": {
            "user-id": "sim-user-001",
            "frame-number": frame,
            "image-extension": "png",
            "image-binary-path": temp_key or f"temp/{session_id}/sim-user-001/{frame}-0123abcd.png",
        },
    }


@contextmanager
def filled_queue(amqp_url: str, bodies: list[dict[str, object]]) -> Iterator[str]:
    """A temporary durable queue holding `bodies` as persistent messages; deleted on exit."""
    name = f"bench-bare-intake-{uuid.uuid4().hex[:8]}"
    bound_queue = Queue(name, durable=True, auto_delete=False)
    with Connection(amqp_url, heartbeat=0) as connection:
        channel = connection.channel()
        bound = bound_queue(channel)
        bound.declare()
        try:
            producer = Producer(channel, exchange=Exchange(""), serializer="json")
            for body in bodies:
                producer.publish(body, routing_key=name, delivery_mode=2)
            deadline = time.monotonic() + 60
            while bound.queue_declare(passive=True).message_count < len(bodies):
                if time.monotonic() > deadline:
                    raise RuntimeError("baseline: messages did not reach the queue")
                time.sleep(0.05)
            yield name
        finally:
            bound.delete()
            channel.close()


def bare_consume_rate(amqp_url: str, count: int) -> float:
    """Messages per second a consumer that only decodes and acks reaches on this broker."""
    session_id = uuid.uuid4().hex
    bodies = [event_body(session_id, frame) for frame in range(1, count + 1)]
    with (
        filled_queue(amqp_url, bodies) as name,
        Connection(amqp_url, heartbeat=0) as connection,
    ):
        channel = connection.channel()
        done = 0

        def on_message(message) -> None:  # type: ignore[no-untyped-def]
            nonlocal done
            json.loads(message.body)
            message.ack()
            done += 1

        bound = Queue(name, durable=True, auto_delete=False)(channel)
        consumer = Consumer(channel, queues=[bound], on_message=on_message, prefetch_count=PREFETCH)
        started = time.perf_counter()
        with consumer:
            while done < count:
                connection.drain_events(timeout=10)
        seconds = time.perf_counter() - started
        channel.close()
    return count / seconds


# ------------------------------------------------------------------------ the ceiling


def _multipart_frame(
    fields: list[tuple[str, str]], filename: str, boundary: str
) -> tuple[bytes, bytes]:
    """Before and after the file part of store-image's body, as supervisor/peers/multipart.py
    renders it (text fields first, then the `image` part, headers from urllib3)."""
    delimiter = f"--{boundary}\r\n".encode("ascii")
    head = bytearray()
    for name, value in fields:
        part = RequestField(name=name, data=value)
        part.make_multipart()
        head += delimiter + part.render_headers().encode("utf-8") + value.encode("utf-8") + b"\r\n"
    part = RequestField(name="image", data=b"", filename=filename)
    part.make_multipart(content_type="image/png")
    head += delimiter + part.render_headers().encode("utf-8")
    return bytes(head), f"\r\n--{boundary}--\r\n".encode("ascii")


class _NoDelayConnection(http.client.HTTPConnection):
    """TCP_NODELAY, as urllib3 sets it for the supervisor: a body sent in several writes
    does not wait for the peer's delayed ACK."""

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Peers:
    """Two keep-alive connections to the simulator for one thread: a retrieve-temp body
    stays open on one while it is streamed into store-image on the other."""

    def __init__(self, host: str, port: int) -> None:
        self.read = _NoDelayConnection(host, port, timeout=30)
        self.write = _NoDelayConnection(host, port, timeout=30)

    @staticmethod
    def _answer(connection: http.client.HTTPConnection, what: str, ok: tuple[int, ...]) -> None:
        response = connection.getresponse()
        body = response.read()
        if response.status not in ok:
            raise RuntimeError(f"ceiling {what}: HTTP {response.status} {body[:200]!r}")

    def frame(self, body: bytes, sessions: dict[str, list[str]]) -> None:
        event = json.loads(body)
        data = event["data"]
        customer, object_id = sessions[event["supervisor-id"]]
        temp_key, frame = data["image-binary-path"], int(data["frame-number"])
        extension = data["image-extension"]
        final_key = f"{customer}/{object_id}/{frame:03d}.{extension}"
        quoted = quote(temp_key, safe="")

        self.read.request("GET", f"{BLOB}/retrieve-temp?key={quoted}")
        temp = self.read.getresponse()
        if temp.status != 200:
            raise RuntimeError(f"ceiling retrieve-temp: HTTP {temp.status} {temp.read()[:200]!r}")
        size = int(temp.getheader("Content-Length") or 0)
        boundary = uuid.uuid4().hex
        head, tail = _multipart_frame(
            [("bucket", "rendered-frames"), ("key", final_key), ("type", extension)],
            PurePosixPath(final_key).name,
            boundary,
        )
        self.write.putrequest("POST", f"{BLOB}/store-image")
        self.write.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
        self.write.putheader("Content-Length", str(len(head) + size + len(tail)))
        self.write.endheaders(head)
        left = size
        while left:
            chunk = temp.read(min(left, UPLOAD_CHUNK_BYTES))
            if not chunk:
                raise RuntimeError("ceiling retrieve-temp: body ended early")
            left -= len(chunk)
            self.write.send(chunk)
        self.write.send(tail)
        self._answer(self.write, "store-image", (200, 201, 204))

        self.read.request("DELETE", f"{BLOB}/delete-temp?key={quoted}")
        self._answer(self.read, "delete-temp", (200, 204, 404))

        record = {
            "objectId": object_id,
            "customerId": customer,
            "frameNumber": frame,
            "imageFilePath": final_key,
        }
        payload = json.dumps(record, ensure_ascii=False).encode("utf-8")
        self.write.request(
            "POST",
            f"{CATALOG}/add-rendered-image",
            body=payload,
            headers={"Content-Type": "application/json"},
        )
        self._answer(self.write, "add-rendered-image", (200, 201, 204))


def ceiling_child(args: dict[str, Any]) -> dict[str, float]:
    """Consume `count` events from `queue` and make the supervisor's per-frame calls for
    each on `threads` threads; acks stay on the consumer's thread, as kombu wants."""
    url = urlsplit(args["base_url"])
    host, port = url.hostname or "127.0.0.1", url.port or 80
    sessions: dict[str, list[str]] = args["sessions"]
    count: int = args["count"]
    local = threading.local()

    def handle(body: bytes) -> None:
        peers = getattr(local, "peers", None)
        if peers is None:
            peers = local.peers = _Peers(host, port)
        peers.frame(body, sessions)

    finished: queue.SimpleQueue[tuple[Any, Future[None]]] = queue.SimpleQueue()
    acked = 0
    with (
        ThreadPoolExecutor(args["threads"]) as pool,
        Connection(args["amqp_url"], heartbeat=0) as connection,
    ):
        channel = connection.channel()

        def on_message(message) -> None:  # type: ignore[no-untyped-def]
            future = pool.submit(handle, message.body)
            future.add_done_callback(lambda f: finished.put((message, f)))

        bound = Queue(args["queue"], durable=True, auto_delete=False)(channel)
        consumer = Consumer(channel, queues=[bound], on_message=on_message, prefetch_count=PREFETCH)
        cpu_started, started = time.process_time(), time.perf_counter()
        with consumer:
            while acked < count:
                with suppress(TimeoutError):
                    connection.drain_events(timeout=0.005)
                while not finished.empty():
                    message, future = finished.get()
                    future.result()
                    message.ack()
                    acked += 1
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        channel.close()
    return {"frames": count, "seconds": seconds, "cpu_seconds": cpu}


def ceiling_round(stack, scenario: Scenario, tag: str, threads: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Put the scenario's temp images in the simulator, queue their events, and let the
    ceiling child work them off; its frames/s and CPU, the simulator's and the broker's."""
    from simulator.blobs import TEMP_BUCKET

    amqp_url = stack.env["USER_MANAGER_BROKER_URL"]
    sessions = {uuid.uuid4().hex: [f"{tag}-{index}", "obj"] for index in range(scenario.workloads)}
    bodies: list[dict[str, object]] = []
    for session_id in sessions:
        for frame in range(1, scenario.frames + 1):
            key = f"temp/{session_id}/sim-user-{frame % scenario.users:03d}/{frame}-0123abcd.png"
            stack.simulator.write_blob(TEMP_BUCKET, key, sized_png(None, frame))
            bodies.append(event_body(session_id, frame, key))
    with filled_queue(amqp_url, bodies) as name:
        before = _ceiling_cpu()
        child = run_child(
            "bench.intake",
            {
                "base_url": stack.simulator.base_url,
                "amqp_url": amqp_url,
                "queue": name,
                "count": len(bodies),
                "threads": threads,
                "sessions": sessions,
            },
            timeout=max(120.0, len(bodies) / 20),
        )
        after = _ceiling_cpu()
    recorded = sum(stack.simulator.catalog_count(customer) for customer, _ in sessions.values())
    if recorded != len(bodies):
        raise RuntimeError(f"ceiling: {recorded}/{len(bodies)} catalog records")
    figures = {
        "rate": child["frames"] / child["seconds"],
        "cpu:ceiling consumer (child)": child["cpu_seconds"] / child["frames"] * 1000,
    }
    for group, seconds in after.items():
        figures[f"cpu:{group}"] = (seconds - before.get(group, 0.0)) / child["frames"] * 1000
    return figures


def _ceiling_cpu() -> dict[str, float]:
    return cpu_seconds(
        trees={},
        single={"bench process (simulator)": os.getpid()},
        names={"rabbitmq": ("beam.smp",)},
    )


# ------------------------------------------------------------------------ ours


class StatusPoller(threading.Thread):
    """get-workload-status for each customer, `hz` times a second each, on one keep-alive
    session, as an outside client watching its workloads."""

    def __init__(self, api: str, customers: list[str], hz: float) -> None:
        super().__init__(daemon=True, name="status-poller")
        self.api = api
        self.customers = customers
        self.period = 1.0 / (hz * len(customers)) if hz > 0 else 0.0
        self.calls = 0
        self.failures = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        if not self.period:
            return
        session = requests.Session()
        began = time.monotonic()
        while not self._stop_event.is_set():
            customer = self.customers[self.calls % len(self.customers)]
            try:
                response = session.get(
                    f"{self.api}/get-workload-status", params={"customer_id": customer}, timeout=10
                )
                response.content  # noqa: B018 (read the body, as a client would)
            except requests.RequestException:
                self.failures += 1
            self.calls += 1
            self._stop_event.wait(max(0.0, began + self.calls * self.period - time.monotonic()))
        session.close()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=15)


def cpu_groups(stack) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """CPU seconds so far of each Procfile process tree, this process and the servers."""
    return cpu_seconds(
        trees={name: process.process.pid for name, process in stack.processes.items()},
        single={"bench process (simulator, poller)": os.getpid()},
        names={
            "postgres (all)": ("postgres",),
            "rabbitmq": ("beam.smp",),
            "redis": ("redis-server",),
        },
    )


def _rendered_first(database_url: str, customers: list[str]) -> float:
    """Epoch of the first frame marked rendered (`frames.rendered_at`) of these customers."""
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            first = connection.execute(
                text(
                    "SELECT extract(epoch FROM min(f.rendered_at)) FROM frames f "
                    "JOIN workloads w ON w.id = f.workload_id "
                    "WHERE w.customer_id = ANY(:customers) AND f.state = 'rendered'"
                ),
                {"customers": customers},
            ).scalar_one()
    finally:
        engine.dispose()
    return float(first)


def _last_catalog_epoch(stack, customers: list[str]) -> float:  # type: ignore[no-untyped-def]
    """Epoch at which the simulator received the last catalog record of these customers."""
    wanted = set(customers)
    records = stack.simulator.catalog_records()
    arrivals = stack.simulator.catalog_arrival_times()
    last = max(
        at
        for record, at in zip(records, arrivals, strict=False)
        if str(record.get("customerId")) in wanted
    )
    return time.time() - (time.monotonic() - last)


def _start_workload(api: str, customer: str) -> None:
    response = requests.post(
        f"{api}/start-workload", data={"customer_id": customer, "object_id": "obj"}, timeout=60
    )
    if response.status_code != 200:
        raise RuntimeError(f"start-workload: {response.status_code} {response.text[:200]}")


def run_scenario(
    stack,  # type: ignore[no-untyped-def]
    scenario: Scenario,
    tag: str,
    blend: Path,
    *,
    poll_hz: float = POLL_HZ,
    database_stats: bool = False,
) -> dict[str, float]:
    """Start the scenario's workloads together, poll their status meanwhile, and wait for
    every catalog record; frames/s and CPU ms per frame by process group. With
    `database_stats`, also Postgres commits and row writes per frame, read once the
    backends have flushed their statistics (DATABASE_STATS_SETTLE_S later)."""
    customers = [f"{tag}-{index}" for index in range(scenario.workloads)]
    for customer in customers:
        stack.simulator.add_object(customer, "obj", blend)
    poller = StatusPoller(stack.api, customers, poll_hz)
    database_before = _database_work(stack.env["DATABASE_URL"]) if database_stats else {}
    cpu_before = cpu_groups(stack)
    began = time.time()
    poller.start()
    with ThreadPoolExecutor(len(customers)) as pool:
        list(pool.map(lambda customer: _start_workload(stack.api, customer), customers))

    def recorded() -> int:
        return sum(stack.simulator.catalog_count(customer) for customer in customers)

    deadline = time.monotonic() + max(120.0, scenario.total / 5)
    while recorded() < scenario.total:
        if time.monotonic() > deadline:
            poller.stop()
            raise RuntimeError(
                f"intake: {recorded()}/{scenario.total} catalog records in time\n" + stack.logs()
            )
        time.sleep(0.05)
    cpu_after = cpu_groups(stack)
    window_end = time.time()
    poller.stop()
    for customer in customers:
        status = stack.wait_completed(customer, timeout=60)
        if status["workload_status"] != "completed":
            raise RuntimeError(f"intake: workload of {customer} ended {status}")
    if database_stats:
        time.sleep(DATABASE_STATS_SETTLE_S)
        database_after = _database_work(stack.env["DATABASE_URL"])
        for name, count in database_after.items():
            figures_db = (count - database_before[name]) / scenario.total
            database_after[name] = figures_db
    last = _last_catalog_epoch(stack, customers)
    first = _rendered_first(stack.env["DATABASE_URL"], customers)
    window = window_end - began
    figures = {
        "to_catalog": scenario.total / (last - first),
        "wall": scenario.total / (last - began),
        "window_s": window,
        "status_polls_per_s": poller.calls / window,
    }
    total_cpu = 0.0
    for group, seconds in cpu_after.items():
        used = seconds - cpu_before.get(group, 0.0)
        total_cpu += used
        figures[f"cpu:{group}"] = used / scenario.total * 1000
    figures["cpu_total_s"] = total_cpu
    figures["cpu:all processes"] = total_cpu / scenario.total * 1000
    if database_stats:
        figures.update({f"db:{name}": per_frame for name, per_frame in database_after.items()})
    return figures


# A Postgres 15 backend flushes its statistics at most once a second, and an idle one
# within ten seconds: the counts are complete this long after the last transaction.
DATABASE_STATS_SETTLE_S = 11.0


def _database_work(database_url: str) -> dict[str, float]:
    """The stack database's commits and row writes so far (pg_stat_database)."""
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_stat_force_next_flush()"))
            row = connection.execute(
                text(
                    "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted "
                    "FROM pg_stat_database WHERE datname = current_database()"
                )
            ).one()
    finally:
        engine.dispose()
    return {"commits": float(row[0]), "row writes": float(row[1])}


def intake_blend(tmp: Path, frames: int) -> Path:
    """A scene of `frames` frames that writes the placeholder's 160x90 PNG, so every frame
    passes the checks."""
    from tests.blendgen import blend_with_output, blend_with_range
    from tests.stack import ROOT

    source = ROOT / "tests/fixtures/blend/blender-5.0/default_1_250.blend"
    return blend_with_output(
        blend_with_range(source, tmp / f"range-{frames}.blend", 1, frames),
        tmp / f"intake-{frames}.blend",
        width=160,
        height=90,
    )


def wait_for_consumers(stack, count: int, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    """Until `count` consumers listen on the intake queue (each worker has one)."""
    name = stack.env["INTAKE_QUEUE"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with Connection(stack.env["USER_MANAGER_BROKER_URL"], heartbeat=0) as connection:
                found = connection.default_channel.queue_declare(queue=name, passive=True)
                if found.consumer_count >= count:
                    return
        except Exception:  # noqa: BLE001 (the queue is declared by the worker once it is up)
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{count} consumer(s) on {name} not up in {timeout}s\n" + stack.logs())


@contextmanager
def simulated_stack(tmp: Path, users: int) -> Iterator[Any]:
    """The Procfile stack with the simulator's users rendering instantly 4 KiB PNGs."""
    from tests.stack import platform

    with (
        mock.patch("simulator.core.render_frame", sized_png),
        _switch_interval(SIMULATOR_SWITCH_SECONDS),
        platform(tmp, users=users, frame_time=0.0, jitter=0.0) as stack,
    ):
        stack.env["INITIAL_USER_COUNT"] = str(users)
        yield stack


@contextmanager
def _switch_interval(seconds: float) -> Iterator[None]:
    """CPython's thread switch interval for this process while the block runs."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def run(opts: Options, *, poll_hz: float = POLL_HZ, threads: int = CEILING_THREADS) -> list[Row]:
    from tests import services

    loads = scenarios(opts.smoke)
    rounds = opts.rounds_or(2)
    amqp_url = services.rabbitmq_url()
    ours: dict[str, dict[str, list[float]]] = {s.key: {} for s in loads}
    ceiling: dict[str, dict[str, list[float]]] = {s.key: {} for s in loads}
    rss: dict[str, list[float]] = {s.key: [] for s in loads}
    bare: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-intake-", dir=opts.workdir) as folder:
        tmp = Path(folder)
        blends = {s.key: intake_blend(tmp, s.frames) for s in loads}
        with simulated_stack(tmp, max(s.users for s in loads)) as stack:
            stack.start("web", "worker", "beat")
            worker_pid = stack.processes["worker"].process.pid
            wait_for_consumers(stack, 1)
            for index in range(rounds):
                bare.append(bare_consume_rate(amqp_url, loads[0].total))
                log(f"intake round {index + 1}/{rounds}: decode-and-ack {bare[-1]:,.0f} msg/s")
                for scenario in loads:
                    tag = f"{scenario.key.lower()}{index}"
                    found = ceiling_round(stack, scenario, f"ceiling-{tag}", threads)
                    for key, value in found.items():
                        ceiling[scenario.key].setdefault(key, []).append(value)
                    sampler = RssSampler(worker_pid, tree=True, every=0.1)
                    sampler.start()
                    figures = run_scenario(
                        stack,
                        scenario,
                        f"intake-{tag}",
                        blends[scenario.key],
                        poll_hz=poll_hz,
                        database_stats=not opts.smoke,
                    )
                    rss[scenario.key].append(sampler.stop() / MiB)
                    for key, value in figures.items():
                        ours[scenario.key].setdefault(key, []).append(value)
                    log(
                        f"intake round {index + 1}/{rounds} {scenario.label}: ceiling "
                        f"{found['rate']:,.0f}/s, ours {figures['to_catalog']:,.0f}/s, worker "
                        f"{figures['cpu:worker']:.2f} ms/frame, "
                        f"{figures['status_polls_per_s']:.1f} status polls/s"
                    )
            if opts.profile:
                for scenario in loads:
                    _profiled_round(stack, worker_pid, scenario, blends[scenario.key], poll_hz)
    rows = [
        Row(
            "intake",
            "decode-and-ack consumer, msg/s",
            "/s",
            bare,
            None,
            [],
            f"{loads[0].total:,} persistent messages, prefetch {PREFETCH}",
        )
    ]
    for scenario in loads:
        rows += _scenario_rows(scenario, ours[scenario.key], ceiling[scenario.key], bare, threads)
        rows.append(
            Row(
                "intake",
                f"{scenario.label}: worker RSS peak (process tree)",
                "MiB",
                rss[scenario.key],
                None,
                [],
                scenario.note,
            )
        )
    return rows


def _scenario_rows(
    scenario: Scenario,
    ours: dict[str, list[float]],
    ceiling: dict[str, list[float]],
    bare: list[float],
    threads: int,
) -> list[Row]:
    label, note = scenario.label, scenario.note
    ceiling_note = f"{ROUND_TRIP_CALLS}; {threads} threads, keep-alive, no database"
    rows = [
        Row(
            "intake",
            f"{label}: frames/s, first stored -> last catalog record (vs ceiling)",
            "/s",
            ours["to_catalog"],
            ceiling["rate"],
            [ratio_at_least(0.5), at_least(500, ">= 500/s")],
            note,
        ),
        Row(
            "intake",
            f"{label}: frames/s, start-workload -> last catalog record (vs ceiling)",
            "/s",
            ours["wall"],
            ceiling["rate"],
            [],
            note,
        ),
        Row(
            "intake",
            f"{label}: frames/s to catalog vs decode-and-ack",
            "/s",
            ours["to_catalog"],
            bare,
            [],
            note,
        ),
        Row(
            "intake",
            f"{label}: ceiling frames/s (bare consumer) vs decode-and-ack",
            "/s",
            ceiling["rate"],
            bare,
            [],
            ceiling_note,
        ),
        Row(
            "intake",
            f"{label}: worker CPU ms per frame (vs ceiling consumer's)",
            "ms",
            ours["cpu:worker"],
            ceiling["cpu:ceiling consumer (child)"],
            [at_most(2.0, "<= 2 ms")],
            note,
        ),
    ]
    # (figures, key prefix, key already shown, measure's name, unit, note)
    listed = (
        (ours, "cpu:", "cpu:worker", "CPU ms per frame, {}", "ms", "servers are shared"),
        (ours, "db:", None, "Postgres {} per frame", "", "pg_stat_database, start -> completed"),
        (
            ceiling,
            "cpu:",
            "cpu:ceiling consumer (child)",
            "ceiling CPU ms per frame, {}",
            "ms",
            ceiling_note,
        ),
    )
    for figures, prefix, shown, measure, unit, about in listed:
        for key, values in sorted(figures.items()):
            if key.startswith(prefix) and key != shown:
                name = measure.format(key.removeprefix(prefix))
                rows.append(Row("intake", f"{label}: {name}", unit, values, None, [], about))
    rows.append(
        Row(
            "intake",
            f"{label}: status polls/s during the run",
            "/s",
            ours["status_polls_per_s"],
            None,
            [],
            "get-workload-status, one keep-alive client",
        )
    )
    return rows


def _profiled_round(
    stack,  # type: ignore[no-untyped-def]
    worker_pid: int,
    scenario: Scenario,
    blend: Path,
    poll_hz: float,
) -> None:
    """One more round of `scenario` under py-spy, kept out of the figures: CPU time (the
    GIL holder's samples) of the worker and of this process, which hosts the simulator.
    Files and summary are named after the scenario (intake-A.summary.json, ...)."""
    from bench.profiling import PROFILE_DIR, print_summary, recording, summarize

    summaries: dict[str, object] = {}
    with (
        recording(
            worker_pid, f"intake-{scenario.key}-worker-cpu", idle=False, gil=True
        ) as worker_cpu,
        recording(
            os.getpid(),
            f"intake-{scenario.key}-simulator-cpu",
            idle=False,
            children=False,
            gil=True,
        ) as simulator,
    ):
        run_scenario(stack, scenario, f"intake-profiled-{scenario.key}", blend, poll_hz=poll_hz)
    if worker_cpu is not None and worker_cpu.exists():
        summaries["worker (CPU time)"] = summarize(worker_cpu)
        summaries["worker tasks (CPU time)"] = summarize(worker_cpu, within="fast_trace_task")
        summaries["worker intake consumer (CPU time)"] = summarize(
            worker_cpu, within="IntakeConsumer."
        )
    if simulator is not None and simulator.exists():
        summaries["bench process: simulator (CPU time)"] = summarize(simulator)
    for title, summary in summaries.items():
        print_summary(f"intake {scenario.label} {title}", summary)
    if summaries:
        PROFILE_DIR.mkdir(parents=True, exist_ok=True)
        summary_path = PROFILE_DIR / f"intake-{scenario.key}.summary.json"
        summary_path.write_text(json.dumps(summaries, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the intake ceiling consumer (a child)")
    parser.add_argument("--child", required=True, help="JSON arguments")
    print(json.dumps(ceiling_child(json.loads(parser.parse_args().child))))
