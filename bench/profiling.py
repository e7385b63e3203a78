"""py-spy around a benchmark's processes, and a summary of its collapsed stacks.

The summary names the functions that hold the samples (self time) and those under which
the samples fall (inclusive time), by function and file with line numbers dropped, so a
loop spread over many lines counts as one place to fix."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.harness import ROOT, log

PROFILE_DIR = ROOT / "var" / "bench-profiles"
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def python_pid(pid: int) -> int:
    """The Python process behind a Procfile process: `sh -c` may or may not exec it."""
    import psutil

    process = psutil.Process(pid)
    while process.name() in ("sh", "dash", "bash") and process.children():
        process = process.children()[0]
    return process.pid


def py_spy() -> str | None:
    venv = Path(sys.executable).parent / "py-spy"
    return str(venv) if venv.exists() else shutil.which("py-spy")


@contextmanager
def recording(
    pid: int,
    name: str,
    *,
    rate: int = 100,
    idle: bool = True,
    children: bool = True,
    gil: bool = False,
) -> Iterator[Path | None]:
    """Record `pid` and its children with py-spy while the block runs; yields the output
    path (collapsed stacks), or None when py-spy is not available. `idle` keeps samples of
    threads waiting on I/O, so the shares are of wall time, which is what bounds a
    throughput. `gil` keeps only the thread holding the GIL: the Python CPU, without the
    threads py-spy takes for busy while they wait in a lock or a socket. `children` follows
    the process's children too."""
    binary = py_spy()
    if binary is None:
        log("py-spy not found; no profile")
        yield None
        return
    PROFILE_DIR.mkdir(parents=True, exist_ok=True)
    output = PROFILE_DIR / f"{name}.collapsed"
    process = subprocess.Popen(
        [
            binary,
            "record",
            "--pid",
            str(python_pid(pid)),
            *(["--subprocesses"] if children else []),
            "--rate",
            str(rate),
            "--format",
            "raw",
            *(["--idle"] if idle else []),
            *(["--gil"] if gil else []),
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=(PROFILE_DIR / f"{name}.py-spy.log").open("w"),
    )
    try:
        yield output
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


PROJECT = ("supervisor/", "tasks/", "app/", "simulator/")


def _frame_name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    file = match.group("file")
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{match.group('func')} ({file})"


def _package(name: str) -> str:
    """`func (psycopg/cursor.py)` -> `psycopg`; the standard library keeps its module."""
    file = name.rpartition("(")[2].rstrip(")")
    return file.split("/", 1)[0].removesuffix(".py")


def summarize(path: Path, *, within: str | None = None, top: int = 15) -> dict[str, Any]:
    """Shares of the samples (of those whose stack has a frame containing `within`, if
    given): self time by function and by package, inclusive time of project functions."""
    own: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [_frame_name(f) for f in stack.split(";")[1:] if f]
        if not frames or (within and not any(within in f for f in frames)):
            continue
        count = int(count_text)
        total += count
        own[frames[-1]] += count
        packages[_package(frames[-1])] += count
        for name in set(frames):
            if any(f"({prefix}" in name for prefix in PROJECT):
                inclusive[name] += count

    def shares(counter: Counter[str], limit: int) -> list[tuple[str, float]]:
        return [(k, round(100.0 * n / total, 1)) for k, n in counter.most_common(limit)]

    return {
        "within": within,
        "samples": total,
        "self": shares(own, top),
        "self_by_package": shares(packages, top),
        "inclusive_project": shares(inclusive, top * 2),
    }


def print_summary(title: str, summary: dict[str, Any]) -> None:
    print(f"\n## profile: {title} ({summary['samples']} samples)")
    for kind in ("inclusive_project", "self", "self_by_package"):
        print(f"\n{kind.replace('_', ' ')}:")
        for name, percent in summary[kind]:
            print(f"  {percent:5.1f}%  {name}")
