"""How a simulated user turns a frame number into image bytes.

The default is a placeholder PNG showing the frame number. `real_renderer()` renders the
.blend with Blender's Workbench engine at a tiny resolution when `bpy` can be imported.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import tempfile
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from simulator.png import frame_png

logger = logging.getLogger(__name__)

RenderFrame = Callable[[Path | None, int], bytes]
REAL_WIDTH, REAL_HEIGHT = 64, 36
REAL_ENGINE = "BLENDER_WORKBENCH"
START_TIMEOUT = 60.0
FRAME_TIMEOUT = 120.0

FileKey = tuple[str, int, int]


def render_frame(blend_path: Path | None, frame: int) -> bytes:
    """The placeholder: a PNG with the frame number; the .blend is not read."""
    del blend_path
    return frame_png(frame)


class BlenderRenderer:
    """Workbench frames from a child process that owns `bpy`.

    bpy renders only on the thread that imported it and crashes the interpreter at exit when
    that is not the main thread, while the simulator renders on its scheduler's threads. So
    bpy lives on the main thread of a spawned child, one frame at a time; a .blend that
    crashes or hangs Blender costs a restart of the child, never the simulator. A file this
    Blender cannot render (newer format, no camera) is logged once and answered with
    placeholders, as a frame without a known .blend is.
    """

    def __init__(
        self, *, start_timeout: float = START_TIMEOUT, frame_timeout: float = FRAME_TIMEOUT
    ) -> None:
        self._start_timeout = start_timeout
        self._frame_timeout = frame_timeout
        self._lock = threading.Lock()
        self._broken: dict[FileKey, str] = {}
        self._process: Any = None
        self._conn: Connection | None = None
        self.version: tuple[int, ...] = ()
        self.files_opened = 0
        with self._lock:
            self._start()

    def __call__(self, blend_path: Path | None, frame: int) -> bytes:
        if blend_path is None:
            logger.warning("no .blend for this hash; placeholder frame", extra={"frame": frame})
            return frame_png(frame)
        try:
            key = _file_key(blend_path)
        except OSError as exc:
            logger.warning("cannot read %s: %s; placeholder frame", blend_path, exc)
            return frame_png(frame)
        with self._lock:
            if key in self._broken:
                return frame_png(frame)
            kind, detail = self._ask(key, frame)
            if kind == "ok":
                return detail
            self._broken[key] = detail
        logger.warning(
            "bpy cannot render %s; placeholder frames: %s",
            blend_path.name,
            detail,
            extra={"event": "render-failed", "frame": frame},
        )
        return frame_png(frame)

    def close(self) -> None:
        """Stop the child; the next frame starts a new one."""
        with self._lock:
            self._stop()

    def _ask(self, key: FileKey, frame: int) -> tuple[str, Any]:
        try:
            if self._conn is None:
                self._start()
            assert self._conn is not None
            self._conn.send((key, frame))
            if not self._conn.poll(self._frame_timeout):
                raise TimeoutError(f"no frame within {self._frame_timeout}s")
            kind, detail, self.files_opened = self._conn.recv()
        except (OSError, EOFError, ImportError) as exc:
            self._stop()
            return "error", f"render process lost: {exc!r}"
        return kind, detail

    def _start(self) -> None:
        """Spawn the child and wait for its hello; ImportError when bpy cannot be loaded."""
        context = multiprocessing.get_context("spawn")
        conn, child_conn = context.Pipe()
        process = context.Process(target=_serve, args=(child_conn,), name="bpy", daemon=True)
        process.start()
        child_conn.close()
        try:
            if conn.poll(self._start_timeout):
                kind, detail, _ = conn.recv()
            else:
                kind, detail = "import-error", f"bpy did not start in {self._start_timeout}s"
        except (OSError, EOFError) as exc:
            kind, detail = "import-error", f"render process died at start: {exc!r}"
        if kind != "ready":
            process.kill()
            process.join()
            conn.close()
            raise ImportError(detail)
        self._process, self._conn, self.version, self.files_opened = process, conn, detail, 0

    def _stop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._process is not None:
            self._process.kill()
            self._process.join()
            self._process = None


class _Blender:
    """The child's side: bpy on the main thread, the last opened file kept while unchanged."""

    def __init__(self, bpy: Any) -> None:
        self.bpy = bpy
        self.open: FileKey | None = None
        self.opened = 0

    def render(self, key: FileKey, frame: int) -> bytes:
        self._load(key)
        scene = self.bpy.context.scene
        scene.frame_set(frame)
        with tempfile.TemporaryDirectory(prefix="sim-render-") as folder:
            target = Path(folder) / "frame.png"
            scene.render.filepath = str(target)
            self.bpy.ops.render.render(write_still=True)
            return target.read_bytes()

    def _load(self, key: FileKey) -> None:
        """Open the file unless it is already open; set the tiny Workbench PNG output."""
        if self.open == key:
            return
        self.open = None
        self.bpy.ops.wm.open_mainfile(filepath=key[0], load_ui=False, use_scripts=False)
        self.opened += 1
        settings = self.bpy.context.scene.render
        settings.engine = REAL_ENGINE
        settings.resolution_x, settings.resolution_y = REAL_WIDTH, REAL_HEIGHT
        settings.resolution_percentage = 100
        settings.image_settings.file_format = "PNG"
        settings.image_settings.color_mode = "RGB"
        for prop in settings.bl_rna.properties:
            if prop.identifier.startswith("use_stamp"):
                setattr(settings, prop.identifier, False)
        self.open = key


def _serve(conn: Connection) -> None:
    """The child's loop: (file key, frame) in, ("ok", PNG bytes) or ("error", text) out.

    Blender's chatter goes to /dev/null so the simulator's stdout stays clean; SIGINT is the
    parent's to handle, the child ends when the pipe closes.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    try:
        import bpy
    except ImportError as exc:
        conn.send(("import-error", f"cannot import bpy: {exc}", 0))
        return
    blender = _Blender(bpy)
    conn.send(("ready", tuple(bpy.app.version), 0))
    while True:
        try:
            key, frame = conn.recv()
        except EOFError:
            return
        try:
            reply: tuple[str, Any, int] = ("ok", blender.render(key, frame), blender.opened)
        except (RuntimeError, OSError) as exc:
            blender.open = None
            reply = ("error", str(exc).strip(), blender.opened)
        conn.send(reply)


def _file_key(path: Path) -> FileKey:
    """Path plus modification time and size, so a replaced file is opened again."""
    resolved = path.resolve()
    stat = resolved.stat()
    return (str(resolved), stat.st_mtime_ns, stat.st_size)


_shared: list[BlenderRenderer] = []
_shared_lock = threading.Lock()


def real_renderer() -> BlenderRenderer:
    """The process's Workbench renderer, one bpy child for every simulator in the process;
    ImportError if Blender's module cannot be loaded."""
    with _shared_lock:
        if not _shared:
            _shared.append(BlenderRenderer())
        return _shared[0]
