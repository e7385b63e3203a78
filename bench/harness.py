"""What every benchmark shares: result rows with targets, medians, RSS sampling, machine facts,
the printed table and `bench/results.json`."""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.json"
MiB = 1024**2
GiB = 1024**3


def log(message: str) -> None:
    """Progress goes to stderr so stdout keeps only the table."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Options:
    smoke: bool
    rounds: int | None
    profile: bool
    workdir: Path

    def rounds_or(self, full: int) -> int:
        """Rounds for a benchmark: 1 in smoke mode, --rounds if given, else its default."""
        if self.smoke:
            return 1
        return self.rounds or full


@dataclass(frozen=True)
class Target:
    """One condition on a row; `kind` is value_min, value_max, ratio_min or ratio_max."""

    kind: str
    value: float
    label: str

    def met(self, ours: float, baseline: float | None) -> bool | None:
        if self.kind == "value_min":
            return ours >= self.value
        if self.kind == "value_max":
            return ours <= self.value
        if baseline is None or baseline == 0:
            return None
        ratio = ours / baseline
        return ratio >= self.value if self.kind == "ratio_min" else ratio <= self.value


def at_least(value: float, label: str) -> Target:
    return Target("value_min", value, label)


def at_most(value: float, label: str) -> Target:
    return Target("value_max", value, label)


def ratio_at_least(value: float) -> Target:
    return Target("ratio_min", value, f">= {value:g}x")


def ratio_at_most(value: float) -> Target:
    return Target("ratio_max", value, f"<= {value:g}x")


@dataclass
class Row:
    """One measure of a benchmark: our samples, the baseline's (same run), targets."""

    benchmark: str
    measure: str
    unit: str
    ours: list[float]
    baseline: list[float] | None = None
    targets: list[Target] = field(default_factory=list)
    note: str = ""

    @property
    def ours_median(self) -> float:
        return statistics.median(self.ours)

    @property
    def baseline_median(self) -> float | None:
        return statistics.median(self.baseline) if self.baseline else None

    @property
    def ratio(self) -> float | None:
        base = self.baseline_median
        return self.ours_median / base if base else None

    @property
    def met(self) -> bool | None:
        """True or False when every target could be judged, None when there is no target."""
        verdicts = [t.met(self.ours_median, self.baseline_median) for t in self.targets]
        if not verdicts:
            return None
        if any(v is False for v in verdicts):
            return False
        return None if any(v is None for v in verdicts) else True

    def as_json(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "measure": self.measure,
            "unit": self.unit,
            "ours": self.ours,
            "baseline": self.baseline,
            "ours_median": self.ours_median,
            "baseline_median": self.baseline_median,
            "ratio": self.ratio,
            "targets": [t.label for t in self.targets],
            "met": self.met,
            "note": self.note,
        }


def median(values: list[float]) -> float:
    return statistics.median(values)


def fmt(value: float | None, unit: str = "") -> str:
    """A number with 3 significant figures and thousands separators; '-' for None."""
    if value is None:
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        text = f"{value:,.0f}"
    elif magnitude >= 100:
        text = f"{value:.0f}"
    elif magnitude >= 10:
        text = f"{value:.1f}"
    elif magnitude >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip()


def table(rows: list[Row]) -> str:
    """The report as a Markdown table, readable in a terminal and pasteable in docs."""
    header = ["benchmark", "measure", "ours (median)", "baseline (median)", "ratio", "target"]
    header.append("met?")
    lines = [header]
    for row in rows:
        ratio = row.ratio
        met = {True: "yes", False: "NO", None: "-"}[row.met]
        lines.append(
            [
                row.benchmark,
                row.measure,
                fmt(row.ours_median, row.unit),
                fmt(row.baseline_median, row.unit),
                "-" if ratio is None else f"{ratio:.3g}x",
                " and ".join(t.label for t in row.targets) or "-",
                met,
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for index, line in enumerate(lines):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |")
        if index == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


class RssSampler(threading.Thread):
    """Peak RSS of a process (and, with `tree`, its children summed), sampled in a thread.

    A sampler thread sees what `ru_maxrss` hides: the peak of one phase, not of the
    process's whole life."""

    def __init__(self, pid: int | None = None, *, tree: bool = False, every: float = 0.02):
        super().__init__(daemon=True, name="rss-sampler")
        self.process = psutil.Process(pid or os.getpid())
        self.tree = tree
        self.every = every
        self.peak = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def current(self) -> int:
        processes = [self.process]
        if self.tree:
            processes += self.process.children(recursive=True)
        total = 0
        for process in processes:
            try:
                total += process.memory_info().rss
            except psutil.Error:
                continue
        return total

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.peak = max(self.peak, self.current())
                self.samples += 1
            except psutil.Error:
                pass
            self._stop_event.wait(self.every)

    def reset(self) -> None:
        self.peak = self.current()

    def stop(self) -> int:
        self._stop_event.set()
        self.join(timeout=5)
        return self.peak


@contextmanager
def timed() -> Iterator[Callable[[], float]]:
    """`with timed() as elapsed:` ... `elapsed()` is the seconds spent inside the block."""
    started = time.perf_counter()
    ended: list[float] = []
    yield lambda: (ended[0] if ended else time.perf_counter()) - started
    ended.append(time.perf_counter())


def run_child(module: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run `python -m <module> --child '<json>'` and return the JSON it prints last.

    Measured work whose memory matters runs in a fresh process, so neither the harness's
    imports nor the peer it talks to count in its RSS."""
    completed = subprocess.run(
        [sys.executable, "-m", module, "--child", json.dumps(args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"{module} child failed ({completed.returncode}):\n{completed.stderr[-4000:]}"
        )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _command_version(*command: str) -> str | None:
    if shutil.which(command[0]) is None:
        return None
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else None


def _git_changed() -> list[str]:
    """Files that differ from the commit: figures belong to the tree as it was measured."""
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line[3:] for line in out.stdout.splitlines() if line.strip()]


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def machine_facts() -> dict[str, Any]:
    """Where the figures were taken; each service version is None when it cannot be asked."""
    facts: dict[str, Any] = {
        "cores": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_bytes": psutil.virtual_memory().total,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "wrk": _command_version("wrk", "--version"),
        "git_commit": _command_version("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"),
        "git_changed_files": _git_changed(),
    }
    facts.update(_service_versions())
    return facts


def _service_versions() -> dict[str, Any]:
    versions: dict[str, Any] = {"postgres": None, "redis": None, "rabbitmq": None}
    try:
        from sqlalchemy import create_engine, text

        from tests import services

        with services.postgres_server_url() as url:
            engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
            with engine.connect() as connection:
                versions["postgres"] = connection.execute(text("SHOW server_version")).scalar()
            engine.dispose()
    except Exception as exc:  # noqa: BLE001 (a fact we cannot read is recorded as missing)
        versions["postgres_error"] = str(exc)[:200]
    try:
        import redis

        from tests import services

        with services.redis_url() as url:
            client = redis.Redis.from_url(url)
            versions["redis"] = client.info("server").get("redis_version")
            client.close()
    except Exception as exc:  # noqa: BLE001
        versions["redis_error"] = str(exc)[:200]
    try:
        from kombu import Connection

        from tests import services

        with Connection(services.rabbitmq_url(), connect_timeout=5) as connection:
            connection.connect()
            props = connection.connection.server_properties
            versions["rabbitmq"] = _decode(props.get("version"))
            versions["erlang"] = _decode(props.get("platform"))
    except BaseException as exc:  # noqa: BLE001 (pytest.skip is a BaseException)
        versions["rabbitmq_error"] = str(exc)[:200]
    return versions


def _decode(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def write_results(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def _cpu(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


def cpu_seconds(
    *, trees: dict[str, int], single: dict[str, int], names: dict[str, tuple[str, ...]]
) -> dict[str, float]:
    """CPU seconds used so far by groups of processes: a process and its descendants
    (`trees`), one process alone (`single`), every process with one of these names
    (`names`: servers shared with whatever else runs on the machine). Take it before and
    after a phase and subtract to see which process a throughput is bound by."""
    out: dict[str, float] = {}
    for group, pid in trees.items():
        try:
            root = psutil.Process(pid)
            out[group] = sum(_cpu(p) for p in [root, *root.children(recursive=True)])
        except psutil.Error:
            out[group] = 0.0
    for group, pid in single.items():
        try:
            out[group] = _cpu(psutil.Process(pid))
        except psutil.Error:
            out[group] = 0.0
    for process in psutil.process_iter(["name"]):
        for group, wanted in names.items():
            if process.info["name"] in wanted:
                out[group] = out.get(group, 0.0) + _cpu(process)
    return out


SHARED_SERVERS = ("postgres", "beam.smp", "epmd", "redis-server", "erl_child_setup")


class ForeignLoad(threading.Thread):
    """CPU used by processes that are neither this run's nor the shared servers.

    The machine has two cores and other people's test suites may run on it; a figure
    taken while they did is worth less, so each benchmark records how many cores others
    took on average (`cores`), sampled every `every` seconds."""

    def __init__(self, every: float = 2.0) -> None:
        super().__init__(daemon=True, name="foreign-load")
        self.every = every
        self.own = os.getpid()
        self.started = time.time()
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.names: dict[int, str] = {}
        self._stop_event = threading.Event()

    def _mine(self, process: psutil.Process) -> bool:
        try:
            return process.pid == self.own or any(p.pid == self.own for p in process.parents())
        except psutil.Error:
            return True

    def sample(self) -> None:
        for process in psutil.process_iter(["name", "create_time", "cmdline"]):
            name = process.info["name"] or ""
            cmdline = process.info["cmdline"]
            if not cmdline or name in SHARED_SERVERS or self._mine(process):
                continue
            used = _cpu(process)
            if process.pid not in self.first:
                born_during = (process.info["create_time"] or 0) >= self.started
                self.first[process.pid] = 0.0 if born_during else used
                self.names[process.pid] = " ".join(cmdline)[:80]
            self.last[process.pid] = used

    def run(self) -> None:
        while not self._stop_event.wait(self.every):
            self.sample()

    def stop(self) -> dict[str, Any]:
        self._stop_event.set()
        self.join(timeout=10)
        self.sample()
        seconds = max(time.time() - self.started, 1e-9)
        used = {pid: self.last[pid] - self.first[pid] for pid in self.last}
        busiest = sorted(used, key=used.__getitem__, reverse=True)[:3]
        return {
            "cores": round(sum(used.values()) / seconds, 2),
            "busiest": [
                {"cpu_s": round(used[pid], 1), "command": self.names[pid]} for pid in busiest
            ],
        }
