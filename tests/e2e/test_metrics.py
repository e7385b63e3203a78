"""`/metrics` during a whole-stack run: every series the service promises moves, whichever
process (gunicorn worker, Celery main process or pool child, beat) or table it comes from."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict
from pathlib import Path

import requests
from kombu import Connection, Producer
from prometheus_client.parser import text_string_to_metric_families

from supervisor.messaging import SESSION_SUPERVISOR_EXCHANGE, session_routing_key
from tests.faults.helpers import assert_every_frame_exactly_once, fault_run
from tests.processes import wait_until

Series = tuple[str, tuple[tuple[str, str], ...]]


class Scraper:
    """Scrapes `/metrics` every `period` seconds in a thread; keeps every value per series."""

    def __init__(self, url: str, period: float = 0.2) -> None:
        self.url = url
        self.period = period
        self.seen: dict[Series, list[float]] = defaultdict(list)
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def scrape(self) -> None:
        response = requests.get(self.url, timeout=5)
        assert response.status_code == 200, response.text
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                self.seen[key].append(sample.value)
        self.scrapes += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(requests.RequestException):
                self.scrape()
            self._stop.wait(self.period)

    def values(self, name: str, **labels: str) -> list[float]:
        """Every value seen of the series `name` whose labels include `labels`."""
        found: list[float] = []
        for (sample, sample_labels), values in self.seen.items():
            if sample == name and set(labels.items()) <= set(sample_labels):
                found.extend(values)
        return found


def test_every_series_moves_during_a_run(tmp_path: Path) -> None:
    with fault_run(tmp_path, "metrics", users=4, frame_time=0.05) as run:
        stack = run.stack
        stack.start("web", "worker", "beat")
        base = stack.api.split("/api/")[0]
        with Scraper(f"{base}/metrics") as scraper:
            wait_until(lambda: scraper.scrapes > 0, 30, "a first scrape")
            run.start_workload()
            run.wait_for_frames(20)
            # A blob outage leaves uploads in the inbox, a catalog outage records in the
            # outbox; both give peer errors. One malformed message is refused.
            stack.simulator.inject_fault("blob", "down", 3)
            stack.simulator.inject_fault("catalog", "error", 3)
            _publish_malformed(stack.env["USER_MANAGER_BROKER_URL"], _session_id(run))
            assert_every_frame_exactly_once(run, "metrics-run")
            time.sleep(1.5)  # the workload gauges see the completion
        scraper.scrape()

    def moved(name: str, **labels: str) -> bool:
        values = scraper.values(name, **labels)
        return len(set(values)) >= 2 or (
            bool(values) and max(values) > 0 and name.endswith(("_total", "_count"))
        )

    counters = {
        "supervisor_events_total": {"topic": "user-frame-rendered"},
        "supervisor_refused_messages_total": {},
        "supervisor_frames_stored_total": {},
        "supervisor_transfer_bytes_count": {},
        "supervisor_transfer_seconds_count": {},
        "supervisor_peer_request_seconds_count": {"peer": "blob-service"},
        "supervisor_peer_errors_total": {},
        "supervisor_beat_ticks_total": {},
    }
    gauges = {
        "supervisor_outbox_depth": {"destination": "catalog"},
        "supervisor_outbox_oldest_age_seconds": {"destination": "catalog"},
        "supervisor_inbox_lag_seconds": {},
        "supervisor_workloads": {"status": "running"},
        "supervisor_users_held": {},
        "supervisor_beat_last_tick_age_seconds": {},
    }
    still = [
        f"{name}{labels}"
        for name, labels in {**counters, **gauges}.items()
        if not moved(name, **labels)
    ]
    assert still == [], f"series that did not move in {scraper.scrapes} scrapes: {still}"
    assert max(scraper.values("supervisor_frames_stored_total")) >= 120
    assert max(scraper.values("supervisor_workloads", status="completed")) >= 1
    assert scraper.values("supervisor_users_held")[-1] == 0
    for (name, labels), values in scraper.seen.items():
        if name in counters:
            assert values == sorted(values), f"{name}{dict(labels)} went down: {values}"


def _session_id(run: object) -> str:
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    stack = run.stack  # type: ignore[attr-defined]
    engine = create_engine(stack.env["DATABASE_URL"], poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return connection.execute(
                text("SELECT id FROM workloads WHERE customer_id = :c"),
                {"c": run.customer},  # type: ignore[attr-defined]
            ).scalar_one()
    finally:
        engine.dispose()


def _publish_malformed(broker_url: str, session_id: str) -> None:
    with Connection(broker_url, transport_options={"confirm_publish": True}) as connection:
        Producer(connection.default_channel).publish(
            b"{not json",
            exchange=SESSION_SUPERVISOR_EXCHANGE,
            routing_key=session_routing_key(session_id),
            content_type="application/json",
            content_encoding="binary",
        )
