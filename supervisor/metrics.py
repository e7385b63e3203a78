"""Prometheus metrics, shared by every process of one host through prometheus-client's
multiprocess mode: each process (gunicorn workers, Celery's main process and pool children,
beat) writes its counters and histograms to files in one directory, and the web process's
`/metrics` adds them up (`render`).

The directory is `PROMETHEUS_MULTIPROC_DIR`, or a per-user one in the system's temporary
directory; it is created if missing, so a Procfile process on a fresh host needs nothing
prepared. prometheus-client picks its value class when it is first imported, and Celery's
command line imports it (through Flower's plugin) before our code runs, so the choice is
made again here, before any of our metrics exists.

Labels are low-cardinality only: never a customer, user, workload or frame id.

What is true of the database rather than of a process (workloads by status, outbox depth,
inbox lag, users held) and how long ago beat last ticked are read at scrape time
(`StateCollector`), so they are right whichever process changed them, on whichever host.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis import Redis
from sqlalchemy import text

from supervisor.db import Database
from supervisor.models import WorkloadStatus
from supervisor.outbox.queueing import DESTINATIONS
from supervisor.recent import Recent

logger = logging.getLogger(__name__)

MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def _multiprocess_dir() -> Path:
    configured = os.environ.get(MULTIPROCESS_DIR_VARIABLE)
    path = Path(
        configured or Path(tempfile.gettempdir()) / f"session-supervisor-metrics-{os.getuid()}"
    )
    path.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROCESS_DIR_VARIABLE] = str(path)
    return path


MULTIPROCESS_DIR = _multiprocess_dir()
values.ValueClass = values.get_value_class()

# Imported after the value class is chosen: the metrics below are built with it.
from prometheus_client import (  # noqa: E402
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

EVENTS = Counter(
    "supervisor_events_total",
    "User Manager events handled, by topic and outcome.",
    ["topic", "outcome"],
)
REFUSED = Counter(
    "supervisor_refused_messages_total",
    "Messages and events refused (logged and dead-lettered), by reason.",
    ["reason"],
)
FRAMES_STORED = Counter(
    "supervisor_frames_stored_total", "Frames copied to the final store and marked rendered."
)
FRAMES_INVALID = Counter(
    "supervisor_frames_invalid_total",
    "Uploaded frames that failed a check, by reason and by what was done: 'refused' (to be "
    "rendered again) or 'flagged' (stored all the same, every user having failed it).",
    ["reason", "action"],
)
SPECULATIVE_RENDERS = Counter(
    "supervisor_speculative_renders_total",
    "Frames handed to an idle user while their holder still renders them (stragglers).",
)
TRANSFER_BYTES = Histogram(
    "supervisor_transfer_bytes",
    "Bytes of one rendered frame moved from the temporary to the final store.",
    buckets=(16e3, 64e3, 256e3, 1e6, 4e6, 16e6, 64e6, 256e6),
)
TRANSFER_SECONDS = Histogram(
    "supervisor_transfer_seconds",
    "Seconds to move one rendered frame from the temporary to the final store.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PEER_SECONDS = Histogram(
    "supervisor_peer_request_seconds",
    "Peer HTTP calls, until the answer's headers, by peer, operation and status class.",
    ["peer", "operation", "status_class"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
PEER_ERRORS = Counter(
    "supervisor_peer_errors_total",
    "Peer calls that failed, by peer, operation and status class ('transport' when no "
    "answer came).",
    ["peer", "operation", "status_class"],
)
BEAT_TICKS = Counter("supervisor_beat_ticks_total", "Ticks of the beat that holds the lock.")

BEAT_LAST_TICK_KEY = "supervisor:beat:last-tick"


def status_class(status: int | None) -> str:
    """'2xx', '4xx', '5xx'... or 'transport' when no HTTP answer came."""
    return f"{status // 100}xx" if status else "transport"


def observe_peer_call(peer: str, operation: str, status: int | None, seconds: float) -> None:
    PEER_SECONDS.labels(peer, operation, status_class(status)).observe(seconds)


def count_peer_error(peer: str, operation: str, status: int | None) -> None:
    PEER_ERRORS.labels(peer, operation, status_class(status)).inc()


_OUTCOME = re.compile(r"[a-z][a-z-]{0,31}")


def count_event(topic: str, outcome: object, times: int = 1) -> None:
    """Count handled events; an outcome that is not a short lower-case word (a handler's
    richer result) counts as 'handled', so the label stays low-cardinality."""
    label = outcome if isinstance(outcome, str) and _OUTCOME.fullmatch(outcome) else "handled"
    EVENTS.labels(topic, label).inc(times)


# --- state read at scrape time ------------------------------------------------------------


@dataclass(frozen=True)
class StateSnapshot:
    """Figures read from the database and Redis in one go."""

    workloads: dict[str, int] = field(default_factory=dict)
    outbox_depth: dict[str, int] = field(default_factory=dict)
    outbox_oldest_seconds: dict[str, float] = field(default_factory=dict)
    inbox_lag_seconds: float = 0.0
    users_held: int = 0
    beat_last_tick_age_seconds: float | None = None


class StateCollector(Collector):
    """Gauges of the shared state. `read` does the I/O; its answer is reused for
    `max_age` seconds, so a burst of scrapes costs the database one read."""

    def __init__(self, read: Callable[[], StateSnapshot], max_age: float = 1.0) -> None:
        self._state = Recent(read, max_age)

    def snapshot(self) -> StateSnapshot:
        return self._state.get()

    def collect(self) -> Iterator[Metric]:
        try:
            state = self.snapshot()
        except Exception:
            # The processes' own metrics are still worth a scrape without the database.
            logger.warning("could not read the state for /metrics", exc_info=True)
            yield GaugeMetricFamily(
                "supervisor_state_up", "Whether the database's figures could be read.", value=0
            )
            return
        yield GaugeMetricFamily(
            "supervisor_state_up", "Whether the database's figures could be read.", value=1
        )
        workloads = GaugeMetricFamily(
            "supervisor_workloads", "Workloads kept, by status.", labels=["status"]
        )
        for status, count in sorted(state.workloads.items()):
            workloads.add_metric([status], count)
        yield workloads
        depth = GaugeMetricFamily(
            "supervisor_outbox_depth",
            "Messages waiting to be sent, by destination.",
            labels=["destination"],
        )
        oldest = GaugeMetricFamily(
            "supervisor_outbox_oldest_age_seconds",
            "Age of the oldest message waiting, by destination.",
            labels=["destination"],
        )
        for destination, count in sorted(state.outbox_depth.items()):
            depth.add_metric([destination], count)
            oldest.add_metric([destination], state.outbox_oldest_seconds.get(destination, 0.0))
        yield depth
        yield oldest
        yield GaugeMetricFamily(
            "supervisor_inbox_lag_seconds",
            "Age of the oldest User Manager event recorded and not yet handled (0 if none).",
            value=state.inbox_lag_seconds,
        )
        yield GaugeMetricFamily(
            "supervisor_users_held",
            "Render nodes held by running workloads.",
            value=state.users_held,
        )
        if state.beat_last_tick_age_seconds is not None:
            yield GaugeMetricFamily(
                "supervisor_beat_last_tick_age_seconds",
                "Seconds since the beat holding the lock last ticked.",
                value=state.beat_last_tick_age_seconds,
            )


_STATE_QUERY = text(
    "SELECT 'workloads' AS kind, status AS name, count(*) AS n, 0.0 AS age "
    "FROM workloads GROUP BY status "
    "UNION ALL SELECT 'outbox', destination, count(*), "
    "EXTRACT(EPOCH FROM now() - min(created_at)) FROM outbox GROUP BY destination "
    "UNION ALL SELECT 'inbox', '', count(*), "
    "COALESCE(EXTRACT(EPOCH FROM now() - min(received_at)), 0) FROM inbox "
    "UNION ALL SELECT 'users', '', count(*), 0.0 FROM workload_users AS u "
    "JOIN workloads AS w ON w.id = u.workload_id "
    "WHERE w.status = 'running' AND u.state = 'active'"
)


def read_state(db: Database, redis: Redis) -> StateSnapshot:
    """One query for the database's figures, one GET for beat's last tick."""
    workloads = dict.fromkeys((status.value for status in WorkloadStatus), 0)
    depth = dict.fromkeys(DESTINATIONS, 0)
    oldest = dict.fromkeys(DESTINATIONS, 0.0)
    inbox_lag = 0.0
    users_held = 0
    with db.engine.connect() as connection:
        connection.execute(text("SET LOCAL statement_timeout = '2s'"))
        for row in connection.execute(_STATE_QUERY):
            if row.kind == "workloads":
                workloads[row.name] = row.n
            elif row.kind == "outbox":
                depth[row.name] = row.n
                oldest[row.name] = float(row.age)
            elif row.kind == "inbox":
                inbox_lag = float(row.age)
            else:
                users_held = row.n
    last_tick = redis.get(BEAT_LAST_TICK_KEY)
    return StateSnapshot(
        workloads=workloads,
        outbox_depth=depth,
        outbox_oldest_seconds=oldest,
        inbox_lag_seconds=inbox_lag,
        users_held=users_held,
        beat_last_tick_age_seconds=max(0.0, time.time() - float(last_tick)) if last_tick else None,
    )


def note_beat_tick(redis: Redis) -> None:
    """Count a tick of the leading beat, and when it happened (kept a day)."""
    BEAT_TICKS.inc()
    redis.set(BEAT_LAST_TICK_KEY, repr(time.time()), ex=86_400)


def render(*collectors: Collector) -> tuple[bytes, str]:
    """The exposition of every process's metrics (from the shared directory) and of
    `collectors`, with its content type."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(MULTIPROCESS_DIR))
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry), CONTENT_TYPE_LATEST
