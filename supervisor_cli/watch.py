"""`watch`: poll the workload's progress and show it until the workload ends.

On a terminal it draws a live rich progress bar; anywhere else (CI, logs, pipes) it writes
plain, throttled lines, because cursor movements and redraws turn a log into noise.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Column

from supervisor_cli.client import ApiError, ApiUnreachable, SupervisorClient

COMPLETED = "completed"
# Statuses after which the workload will never complete. "stopped" is named by the contract
# as a possible future state; unknown statuses keep the watch going.
UNSUCCESSFUL = frozenset({"failed", "stopped"})
RATE_WINDOW = 10.0
RETRY_FOR = 30.0

Clock = Callable[[], float]
Sleep = Callable[[float], None]


@dataclass(frozen=True)
class Snapshot:
    """The fields of one get-workload-progress answer that the display needs."""

    status: str
    total: int
    completed: int
    percentage: float
    active_users: int | None = None
    failure_reason: str | None = None
    # The server's ETA and its 80 % band (absent from servers before the dashboard).
    eta_basis: str | None = None
    eta_seconds: float | None = None
    eta_low_seconds: float | None = None
    eta_high_seconds: float | None = None

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Snapshot:
        """Parse a progress body; a body of the wrong shape is an API error, not a crash."""
        try:
            total = int(body.get("total_frames") or 0)
            completed = int(body.get("completed_frames") or 0)
            percentage = body.get("progress_percentage")
            if percentage is None:
                percentage = 100.0 * completed / total if total else 0.0
            users = body.get("active_users")
            reason = body.get("failure_reason")
            return cls(
                status=str(body.get("workload_status") or "unknown"),
                total=total,
                completed=completed,
                percentage=float(percentage),
                active_users=None if users is None else int(users),
                failure_reason=None if reason is None else str(reason),
                eta_basis=None if body.get("eta_basis") is None else str(body["eta_basis"]),
                eta_seconds=_seconds(body.get("eta_seconds")),
                eta_low_seconds=_seconds(body.get("eta_low_seconds")),
                eta_high_seconds=_seconds(body.get("eta_high_seconds")),
            )
        except (TypeError, ValueError) as exc:
            raise ApiError(200, "unexpected progress answer", str(exc)) from None

    @property
    def remaining(self) -> int:
        return max(0, self.total - self.completed)


def _seconds(value: Any) -> float | None:
    return None if value is None else float(value)


class RateMeter:
    """Frames per second over the last `window` seconds of polls.

    A rate over the whole run would hide a slowdown (users leaving); a rate between two
    polls would jump with every batch of frames. A short window is the middle ground.
    """

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, when: float, completed: int) -> None:
        if self._samples and completed < self._samples[-1][1]:
            self._samples.clear()  # the counter went back: a new workload, start over
        self._samples.append((when, completed))
        # Keep one sample at or before the window's start so the span covers the window.
        while len(self._samples) > 2 and self._samples[1][0] <= when - self.window:
            self._samples.popleft()

    def rate(self) -> float | None:
        if len(self._samples) < 2:
            return None
        (t0, c0), (t1, c1) = self._samples[0], self._samples[-1]
        if t1 <= t0:
            return None
        return (c1 - c0) / (t1 - t0)


@dataclass(frozen=True)
class Reading:
    """A snapshot with what the CLI derives from the polls around it."""

    customer_id: str
    snapshot: Snapshot
    rate: float | None
    elapsed: float

    @property
    def eta(self) -> float | None:
        """The server's central estimate; from the polls' rate only for a server that
        gives none."""
        snap = self.snapshot
        if snap.status == COMPLETED:
            return 0.0
        if snap.eta_basis is not None:
            return snap.eta_seconds
        if not self.rate or self.rate <= 0:
            return None
        return snap.remaining / self.rate

    def eta_text(self) -> str:
        snap = self.snapshot
        if snap.status != COMPLETED and snap.eta_basis == "warming-up":
            return "ETA measuring"
        text = f"ETA {format_duration(self.eta)}"
        if snap.eta_basis == "measured" and snap.eta_low_seconds is not None:
            low, high = snap.eta_low_seconds, snap.eta_high_seconds
            text += f" (80%: {format_duration(low)}-{format_duration(high)})"
        return text

    def fields(self) -> dict[str, str]:
        """The texts both displays show, so a log line and the live bar say the same thing."""
        snap = self.snapshot
        users = "? users" if snap.active_users is None else f"{snap.active_users} users"
        rate = "-- frames/s" if self.rate is None else f"{self.rate:.1f} frames/s"
        total = str(snap.total) if snap.total else "?"
        return {
            "elapsed": format_duration(self.elapsed),
            "status": snap.status,
            "frames": f"{snap.completed}/{total}",
            "percent": f"{snap.percentage:5.1f}%",
            "rate": rate,
            "users": users,
            "eta": self.eta_text(),
        }


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class Display(Protocol):
    def update(self, reading: Reading, *, final: bool = False) -> None: ...

    def note(self, text: str) -> None: ...

    def close(self) -> None: ...


class PlainDisplay:
    """One line per poll, but at most one every `every` seconds unless the status changes."""

    def __init__(self, stream: TextIO, *, every: float = 5.0, clock: Clock = time.monotonic):
        self.stream = stream
        self.every = every
        self.clock = clock
        self._last_at: float | None = None
        self._last_status: str | None = None

    def update(self, reading: Reading, *, final: bool = False) -> None:
        now = self.clock()
        changed = reading.snapshot.status != self._last_status
        due = self._last_at is None or now - self._last_at >= self.every
        if not (final or changed or due):
            return
        f = reading.fields()
        line = (
            f"[{f['elapsed']}] {reading.customer_id} {f['status']}  {f['frames']} frames  "
            f"{f['percent']}  {f['rate']}  {f['users']}  {f['eta']}"
        )
        self.stream.write(line + "\n")
        self.stream.flush()
        self._last_at = now
        self._last_status = reading.snapshot.status

    def note(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Nothing to tear down: every line is already written."""


def _column(min_width: int = 0) -> Column:
    """No wrapping: on a narrow terminal a cropped line beats a bar redrawn over two lines."""
    return Column(min_width=min_width, no_wrap=True, overflow="crop")


class LiveDisplay:
    """A rich progress bar redrawn after every poll, left on screen when done.

    The customer goes in a header line and the elapsed time in a closing line, so that the
    bar itself fits an 80-column terminal.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        # Minimum widths keep the columns from jumping as the numbers change.
        self.progress = Progress(
            TextColumn("[bold]{task.fields[status]}", table_column=_column(9)),
            BarColumn(bar_width=24),
            TextColumn("{task.fields[frames]}", table_column=_column(7)),
            TextColumn("{task.fields[percent]}", table_column=_column()),
            TextColumn("{task.fields[rate]}", table_column=_column(13)),
            TextColumn("{task.fields[users]}", table_column=_column(7)),
            TextColumn("{task.fields[eta]}", table_column=_column()),
            console=console,
            auto_refresh=False,
        )
        self._task: TaskID | None = None
        self._last: Reading | None = None

    def update(self, reading: Reading, *, final: bool = False) -> None:
        fields = reading.fields()
        snap = reading.snapshot
        total = snap.total or None
        if self._task is None:
            self._print(f"Watching {reading.customer_id}: frames done/total")
            self.progress.start()
            self._task = self.progress.add_task(reading.customer_id, total=total, **fields)
        self.progress.update(self._task, total=total, completed=snap.completed, **fields)
        self.progress.refresh()
        self._last = reading

    def note(self, text: str) -> None:
        self._print(text)

    def close(self) -> None:
        self.progress.stop()
        last = self._last
        if last is not None and last.snapshot.status in (COMPLETED, *UNSUCCESSFUL):
            snap = last.snapshot
            self._print(
                f"{last.customer_id} {snap.status}: {snap.completed}/{snap.total} frames "
                f"in {format_duration(last.elapsed)}"
            )

    def _print(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)


def make_display(stream: TextIO, *, plain: bool | None = None, every: float = 5.0) -> Display:
    """A live bar only on a real terminal (and not TERM=dumb); plain lines everywhere else."""
    if plain is None:
        dumb = os.environ.get("TERM", "").lower() in ("dumb", "unknown")
        plain = dumb or not stream.isatty()
    if plain:
        return PlainDisplay(stream, every=every)
    return LiveDisplay(Console(file=stream))


class WatchTimeout(Exception):
    """`--timeout` passed before the workload ended."""

    def __init__(self, waited: float, snapshot: Snapshot | None) -> None:
        super().__init__(f"workload not finished after {format_duration(waited)}")
        self.snapshot = snapshot


def _transient(exc: Exception) -> bool:
    return isinstance(exc, ApiUnreachable) or (isinstance(exc, ApiError) and exc.status >= 500)


def watch_workload(
    client: SupervisorClient,
    customer_id: str,
    display: Display,
    *,
    interval: float = 1.0,
    timeout: float | None = None,
    retry_for: float = RETRY_FOR,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
) -> Snapshot:
    """Poll until the workload is completed or can no longer complete; return the last snapshot.

    A service restart during a long render should not end the watch, so unreachable-API and
    5xx errors are retried for `retry_for` seconds after the last good answer; the very first
    poll is not retried, so a wrong URL or customer fails at once. 4xx errors end the watch.
    """
    start = clock()
    deadline = None if timeout is None else start + timeout
    meter = RateMeter()
    snapshot: Snapshot | None = None
    last_ok = start
    try:
        while True:
            try:
                snapshot = Snapshot.from_body(client.workload_progress(customer_id))
            except (ApiError, ApiUnreachable) as exc:
                if snapshot is None or not _transient(exc) or clock() - last_ok > retry_for:
                    raise
                display.note(f"retrying: {exc}")
            else:
                now = clock()
                last_ok = now
                meter.add(now, snapshot.completed)
                done = snapshot.status == COMPLETED or snapshot.status in UNSUCCESSFUL
                reading = Reading(customer_id, snapshot, meter.rate(), now - start)
                display.update(reading, final=done)
                if done:
                    return snapshot
            now = clock()
            if deadline is not None and now >= deadline:
                raise WatchTimeout(now - start, snapshot)
            pause = interval if deadline is None else min(interval, deadline - now)
            sleep(max(0.0, pause))
    finally:
        display.close()  # never leave a half-drawn bar behind an error
