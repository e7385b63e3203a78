"""Run the Procfile's process types as real processes, for end-to-end and fault tests.

Each process runs in its own process group, so stopping it stops what it forked (gunicorn
and Celery workers); a test can SIGKILL and restart one type. Everything is stopped on
exit, even when the test fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROCFILE = ROOT / "Procfile"


def procfile(path: Path = PROCFILE) -> dict[str, str]:
    commands = {}
    for line in path.read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() and not line.startswith("#"):
            commands[name.strip()] = command.strip()
    return commands


def command_of(name: str, commands: dict[str, str]) -> str:
    """The Procfile command of `name`; "worker-2", "worker-3"... are more instances of
    `worker`, so a test can run N processes of one type side by side."""
    if name in commands:
        return commands[name]
    base, dash, index = name.rpartition("-")
    if dash and index.isdigit() and base in commands:
        return commands[base]
    raise KeyError(f"no Procfile process type {name!r}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ProcfileProcess:
    """One Procfile process type, its command read from the Procfile in `cwd` and run there."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path, *, cwd: Path = ROOT) -> None:
        self.name = name
        self.cwd = cwd
        self.command = command_of(name, procfile(cwd / "Procfile"))
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> ProcfileProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command,
            shell=True,
            cwd=self.cwd,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.starts += 1
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _signal(self, sig: int) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole group, as a crash would."""
        self._signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=30)

    def stop(self, timeout: float = 20.0) -> None:
        if not self.alive:
            self._signal(signal.SIGKILL)
            return
        self._signal(signal.SIGTERM)
        try:
            assert self.process is not None
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._signal(signal.SIGKILL)

    def run_to_end(self, timeout: float = 120.0) -> int:
        self.start()
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def process_env(**values: str) -> dict[str, str]:
    """The test's environment with the venv's bin first, so Procfile commands resolve."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(values)
    return env


@contextmanager
def running(
    names: list[str], env: dict[str, str], log_dir: Path
) -> Iterator[dict[str, ProcfileProcess]]:
    processes = {name: ProcfileProcess(name, env, log_dir) for name in names}
    try:
        for process in processes.values():
            process.start()
        yield processes
    finally:
        for process in processes.values():
            process.stop()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, step: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
