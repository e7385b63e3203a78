"""How a simulated user turns a frame number into image bytes.

The default is a placeholder picture showing the frame number, at the size and in the format
the .blend's active scene renders to, as the simulator reads them itself with BAT
(`blend_output`), so the frames pass the checks a supervisor makes of the renders it gets.
`real_renderer()` renders the .blend with Blender's Workbench engine when `bpy` can be
imported. `bad_frame` is what a bad render node uploads instead (simulator/profiles.py picks
them).
"""

from __future__ import annotations

import gzip
import io
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Any

import zstandard
from blender_asset_tracer.blendfile import BlendFile, BlendFileBlock
from blender_asset_tracer.blendfile.exceptions import SegmentationFault
from PIL import Image

from simulator.png import MAX_PIXELS, MIN_HEIGHT, MIN_WIDTH, black_png, frame_pixels, frame_png

logger = logging.getLogger(__name__)

RenderFrame = Callable[[Path | None, int], bytes]
REAL_ENGINE = "BLENDER_WORKBENCH"
# The formats the real renderer keeps from the file; any other (EXR, video...) becomes PNG.
REAL_FORMATS = ("PNG", "JPEG")
START_TIMEOUT = 60.0
FRAME_TIMEOUT = 120.0
JPEG_QUALITY = 90  # Blender's default for JPEG output
OUTPUT_CACHE = 256  # files whose output settings are kept
FAILED_RENDER = b"render failed: out of memory\n"
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

# Blender's names (bpy's image_settings.file_format) of ImageFormatData.imtype values.
IMAGE_TYPES = {
    0: "TARGA",
    1: "IRIS",
    4: "JPEG",
    14: "TARGA_RAW",
    17: "PNG",
    20: "BMP",
    21: "HDR",
    22: "TIFF",
    23: "OPEN_EXR",
    24: "FFMPEG",
    26: "CINEON",
    27: "DPX",
    28: "OPEN_EXR_MULTILAYER",
    29: "DDS",
    30: "JPEG2000",
    35: "WEBP",
}

FileKey = tuple[str, int, int]


@dataclass(frozen=True)
class BlendOutput:
    """What a .blend's active scene renders to: `width` x `height` pixels (its resolution
    times its percentage, rounded down as Blender does) in `file_format`, Blender's name of
    it ("PNG", "JPEG", ...; "imtype N" for a value this table does not know)."""

    width: int
    height: int
    file_format: str


_outputs: dict[FileKey, BlendOutput | None] = {}
_outputs_lock = threading.Lock()


def blend_output(blend_path: Path) -> BlendOutput | None:
    """The output settings of a .blend's active scene (the GLOB block's `curscene`, else the
    first scene), read once per file path, modification time and size; None when the file
    is missing, BAT cannot read it or its size is not positive.

    Plain BAT, not the supervisor's guarded reader, so the simulator makes none of its
    assumptions. BAT can hang on some crafted files; the simulator reads only the files its
    catalog holds, and users render only those a supervisor accepted."""
    try:
        # Not _file_key: resolving the path costs 50 us a frame, a stat 2 us.
        stat = os.stat(blend_path)
    except OSError:
        return None
    key = (os.fspath(blend_path), stat.st_mtime_ns, stat.st_size)
    with _outputs_lock:
        if key in _outputs:
            return _outputs[key]
    output = _read_output(blend_path)
    with _outputs_lock:
        _outputs[key] = output
        while len(_outputs) > OUTPUT_CACHE:
            del _outputs[next(iter(_outputs))]
    return output


class _Reader(BlendFile):
    """BAT's reader, holding on to the file it opens so that it is closed even when parsing
    fails half-way."""

    def __init__(self, path: Path, opened: list[IO[bytes]]) -> None:
        self._opened = opened
        super().__init__(path)

    def _open_file(self, path: Path, mode: str) -> IO[bytes]:
        fileobj = super()._open_file(path, mode)
        self._opened.append(fileobj)
        return fileobj


def _read_output(path: Path) -> BlendOutput | None:
    opened: list[IO[bytes]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="sim-blend-") as folder:
            try:
                scene = _active_scene(_Reader(_uncompressed(path, Path(folder)), opened))
                if scene is None:
                    raise ValueError("no scene")
                x, y, percent = (scene.get((b"r", f)) for f in (b"xsch", b"ysch", b"size"))
                imtype = scene.get((b"r", b"im_format", b"imtype"))
            finally:
                for fileobj in opened:
                    fileobj.close()
    except Exception as exc:  # noqa: BLE001 (BAT raises many kinds on a broken file)
        logger.warning("cannot read the output settings of %s: %r", path.name, exc)
        return None
    output = BlendOutput(
        x * percent // 100, y * percent // 100, IMAGE_TYPES.get(imtype, f"imtype {imtype}")
    )
    if output.width < 1 or output.height < 1:
        logger.warning("%s renders no pixels: %s", path.name, output)
        return None
    if output.width * output.height > MAX_PIXELS:
        logger.warning("%s renders %s: placeholder frames stay small", path.name, output)
    return output


def _uncompressed(path: Path, folder: Path) -> Path:
    """The .blend itself, or a gzip or zstd one expanded into `folder`. BAT expands them
    itself, but leaves files open when the data is broken."""
    with path.open("rb") as handle:
        magic = handle.read(4)
        handle.seek(0)
        reader: IO[bytes]
        if magic.startswith(GZIP_MAGIC):
            reader = gzip.GzipFile(fileobj=handle)
        elif magic == ZSTD_MAGIC:
            decompressor = zstandard.ZstdDecompressor()
            reader = decompressor.stream_reader(handle, read_across_frames=True)
        else:
            return path
        target = folder / path.name
        with reader, target.open("wb") as out:
            shutil.copyfileobj(reader, out, 1 << 20)
    return target


def _active_scene(bfile: BlendFile) -> BlendFileBlock | None:
    """The scene the file's FileGlobal points to, else the first: what Blender opens (a file
    written by bpy.data.libraries.write has a null `curscene`)."""
    globs, scenes = bfile.code_index.get(b"GLOB"), bfile.code_index.get(b"SC")
    if globs:
        try:
            current = globs[0].get_pointer(b"curscene")
        except SegmentationFault:
            current = None
        if current is not None and current.code == b"SC":
            return current
    return scenes[0] if scenes else None


def _placeholder_size(blend_path: Path | None) -> BlendOutput | None:
    """The .blend's output when a placeholder can be drawn at its size."""
    output = blend_output(blend_path) if blend_path is not None else None
    if output is None or output.width * output.height > MAX_PIXELS:
        return None
    return output


def frame_jpeg(frame: int, width: int, height: int) -> bytes:
    """The placeholder picture of `frame_png(frame, width, height)` as a JPEG."""
    image = Image.frombytes("RGB", (width, height), frame_pixels(frame, width, height))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def extension_of(image: bytes) -> str:
    """The file extension a user announces for bytes it uploads: jpg for a JPEG, else png."""
    return "jpg" if image.startswith(b"\xff\xd8\xff") else "png"


def render_frame(blend_path: Path | None, frame: int) -> bytes:
    """The placeholder: a picture with the frame number at the .blend's output size, a JPEG
    when the scene asks for JPEG, else a PNG (whatever other format it asks for); the small
    `frame_png(frame)` when the output is unknown or too large to draw."""
    output = _placeholder_size(blend_path)
    if output is None:
        return frame_png(frame)
    if output.file_format == "JPEG":
        return frame_jpeg(frame, output.width, output.height)
    return frame_png(frame, output.width, output.height)


def bad_frame(kind: str, blend_path: Path | None, frame: int) -> bytes:
    """What a bad render node of `kind` (simulator/config.py BAD_KINDS) uploads for `frame`,
    at the .blend's output size (160x90 when unknown), always as PNG bytes: `black` a valid,
    all black PNG; `truncated` the first half of a valid PNG (no IEND); `wrong-resolution` a
    valid picture at half the width and height; `text` an error message."""
    output = _placeholder_size(blend_path)
    width, height = (output.width, output.height) if output else (MIN_WIDTH, MIN_HEIGHT)
    if kind == "black":
        return black_png(width, height)
    if kind == "truncated":
        image = frame_png(frame, width, height)
        return image[: len(image) // 2]
    if kind == "wrong-resolution":
        return frame_png(frame, max(1, width // 2), max(1, height // 2))
    if kind == "text":
        return FAILED_RENDER
    raise ValueError(f"unknown kind of bad user {kind!r}")


class BlenderRenderer:
    """Workbench frames from a child process that owns `bpy`.

    bpy renders only on the thread that imported it and crashes the interpreter at exit when
    that is not the main thread, while the simulator renders on its scheduler's threads. So
    bpy lives on the main thread of a spawned child, one frame at a time; a .blend that
    crashes or hangs Blender costs a restart of the child, never the simulator. A file this
    Blender cannot render (newer format, no camera) is logged once and answered with
    placeholders, as a frame without a known .blend is. Frames come at the file's own
    resolution and percentage, in its format when that is PNG or JPEG, else PNG.
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
            return render_frame(blend_path, frame)
        try:
            key = _file_key(blend_path)
        except OSError as exc:
            logger.warning("cannot read %s: %s; placeholder frame", blend_path, exc)
            return render_frame(blend_path, frame)
        with self._lock:
            if key in self._broken:
                return render_frame(blend_path, frame)
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
        return render_frame(blend_path, frame)

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
            # Blender adds the format's extension; the folder holds only this frame (or its
            # views, for a stereo scene: the first is taken).
            scene.render.filepath = str(Path(folder) / "frame")
            self.bpy.ops.render.render(write_still=True)
            written = sorted(Path(folder).iterdir())
            if not written:
                raise RuntimeError("Blender wrote no image")
            return written[0].read_bytes()

    def _load(self, key: FileKey) -> None:
        """Open the file unless it is already open; set Workbench, RGB, no stamps, and PNG
        unless the file asks for JPEG; its resolution and percentage are kept."""
        if self.open == key:
            return
        self.open = None
        self.bpy.ops.wm.open_mainfile(filepath=key[0], load_ui=False, use_scripts=False)
        self.opened += 1
        settings = self.bpy.context.scene.render
        settings.engine = REAL_ENGINE
        settings.use_file_extension = True
        if settings.image_settings.file_format not in REAL_FORMATS:
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
