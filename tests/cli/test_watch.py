"""`watch`: a workload that advances to completion, one that fails, timeouts, retries, and the
two displays (plain lines off a terminal, a rich bar on one)."""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Callable
from typing import Any

import pytest
from rich.console import Console

from supervisor_cli.client import SupervisorClient
from supervisor_cli.watch import (
    LiveDisplay,
    PlainDisplay,
    RateMeter,
    Reading,
    Snapshot,
    format_duration,
    make_display,
    watch_workload,
)
from tests.cli.helpers import FakeApi, Result, Seen

Cli = Callable[..., Result]
PROGRESS = "/get-workload-progress"
PLAIN_LINE = re.compile(
    r"^\[\d+:\d\d:\d\d\] c1 \w+  \d+/(\d+|\?) frames  +\d+\.\d%  "
    r"(\d+\.\d|--) frames/s  (\d+|\?) users  ETA (\d+:\d\d:\d\d|-:--:--)$"
)


def progress_body(status: str, done: int, total: int = 100, **extra: Any) -> dict[str, Any]:
    return {
        "total_frames": total,
        "completed_frames": done,
        "remaining_frames": total - done,
        "progress_percentage": round(100.0 * done / total, 2) if total else 0.0,
        "workload_status": status,
        "active_users": 4,
        "frame_mapping": {},
        "frame_mapping_truncated": False,
        **extra,
    }


class Advancing:
    """Progress that moves 25 frames per poll, after `failures` 503s at the second poll."""

    def __init__(self, failures: int = 0) -> None:
        self.polls = 0
        self.failures = failures
        self.lock = threading.Lock()

    def __call__(self, seen: Seen) -> tuple[int, Any]:
        with self.lock:
            if self.polls == 1 and self.failures:
                self.failures -= 1
                return 503, {"message": "Service Unavailable"}
            done = min(100, 25 * self.polls)
            self.polls += 1
        return 200, progress_body("completed" if done == 100 else "running", done)


def test_watch_until_completed_exits_0_with_100_percent_last(api: FakeApi, cli: Cli) -> None:
    api.respond("GET", PROGRESS, Advancing())
    result = cli("watch", "c1", "--interval", "0.01", "--log-every", "0.001")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert len(lines) == 5  # 0, 25, 50, 75, 100 frames
    assert "c1 completed  100/100 frames  100.0%" in lines[-1]
    assert lines[-1].endswith("4 users  ETA 0:00:00")
    assert all(seen.query == {"customer_id": "c1"} for seen in api.seen)


def test_non_tty_output_is_plain_throttled_lines(api: FakeApi, cli: Cli) -> None:
    api.respond("GET", PROGRESS, Advancing())
    result = cli("watch", "c1", "--interval", "0.01")
    assert result.code == 0
    lines = result.out.splitlines()
    # Default throttle: the first line, then only the status change to completed.
    assert len(lines) == 2
    assert "\x1b" not in result.out
    assert "\r" not in result.out
    for line in lines:
        assert PLAIN_LINE.match(line), line
    assert "100.0%" in lines[-1]


def test_watch_of_a_failed_workload_exits_4_with_the_reason(api: FakeApi, cli: Cli) -> None:
    body = progress_body("failed", 10, failure_reason="the .blend file is not readable")
    api.reply("GET", PROGRESS, 200, body)
    result = cli("watch", "c1", "--interval", "0.01")
    assert result.code == 4
    assert "c1 failed  10/100 frames" in result.out
    assert result.err == "error: workload failed: the .blend file is not readable\n"


def test_watch_of_an_unknown_customer_exits_1(api: FakeApi, cli: Cli) -> None:
    api.reply("GET", PROGRESS, 404, {"message": "No workload for customer c1"})
    result = cli("watch", "c1", "--interval", "0.01")
    assert result.code == 1
    assert "No workload for customer c1" in result.err


def test_watch_timeout_exits_5(api: FakeApi, cli: Cli) -> None:
    api.reply("GET", PROGRESS, 200, progress_body("running", 10))
    result = cli("watch", "c1", "--interval", "0.01", "--timeout", "0.1")
    assert result.code == 5
    assert "workload not finished after" in result.err


def test_watch_rides_out_a_brief_outage(api: FakeApi, cli: Cli) -> None:
    api.respond("GET", PROGRESS, Advancing(failures=2))
    result = cli("watch", "c1", "--interval", "0.01")
    assert result.code == 0, result.err
    assert result.out.count("retrying: Service Unavailable (HTTP 503)") == 2
    assert "100.0%" in result.out.splitlines()[-1]


def test_watch_of_an_unreachable_api_exits_3(
    closed_port_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from supervisor_cli.__main__ import main

    assert main(["--api", closed_port_url, "watch", "c1", "--interval", "0.01"]) == 3
    assert closed_port_url in capsys.readouterr().err


def test_live_bar_on_a_terminal(api: FakeApi) -> None:
    api.respond("GET", PROGRESS, Advancing())
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120, color_system=None)
    with SupervisorClient(api.url) as client:
        final = watch_workload(client, "c1", LiveDisplay(console), interval=0.01)
    assert final.status == "completed"
    text = screen.getvalue()
    assert "\x1b[" in text  # cursor control: a live, redrawn bar
    last_redraw = text.split("\r\x1b[2K")[-1]
    *_, last_bar, summary = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", last_redraw).splitlines()
    assert text.startswith("Watching c1")
    assert "completed" in last_bar
    assert "100/100" in last_bar
    assert "100.0%" in last_bar
    assert "━" in last_bar
    assert summary.startswith("c1 completed: 100/100 frames in 0:00:0")


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_display_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(make_display(io.StringIO()), PlainDisplay)
    assert isinstance(make_display(FakeTty()), LiveDisplay)
    assert isinstance(make_display(FakeTty(), plain=True), PlainDisplay)
    monkeypatch.setenv("TERM", "dumb")
    assert isinstance(make_display(FakeTty()), PlainDisplay)


def test_rate_is_smoothed_over_the_last_ten_seconds() -> None:
    meter = RateMeter(window=10.0)
    assert meter.rate() is None
    for second in range(21):
        # 10 frames/s for 10 s, then 2 frames/s.
        meter.add(float(second), 10 * min(second, 10) + 2 * max(0, second - 10))
    assert meter.rate() == pytest.approx(2.0)
    meter.add(21.0, 5)  # the counter went back: a new workload
    assert meter.rate() is None


def test_eta_and_fields() -> None:
    snapshot = Snapshot("running", total=250, completed=125, percentage=50.0, active_users=3)
    reading = Reading("c1", snapshot, rate=12.5, elapsed=61)
    assert reading.eta == pytest.approx(10.0)
    assert reading.fields() == {
        "elapsed": "0:01:01",
        "status": "running",
        "frames": "125/250",
        "percent": " 50.0%",
        "rate": "12.5 frames/s",
        "users": "3 users",
        "eta": "ETA 0:00:10",
    }
    assert Reading("c1", snapshot, rate=None, elapsed=0).fields()["eta"] == "ETA -:--:--"
    assert Reading("c1", snapshot, rate=0.0, elapsed=0).eta is None
    assert format_duration(3725) == "1:02:05"


def test_snapshot_of_a_malformed_body_is_an_api_error() -> None:
    from supervisor_cli.client import ApiError

    with pytest.raises(ApiError, match="unexpected progress answer"):
        Snapshot.from_body({"total_frames": "many", "workload_status": "running"})
    minimal = Snapshot.from_body({"workload_status": "initialized"})
    assert (minimal.total, minimal.completed, minimal.percentage) == (0, 0, 0.0)


def test_plain_display_throttles_but_always_shows_changes_and_the_end() -> None:
    now = [0.0]
    stream = io.StringIO()
    display = PlainDisplay(stream, every=5.0, clock=lambda: now[0])
    snapshot = Snapshot("running", total=10, completed=1, percentage=10.0)
    for second in range(12):
        now[0] = float(second)
        display.update(Reading("c1", snapshot, None, now[0]))
    done = Snapshot("completed", total=10, completed=10, percentage=100.0)
    display.update(Reading("c1", done, None, 12.0), final=True)
    elapsed = [line[1:8] for line in stream.getvalue().splitlines()]
    assert elapsed == ["0:00:00", "0:00:05", "0:00:10", "0:00:12"]
