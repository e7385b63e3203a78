"""`read_scene_range`: parse an untrusted .blend file in a child process with hard limits.

Each file gets a fresh interpreter running `supervisor.blendfile.child`, never a fork of the
threaded caller. The child caps its own address space; this side kills it at the deadline
and reads at most `_MAX_REPLY_BYTES` of its one-line JSON reply. The child gets no secrets:
its environment is the few variables `_CHILD_ENV` names.

Starting Python and importing BAT costs about 100 ms, more than most parses, so each read
ends by starting the child of the next one, which imports and then waits idle for its file.
Started while this one parses, it would slow the parse down on a busy machine. It exits
when this process ends.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from supervisor.blendfile.reader import (
    DEFAULT_MAX_UNCOMPRESSED_BYTES,
    FILE_FORMATS,
    MAX_RESOLUTION,
    MAX_RESOLUTION_PERCENTAGE,
    SceneRange,
)
from supervisor.errors import BlendFileError

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
DEFAULT_MEMORY_LIMIT = 1024**3

_MAX_REPLY_BYTES = 64 * 1024
_FILE_FORMAT_NAMES = frozenset(FILE_FORMATS.values())
_CHILD_ENV = ("PATH", "LANG", "LC_ALL", "TMPDIR")
# The tree this process imports `supervisor` from; the child imports the same one.
_IMPORT_ROOT = str(Path(__file__).resolve().parents[2])

_spare: tuple[tuple[str, ...], subprocess.Popen[bytes]] | None = None
_spare_lock = threading.Lock()


def child_argv() -> list[str]:
    """The parser child's command: this interpreter, the project's modules only."""
    return [sys.executable, "-P", "-m", "supervisor.blendfile.child"]


def read_scene_range(
    path: str | os.PathLike[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
    max_uncompressed_bytes: int = DEFAULT_MAX_UNCOMPRESSED_BYTES,
) -> SceneRange:
    """Parse in a child process with hard limits; the one to use on untrusted files.

    The child may map `memory_limit` bytes more than it holds when the request reaches it
    (Python and the parser's modules, loaded before the file is opened). After `timeout`
    seconds the child is killed. Bad files, timeouts and child crashes raise
    BlendFileError; OSError means the child could not be started at all.
    """
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    if memory_limit <= 0:
        raise ValueError("memory_limit must be positive")
    request = {
        "path": os.path.abspath(path),
        "memory_limit": memory_limit,
        "max_uncompressed_bytes": max_uncompressed_bytes,
    }
    line = json.dumps(request).encode() + b"\n"
    deadline = time.monotonic() + timeout
    argv = tuple(child_argv())
    child = _take_spare(argv)
    if child is not None and not _send(child, line):
        _end(child)
        child = None
    if child is None:
        child = _start(argv)
        _send(child, line)
    try:
        reply = _collect(child, deadline)
    finally:
        _end(child)
        _keep_spare(argv)
    if reply is None:
        raise BlendFileError(f"parsing timed out after {timeout:g}s")
    return _scene_from_reply(reply, child.returncode)


# --- one child --------------------------------------------------------------------------


def _start(argv: tuple[str, ...]) -> subprocess.Popen[bytes]:
    env = {name: os.environ[name] for name in _CHILD_ENV if name in os.environ}
    env["PYTHONPATH"] = _IMPORT_ROOT
    # argv is this interpreter and a module name; the file's path travels on stdin.
    return subprocess.Popen(  # noqa: S603
        argv, bufsize=0, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )


def _send(child: subprocess.Popen[bytes], line: bytes) -> bool:
    """Hand the child its one request; False if it is gone already."""
    assert child.stdin is not None
    try:
        child.stdin.write(line)
        child.stdin.close()
    except BrokenPipeError:
        return False
    return True


def _collect(child: subprocess.Popen[bytes], deadline: float) -> bytes | None:
    """The child's reply once it has exited; None at the deadline.

    EOF alone is not trusted: a process forked meanwhile by another thread, or one the child
    left behind, can hold a copy of the pipe's write end. So the reply ends with a newline,
    and the child's exit is polled too.
    """
    assert child.stdout is not None
    fd = child.stdout.fileno()
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    reply = bytearray()
    reading = True
    while reading:
        if child.poll() is not None:
            while reading and poller.poll(0):
                chunk = os.read(fd, 65536)
                reply += chunk
                reading = bool(chunk) and len(reply) <= _MAX_REPLY_BYTES
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        if poller.poll(max(1, int(min(remaining, 0.05) * 1000))):
            chunk = os.read(fd, 65536)
            reply += chunk
            if len(reply) > _MAX_REPLY_BYTES:
                raise BlendFileError("parser process sent an oversized reply")
            reading = bool(chunk) and not reply.endswith(b"\n")
    try:
        child.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return None
    return bytes(reply)


def _end(child: subprocess.Popen[bytes]) -> None:
    """Kill the child unless it has exited, reap it and close our ends of its pipes."""
    if child.poll() is None:
        child.kill()
        child.wait()
    _close_pipes(child)


def _close_pipes(child: subprocess.Popen[bytes]) -> None:
    for pipe in (child.stdin, child.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


def _scene_from_reply(reply: bytes, returncode: int | None) -> SceneRange:
    try:
        message = json.loads(reply) if reply else None
    except ValueError:
        message = None
    if isinstance(message, dict):
        _relay_logs(message.get("logs"), message.get("traceback"))
    if isinstance(message, dict) and isinstance(message.get("error"), str):
        raise BlendFileError(message["error"])
    scene = message.get("ok") if isinstance(message, dict) else None
    if isinstance(scene, dict):
        try:
            return _checked_scene(**scene)
        except (TypeError, ValueError):
            pass
    if returncode is not None and returncode < 0:
        try:
            signame = signal.Signals(-returncode).name
        except ValueError:
            signame = f"signal {-returncode}"
        raise BlendFileError(f"parser process died ({signame})")
    code = "unknown" if returncode is None else returncode
    raise BlendFileError(f"parser process gave no result (exit code {code})")


def _relay_logs(records: Any, trace: Any) -> None:
    """Log what the child logged, under the same logger names, through our handlers."""
    if isinstance(trace, str):
        logger.error("blend parser child failed\n%s", trace.rstrip())
    if not isinstance(records, list):
        return
    for record in records:
        if isinstance(record, list) and len(record) == 3:
            name, level, text = record
            if isinstance(name, str) and type(level) is int and isinstance(text, str):
                logging.getLogger(name).log(level, "%s", text)


def _checked_scene(
    name: Any,
    frame_start: Any,
    frame_end: Any,
    frame_step: Any,
    resolution_x: Any,
    resolution_y: Any,
    resolution_percentage: Any,
    file_format: Any,
) -> SceneRange:
    """The reply's scene, if it holds what the reader can give and nothing else."""
    values = (frame_start, frame_end, frame_step)
    if not isinstance(name, str) or any(type(v) is not int for v in values):
        raise TypeError("bad scene reply")
    for value, high in (
        (resolution_x, MAX_RESOLUTION),
        (resolution_y, MAX_RESOLUTION),
        (resolution_percentage, MAX_RESOLUTION_PERCENTAGE),
    ):
        if value is not None and (type(value) is not int or not 1 <= value <= high):
            raise TypeError("bad output size in scene reply")
    if file_format is not None and (
        not isinstance(file_format, str) or file_format not in _FILE_FORMAT_NAMES
    ):
        raise TypeError("bad file format in scene reply")
    return SceneRange(
        name,
        frame_start,
        frame_end,
        frame_step,
        resolution_x,
        resolution_y,
        resolution_percentage,
        file_format,
    )


# --- the spare child --------------------------------------------------------------------


def _take_spare(argv: tuple[str, ...]) -> subprocess.Popen[bytes] | None:
    """The waiting child, if this process started it with this command and it still runs."""
    global _spare
    with _spare_lock:
        spare, _spare = _spare, None
    if spare is None:
        return None
    spare_argv, child = spare
    if spare_argv == argv and child.poll() is None:
        return child
    _end(child)
    return None


def _keep_spare(argv: tuple[str, ...]) -> None:
    """Start a child to wait for the next file, unless one waits already."""
    global _spare
    if _spare is not None:
        return
    try:
        child = _start(argv)
    except OSError as exc:
        logger.warning("could not start a spare blend parser: %s", exc)
        return
    with _spare_lock:
        if _spare is None:
            _spare, child = (argv, child), None
    if child is not None:
        _end(child)


def _end_spare() -> None:
    global _spare
    with _spare_lock:
        spare, _spare = _spare, None
    if spare is not None:
        _end(spare[1])


def _forget_spare_after_fork() -> None:
    """In a forked child the spare is the parent's: close our copies of its pipes, so it
    still sees EOF when the parent goes, and never use it."""
    global _spare, _spare_lock
    _spare_lock = threading.Lock()
    spare, _spare = _spare, None
    if spare is not None:
        _close_pipes(spare[1])
        # Not our child: this process must neither wait for it nor warn that it runs.
        spare[1].returncode = 0


atexit.register(_end_spare)
os.register_at_fork(after_in_child=_forget_spare_after_fork)
