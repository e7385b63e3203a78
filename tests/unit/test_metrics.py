from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import Counter, Histogram
from prometheus_client.parser import text_string_to_metric_families

from supervisor import metrics
from supervisor.metrics import StateCollector, StateSnapshot

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docker/grafana/dashboards/session-supervisor.json"


def scrape(*collectors: StateCollector) -> dict[str, list[tuple[dict[str, str], float]]]:
    body, content_type = metrics.render(*collectors)
    assert content_type.startswith("text/plain")
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def test_an_outcome_that_is_not_a_short_word_counts_as_handled() -> None:
    before = scrape()
    metrics.count_event("new-users", {"added": 3})
    metrics.count_event("new-users", "user 1234 added")
    metrics.count_event("new-users", "refused")
    after = scrape()

    def count(outcome: str, found: dict[str, list[tuple[dict[str, str], float]]]) -> float:
        return sum(
            value
            for labels, value in found.get("supervisor_events_total", [])
            if labels == {"topic": "new-users", "outcome": outcome}
        )

    assert count("handled", after) - count("handled", before) == 2
    assert count("refused", after) - count("refused", before) == 1


def test_status_classes() -> None:
    assert [metrics.status_class(s) for s in (200, 404, 503, None)] == [
        "2xx",
        "4xx",
        "5xx",
        "transport",
    ]


def test_the_state_is_read_once_per_second_of_scrapes() -> None:
    reads: list[int] = []

    def read() -> StateSnapshot:
        reads.append(1)
        return StateSnapshot(workloads={"running": 2}, users_held=5)

    collector = StateCollector(read, max_age=60)
    for _ in range(5):
        found = scrape(collector)
    assert len(reads) == 1
    assert ({"status": "running"}, 2.0) in found["supervisor_workloads"]
    assert found["supervisor_users_held"] == [({}, 5.0)]
    assert found["supervisor_state_up"] == [({}, 1.0)]


def test_a_scrape_without_the_database_still_answers() -> None:
    def read() -> StateSnapshot:
        raise OSError("database down")

    found = scrape(StateCollector(read))
    assert found["supervisor_state_up"] == [({}, 0.0)]
    assert "supervisor_workloads" not in found
    assert "supervisor_frames_stored_total" in found


SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported_series() -> set[str]:
    """Every series name /metrics can carry: the processes' metrics (children or not) and
    the state's gauges."""
    families = [
        family
        for value in vars(metrics).values()
        if isinstance(value, Counter | Histogram)
        for family in value.describe()
    ]
    state = StateCollector(lambda: StateSnapshot(beat_last_tick_age_seconds=1))
    families += list(state.collect())
    return {family.name + suffix for family in families for suffix in SUFFIXES[family.type]}


def test_the_dashboard_and_scrape_config_name_only_series_we_export() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    named = {name for expr in expressions for name in re.findall(r"supervisor_[a-z_]+", expr)}
    assert len(named) >= 10, named
    assert named - exported_series() == set()
    scrape_config = yaml.safe_load((ROOT / "docker/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in scrape_config["scrape_configs"]}
    assert jobs["session-supervisor"]["metrics_path"] == "/metrics"
