"""Read the active scene's frame range from a .blend file, without Blender.

Customer files are untrusted. Blender Asset Tracer (BAT) decodes the DNA and the scene
fields, but plain BAT can loop forever or allocate without bound on crafted files, so
everything BAT is given has been checked here first: the file header, every block header
(lengths non-negative and inside the file) and the DNA1 tables. BAT is only handed the
few blocks we read (GLOB, DNA1, the scenes), so a big file costs a walk over its block
headers and nothing more. Compressed files are streamed into a temporary file with a
size cap first.

`read_scene_range` is the entry point for untrusted files: it runs the parse in a forked
child with an address-space limit and a hard timeout.
"""

from __future__ import annotations

import contextlib
import gc
import gzip
import json
import logging
import os
import re
import resource
import select
import signal
import stat
import struct
import sys
import tempfile
import time
import zlib
from array import array
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import zstandard
from blender_asset_tracer.blendfile import BlendFile, BlendFileBlock
from blender_asset_tracer.blendfile import dna as bat_dna

from supervisor.errors import BlendFileError

logger = logging.getLogger(__name__)

# Blender's frame limits (MAXFRAME, MINAFRAME in DNA_scene_types.h).
MAX_FRAME = 1_048_574
MIN_FRAME = -1_048_574

DEFAULT_TIMEOUT = 10.0
DEFAULT_MEMORY_LIMIT = 1024**3
DEFAULT_MAX_UNCOMPRESSED_BYTES = 4 * 1024**3

_BLEND_MAGIC = b"BLENDER"
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ZSTD_SKIPPABLE = 0x184D2A50  # low nibble is free
_LEGACY_HEADER = re.compile(rb"BLENDER([_-])([vV])([0-9]{3})")
_V1_HEADER = re.compile(rb"BLENDER([0-9]{2})-([0-9]{2})v([0-9]{4})")
_V1_HEADER_SIZE = 17

_ENDB = b"ENDB"
_GLOB = b"GLOB"
_DNA1 = b"DNA1"
_SCENE = b"SC\x00\x00"
_WANTED_CODES = frozenset((_ENDB, _GLOB, _DNA1, _SCENE))

# Sanity caps, far above what Blender writes (5.0: DNA1 ~130 kB, ~5k names, ~1k structs,
# ~10k fields), low enough that BAT's DNA objects stay in the tens of MB.
_MAX_DNA_BYTES = 16 * 1024**2
_MAX_DNA_NAMES = 200_000
_MAX_DNA_FIELDS = 500_000
_MAX_ARRAY_ITEMS = 1 << 32
_MAX_SCENES = 100_000
_DNA_NAME = re.compile(rb"[^\[\]]*(?:\[[0-9]{1,9}\][^\[\]]*)*")
_ARRAY_DIM = re.compile(rb"\[([0-9]+)\]")

_MIN_WINDOW = 4096
_MAX_WINDOW = 256 * 1024
_DECOMPRESS_CHUNK = 1024**2
_MAX_REPLY_BYTES = 64 * 1024
_MAX_MESSAGE_CHARS = 300


@dataclass(frozen=True)
class SceneRange:
    """The frames Blender renders for the file's active scene."""

    name: str
    frame_start: int
    frame_end: int
    frame_step: int

    def __post_init__(self) -> None:
        if self.frame_step < 0:
            raise ValueError(f"frame_step must not be negative, got {self.frame_step}")

    @property
    def frame_count(self) -> int:
        """How many frames Blender renders for the animation."""
        return len(self.frame_numbers())

    def frame_numbers(self) -> range:
        """Frames in render order: start, start+step, ... <= end (step 0: only start).

        The range always has a positive step, so `r[0]`, `r[-1]`, `r.step` describe it.
        An inverted range (end < start) is empty.
        """
        if self.frame_end < self.frame_start:
            return range(self.frame_start, self.frame_start)
        if self.frame_step == 0:
            return range(self.frame_start, self.frame_start + 1)
        return range(self.frame_start, self.frame_end + 1, self.frame_step)


def parse_scene_range(
    path: str | os.PathLike[str],
    *,
    max_uncompressed_bytes: int = DEFAULT_MAX_UNCOMPRESSED_BYTES,
) -> SceneRange:
    """Parse in this process; raises BlendFileError (and only that) for any bad file.

    Safe to call on untrusted files as far as the checks go, but only `read_scene_range`
    bounds time and memory for certain; use that one for customer files.
    """
    name = os.fspath(path)
    started = time.perf_counter()
    try:
        with contextlib.ExitStack() as stack:
            raw = stack.enter_context(_open_regular_file(name))
            blend = _uncompressed(raw, max_uncompressed_bytes)
            if blend is not raw:
                stack.enter_context(blend)
            scene = _parse_blend(Path(name), blend)
    except BlendFileError as exc:
        logger.debug("rejected %s: %s", name, exc)
        raise
    except MemoryError as exc:
        raise BlendFileError("out of memory while parsing the file") from exc
    except OSError as exc:
        raise BlendFileError(_clip(f"I/O error while reading the file: {exc}")) from exc
    except Exception as exc:
        # BAT can raise struct.error, ValueError, IndexError, ... on files our checks let
        # through; none of those may leave this function as anything but BlendFileError.
        logger.debug("BAT failed on %s", name, exc_info=True)
        raise BlendFileError(
            _clip(f"unreadable .blend file ({type(exc).__name__}: {exc})")
        ) from exc
    logger.debug("parsed %s in %.1f ms: %s", name, (time.perf_counter() - started) * 1000, scene)
    return scene


def read_scene_range(
    path: str | os.PathLike[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
    max_uncompressed_bytes: int = DEFAULT_MAX_UNCOMPRESSED_BYTES,
) -> SceneRange:
    """Parse in a forked child with hard limits; the one to use on untrusted files.

    The child may map `memory_limit` bytes more than it inherited from this process
    (RLIMIT_AS counts the inherited address space, which in a threaded worker can
    already exceed any fixed cap). After `timeout` seconds the child is killed. Bad
    files, timeouts and child crashes raise BlendFileError; OSError means the child
    could not be started at all.
    """
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    if memory_limit <= 0:
        raise ValueError("memory_limit must be positive")
    name = os.fspath(path)
    deadline = time.monotonic() + timeout
    read_fd, write_fd = os.pipe()
    try:
        pid = os.fork()
    except BaseException:
        os.close(read_fd)
        os.close(write_fd)
        raise
    if pid == 0:  # pragma: no cover - the child ends in os._exit
        os.close(read_fd)
        _child_main(write_fd, name, memory_limit, max_uncompressed_bytes)
    os.close(write_fd)
    try:
        outcome = _collect(pid, read_fd, deadline)
    finally:
        os.close(read_fd)
    if outcome is None:
        raise BlendFileError(f"parsing timed out after {timeout:g}s")
    reply, status = outcome
    return _scene_from_reply(reply, status)


# --- the child process ------------------------------------------------------------------


def _child_main(write_fd: int, path: str, memory_limit: int, max_uncompressed: int) -> None:
    """Parse and send one JSON reply; never returns, so no parent state runs in the child."""
    code = 2  # kept if even sending the reply fails
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        gc.disable()  # short-lived; BAT's DNA objects would trigger full collections
        failed = False
        try:
            _limit_resources(memory_limit)
            scene = parse_scene_range(path, max_uncompressed_bytes=max_uncompressed)
            reply: dict[str, Any] = {"ok": asdict(scene)}
        except BlendFileError as exc:
            reply = {"error": str(exc)}
        except MemoryError:
            reply = {"error": f"parsing needs more than {memory_limit} bytes of memory"}
        except BaseException as exc:
            logger.exception("blend parser child failed")
            reply = {"error": f"parser failed unexpectedly ({type(exc).__name__})"}
            failed = True
        data = json.dumps(reply).encode() + b"\n"
        while data:
            data = data[os.write(write_fd, data) :]
        code = 1 if failed else 0
    finally:
        os._exit(code)


def _limit_resources(memory_limit: int) -> None:
    """Cap the child's address space at what it inherited plus `memory_limit`; no cores."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            inherited = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        inherited = 0
    limit = inherited + memory_limit
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


# --- the parent side --------------------------------------------------------------------


def _collect(pid: int, read_fd: int, deadline: float) -> tuple[bytes, int | None] | None:
    """Read the child's one-line reply and reap the child; None (child killed) at deadline.

    EOF alone is not trusted: a child forked meanwhile by another thread holds a copy of
    our pipe's write end, so the reply ends with a newline and the exit is polled too.
    Whatever happens here, the child is reaped exactly once (its pid may be reused after).
    """
    poller = select.poll()
    poller.register(read_fd, select.POLLIN)
    reply = bytearray()
    reading = True
    reaped = False
    try:
        while True:
            reaped, status = _poll_exit(pid)
            if reaped:
                while reading and poller.poll(0):
                    chunk = os.read(read_fd, 65536)
                    reply += chunk
                    reading = bool(chunk) and len(reply) <= _MAX_REPLY_BYTES
                return bytes(reply), status
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if not reading:
                time.sleep(min(remaining, 0.001))
            elif poller.poll(max(1, int(min(remaining, 0.05) * 1000))):
                chunk = os.read(read_fd, 65536)
                reply += chunk
                if len(reply) > _MAX_REPLY_BYTES:
                    raise BlendFileError("parser process sent an oversized reply")
                reading = bool(chunk) and not reply.endswith(b"\n")
    finally:
        if not reaped:
            _kill_and_reap(pid)


def _poll_exit(pid: int) -> tuple[bool, int | None]:
    """(exited, wait status); status None when someone else (SIGCHLD=SIG_IGN) reaped it."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True, None
    return bool(done), (status if done else None)


def _kill_and_reap(pid: int) -> int | None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return None


def _scene_from_reply(reply: bytes, status: int | None) -> SceneRange:
    try:
        message = json.loads(reply) if reply else None
    except ValueError:
        message = None
    if isinstance(message, dict) and isinstance(message.get("error"), str):
        raise BlendFileError(message["error"])
    scene = message.get("ok") if isinstance(message, dict) else None
    if isinstance(scene, dict):
        with contextlib.suppress(TypeError, ValueError):
            return _checked_scene(**scene)
    if status is not None and os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            signame = signal.Signals(number).name
        except ValueError:
            signame = f"signal {number}"
        raise BlendFileError(f"parser process died ({signame})")
    code = os.waitstatus_to_exitcode(status) if status is not None else "unknown"
    raise BlendFileError(f"parser process gave no result (exit code {code})")


def _checked_scene(name: Any, frame_start: Any, frame_end: Any, frame_step: Any) -> SceneRange:
    values = (frame_start, frame_end, frame_step)
    if not isinstance(name, str) or any(type(v) is not int for v in values):
        raise TypeError("bad scene reply")
    return SceneRange(name, frame_start, frame_end, frame_step)


# --- opening and decompressing ----------------------------------------------------------


def _open_regular_file(path: str) -> IO[bytes]:
    """Open read-only; O_NONBLOCK so a FIFO planted at the path cannot block us."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise BlendFileError(f"cannot open file: {exc.strerror or exc}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BlendFileError("not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _uncompressed(raw: IO[bytes], max_bytes: int) -> IO[bytes]:
    """The file itself if uncompressed, else a capped, self-deleting decompressed copy."""
    head = os.pread(raw.fileno(), 8, 0)
    if head.startswith(_BLEND_MAGIC):
        return raw
    if head.startswith(_GZIP_MAGIC):
        return _decompress(raw, "gzip", max_bytes)
    if len(head) >= 4 and (
        head[:4] == _ZSTD_MAGIC or int.from_bytes(head[:4], "little") & ~0xF == _ZSTD_SKIPPABLE
    ):
        return _decompress(raw, "zstd", max_bytes)
    if not head:
        raise BlendFileError("empty file")
    raise BlendFileError("not a .blend file (bad magic)")


def _decompress(raw: IO[bytes], kind: str, max_bytes: int) -> IO[bytes]:
    """Stream into an unlinked temporary file (gone even if we are killed), capped."""
    raw.seek(0)
    reader: Any
    if kind == "gzip":
        reader = gzip.GzipFile(fileobj=raw, mode="rb")
    else:
        reader = zstandard.ZstdDecompressor().stream_reader(
            raw, read_across_frames=True, closefd=False
        )
    with contextlib.ExitStack() as cleanup:
        out = cleanup.enter_context(tempfile.TemporaryFile(prefix="blend-"))
        with reader:
            head = b""
            written = 0
            while True:
                try:
                    chunk = reader.read(_DECOMPRESS_CHUNK)
                except EOFError as exc:
                    raise BlendFileError(f"truncated {kind} data") from exc
                except (OSError, zlib.error, zstandard.ZstdError) as exc:
                    raise BlendFileError(_clip(f"corrupt {kind} data: {exc}")) from exc
                if not chunk:
                    break
                if len(head) < len(_BLEND_MAGIC):
                    head += chunk[: len(_BLEND_MAGIC) - len(head)]
                    if not _BLEND_MAGIC.startswith(head):
                        raise BlendFileError(f"{kind}-compressed data is not a .blend file")
                written += len(chunk)
                if written > max_bytes:
                    raise BlendFileError(
                        f"{kind}-compressed file expands to more than {max_bytes} bytes"
                    )
                out.write(chunk)
        if head != _BLEND_MAGIC:
            raise BlendFileError(f"{kind}-compressed data is not a .blend file")
        out.flush()
        logger.debug("decompressed %s data to %d bytes", kind, written)
        cleanup.pop_all()
        return out


# --- the uncompressed file: header, block walk, DNA checks ------------------------------


@dataclass(frozen=True)
class _Layout:
    """What the file header says about the rest of the file."""

    header_size: int
    version: int
    pointer_size: int
    endian: str
    bhead_size: int
    code_and_length: struct.Struct  # the two block-header fields the walk needs


@dataclass
class _BlockIndex:
    """Header offsets of the only blocks we read; DNA1 also with its length."""

    glob: int | None = None
    dna: int | None = None
    dna_length: int = 0
    scenes: list[int] = field(default_factory=list)


def _parse_header(head: bytes) -> _Layout:
    """Accept the legacy 12-byte header and the Blender 5 17-byte `BLENDER17-01v0500`."""
    if not head.startswith(_BLEND_MAGIC):
        raise BlendFileError("not a .blend file (bad magic)")
    if len(head) < 12:
        raise BlendFileError("truncated file: incomplete file header")
    legacy = _LEGACY_HEADER.match(head, 0, 12)
    if legacy:
        pointer_size = 4 if legacy.group(1) == b"_" else 8
        endian = "<" if legacy.group(2) == b"v" else ">"
        # BHead4 / SmallBHead8: code, int32 length, old pointer, SDNAnr, count.
        bhead_size = 20 if pointer_size == 4 else 24
        code_and_length = struct.Struct(endian + "4si")
        return _Layout(12, int(legacy.group(3)), pointer_size, endian, bhead_size, code_and_length)
    if head[7:8] in (b"_", b"-") or not head[7:9].isdigit():
        raise BlendFileError(f"invalid file header {head[:12]!r}")
    header_size = int(head[7:9])
    if header_size != _V1_HEADER_SIZE:
        raise BlendFileError(f"unsupported file header size {header_size}")
    if len(head) < _V1_HEADER_SIZE:
        raise BlendFileError("truncated file: incomplete file header")
    v1 = _V1_HEADER.fullmatch(head, 0, _V1_HEADER_SIZE)
    if not v1:
        raise BlendFileError(f"invalid file header {head[:_V1_HEADER_SIZE]!r}")
    if int(v1.group(2)) != 1:
        raise BlendFileError(
            f"unsupported .blend file format version {int(v1.group(2))} (newer Blender?)"
        )
    # LargeBHead8: code, SDNAnr, old pointer, int64 length, int64 count.
    return _Layout(_V1_HEADER_SIZE, int(v1.group(3)), 8, "<", 32, struct.Struct("<4s12xq"))


def _code_text(code: bytes) -> str:
    """A block code for messages: 'DATA', or b'\\x89...' when it is not printable."""
    text = code.rstrip(b"\x00")
    if text.isascii() and text.decode().isprintable():
        return repr(text.decode())
    return repr(text)


def _scan_blocks(fd: int, file_size: int, layout: _Layout) -> _BlockIndex:
    """Walk every block header up to ENDB, checking lengths, reading only the headers.

    Blender writes DNA1 last, so the whole chain has to be walked; block data is skipped
    with pread windows that start small after each jump. This loop is the cost of a big
    file, hence its shape.
    """
    unpack_from = layout.code_and_length.unpack_from
    header_len = layout.bhead_size
    wanted = _WANTED_CODES
    index = _BlockIndex()
    pos = layout.header_size
    window = b""
    window_start = window_end = 0
    window_size = _MIN_WINDOW
    while True:
        data_start = pos + header_len
        if data_start > window_end:
            if data_start > file_size:
                if pos == file_size:
                    raise BlendFileError(f"truncated file: no ENDB block (data ends at {pos})")
                raise BlendFileError(
                    f"truncated file: block header at offset {pos} needs {header_len} bytes, "
                    f"only {file_size - pos} remain"
                )
            window_size = min(window_size * 2, _MAX_WINDOW) if pos < window_end else _MIN_WINDOW
            window = os.pread(fd, max(window_size, header_len), pos)
            window_start, window_end = pos, pos + len(window)
            if data_start > window_end:
                raise BlendFileError("file changed while being read")
        code, length = unpack_from(window, pos - window_start)
        if not 0 <= length <= file_size - data_start:
            if code == _ENDB:
                break
            raise _bad_length(code, pos, length, file_size - data_start)
        if code in wanted:
            if code == _ENDB:
                break
            _note_block(index, code, pos, length)
        pos = data_start + length
    return index


def _bad_length(code: bytes, pos: int, length: int, remaining: int) -> BlendFileError:
    if length < 0:
        return BlendFileError(
            f"corrupt file: block {_code_text(code)} at offset {pos} has negative length {length}"
        )
    return BlendFileError(
        f"truncated file: block {_code_text(code)} at offset {pos} claims {length} bytes, "
        f"only {remaining} remain"
    )


def _note_block(index: _BlockIndex, code: bytes, pos: int, length: int) -> None:
    if code == _SCENE:
        if len(index.scenes) >= _MAX_SCENES:
            raise BlendFileError(f"implausible file: more than {_MAX_SCENES} scenes")
        index.scenes.append(pos)
    elif code == _GLOB:
        if index.glob is None:
            index.glob = pos
    elif code == _DNA1 and index.dna is None:
        index.dna = pos
        index.dna_length = length


def _pad4(offset: int) -> int:
    return (offset + 3) & ~3


def _check_dna(data: bytes, endian: str) -> None:
    """Check the DNA1 tables exactly along the path BAT's `decode_structs` takes.

    BAT trusts every count and index in there; a name with `[` but no `]` makes it loop
    forever, and huge counts make it allocate without bound.
    """

    def corrupt(why: str) -> BlendFileError:
        return BlendFileError(f"corrupt DNA1 block: {why}")

    u32 = struct.Struct(endian + "I")
    u16x2 = struct.Struct(endian + "HH")
    size = len(data)

    def table(tag: bytes, offset: int, limit: int) -> tuple[int, int]:
        """Check the 4-byte tag and the count after it; return (count, data offset)."""
        if data[offset : offset + 4] != tag or offset + 8 > size:
            raise corrupt(f"missing {tag.decode()} table")
        count = u32.unpack_from(data, offset + 4)[0]
        if count > limit or count > size - offset - 8:
            raise corrupt(f"implausible {tag.decode()} count {count}")
        return count, offset + 8

    if not data.startswith(b"SDNA"):
        raise corrupt("missing SDNA signature")
    names_len, offset = table(b"NAME", 4, _MAX_DNA_NAMES)
    names = data[offset:].split(b"\x00", names_len)
    if len(names) <= names_len:
        raise corrupt("name table runs past the end of the block")
    names.pop()
    for name in names:
        if b"[" in name or b"]" in name:
            _check_dna_name(name, corrupt)
    offset += sum(map(len, names)) + names_len

    types_len, offset = table(b"TYPE", _pad4(offset), 0xFFFF)
    types = data[offset:].split(b"\x00", types_len)
    if len(types) <= types_len:
        raise corrupt("type table runs past the end of the block")
    types.pop()
    offset += sum(map(len, types)) + types_len

    offset = _pad4(offset)
    if data[offset : offset + 4] != b"TLEN" or offset + 4 + 2 * types_len > size:
        raise corrupt("missing or short TLEN table")
    offset += 4 + 2 * types_len

    structs_len, offset = table(b"STRC", _pad4(offset), 0xFFFF)
    swap = (endian == "<") != (sys.byteorder == "little")
    total_fields = 0
    for _ in range(structs_len):
        if offset + 4 > size:
            raise corrupt("struct table runs past the end of the block")
        type_index, fields_len = u16x2.unpack_from(data, offset)
        offset += 4
        end = offset + 4 * fields_len
        if type_index >= types_len or end > size:
            raise corrupt("struct entry out of range")
        total_fields += fields_len
        if total_fields > _MAX_DNA_FIELDS:
            raise corrupt("implausible number of struct fields")
        if fields_len:
            pairs = array("H", data[offset:end])
            if swap:
                pairs.byteswap()
            if max(pairs[0::2]) >= types_len or max(pairs[1::2]) >= names_len:
                raise corrupt("struct field refers to a missing type or name")
        offset = end


def _check_dna_name(name: bytes, corrupt: Any) -> None:
    if _DNA_NAME.fullmatch(name) is None:
        raise corrupt(f"malformed field name {name[:40]!r}")
    items = 1
    for dim in _ARRAY_DIM.findall(name):
        items *= int(dim)
    if items > _MAX_ARRAY_ITEMS:
        raise corrupt(f"implausible array size in field name {name[:40]!r}")


# --- BAT on the checked file ------------------------------------------------------------


class _IndexedBlendFile(BlendFile):
    """BAT's BlendFile on an open, checked file, loading only the blocks we index.

    BAT 1.23 parses the Blender 5 header itself; what it must not do on untrusted input is
    walk the block chain or decode DNA we have not checked, hence this subclass.
    """

    def __init__(self, path: Path, fileobj: IO[bytes], header_offsets: list[int]) -> None:
        self._checked_fileobj = fileobj
        self._header_offsets = header_offsets
        super().__init__(path)

    def _open_file(self, path: Path, mode: str) -> IO[bytes]:
        self.is_compressed = False
        self.raw_filepath = path
        self._checked_fileobj.seek(0)
        return self._checked_fileobj

    def _load_blocks(self) -> None:
        self.structs.clear()
        self.sdna_index_from_id.clear()
        for offset in self._header_offsets:
            self.fileobj.seek(offset)
            block = BlendFileBlock(self)
            if block.code == _DNA1:
                self.decode_structs(block)
            self.blocks.append(block)
            self.code_index[block.code].append(block)
            self.block_from_addr.setdefault(block.addr_old, block)


def _parse_blend(path: Path, blend: IO[bytes]) -> SceneRange:
    """Check the uncompressed file, then let BAT decode only the blocks that matter."""
    fd = blend.fileno()
    file_size = os.fstat(fd).st_size
    layout = _parse_header(os.pread(fd, _V1_HEADER_SIZE, 0))
    index = _scan_blocks(fd, file_size, layout)
    scenes = index.scenes
    if index.dna is None:
        raise BlendFileError("no DNA1 block")
    if not scenes:
        raise BlendFileError("no scene in file")
    if index.dna_length > _MAX_DNA_BYTES:
        raise BlendFileError(f"implausible DNA1 block of {index.dna_length} bytes")
    dna_data = os.pread(fd, index.dna_length, index.dna + layout.bhead_size)
    _check_dna(dna_data, layout.endian)

    logger.debug(
        "%s: .blend version %d, %d scene block(s), DNA1 of %d bytes",
        path,
        layout.version,
        len(scenes),
        index.dna_length,
    )
    offsets = [index.dna, *scenes]
    if index.glob is not None:
        offsets.append(index.glob)
    bfile = _IndexedBlendFile(path, blend, sorted(offsets))
    scene_blocks = bfile.code_index[b"SC"]
    glob_blocks = bfile.code_index[_GLOB]
    scene = _active_scene(bfile, glob_blocks[0] if glob_blocks else None, scene_blocks)
    return _scene_range(bfile, scene)


def _struct_of(bfile: BlendFile, block: BlendFileBlock, expected: bytes) -> bat_dna.Struct:
    """The block's DNA struct, if it is the one the block code promises."""
    what = expected.decode()
    if not 0 <= block.sdna_index < len(bfile.structs) or block.count < 1:
        raise BlendFileError(f"corrupt {what} block at offset {block.file_offset}")
    dna_struct = bfile.structs[block.sdna_index]
    if dna_struct.dna_type_id != expected:
        raise BlendFileError(
            f"corrupt {what} block: its DNA type is {dna_struct.dna_type_id[:40]!r}"
        )
    return dna_struct


def _field(
    bfile: BlendFile, block: BlendFileBlock, dna_struct: bat_dna.Struct, path: tuple[bytes, ...]
) -> bat_dna.Field | None:
    """The field at `path`, checked to lie inside the block; None if the DNA lacks it."""
    try:
        found, offset = dna_struct.field_from_path(bfile.header.pointer_size, path)
    except (KeyError, OverflowError):
        return None
    if offset < 0 or offset + found.size > block.size:
        dotted = ".".join(p.decode() for p in path)
        what = dna_struct.dna_type_id.decode("ascii", "replace")
        raise BlendFileError(f"corrupt {what} block: {dotted} lies outside it")
    return found


def _active_scene(
    bfile: BlendFile, glob: BlendFileBlock | None, scenes: list[BlendFileBlock]
) -> BlendFileBlock:
    """`FileGlobal.curscene`, or the first scene when it is null (as Blender does)."""
    current = 0
    if glob is not None:
        dna_struct = _struct_of(bfile, glob, b"FileGlobal")
        pointer = _field(bfile, glob, dna_struct, (b"curscene",))
        if pointer is not None and pointer.name.is_pointer:
            current = glob.get(b"curscene")
    if current:
        for scene in scenes:
            if scene.addr_old == current:
                return scene
        logger.warning("curscene 0x%x is not a scene in the file; using the first scene", current)
    return scenes[0]


def _scene_range(bfile: BlendFile, scene: BlendFileBlock) -> SceneRange:
    dna_struct = _struct_of(bfile, scene, b"Scene")
    name_field = _field(bfile, scene, dna_struct, (b"id", b"name"))
    if name_field is None or name_field.dna_type.dna_type_id != b"char":
        raise BlendFileError("corrupt Scene block: no ID name")
    raw_name = scene.get((b"id", b"name"), as_str=False)
    if not raw_name.startswith(b"SC") or len(raw_name) < 3:
        raise BlendFileError(f"corrupt Scene block: ID name {raw_name[:40]!r}")
    name = raw_name[2:].decode("utf-8", "replace")

    start = _read_int(bfile, scene, dna_struct, (b"r", b"sfra"))
    end = _read_int(bfile, scene, dna_struct, (b"r", b"efra"))
    step = _read_int(bfile, scene, dna_struct, (b"r", b"frame_step"))
    if start is None or end is None:
        raise BlendFileError("corrupt Scene block: no frame range in its DNA")
    if step is None:
        step = 1  # before Blender 2.5 there was no frame_step: every frame rendered
    for label, value, low in (
        ("frame_start", start, MIN_FRAME),
        ("frame_end", end, MIN_FRAME),
        ("frame_step", step, 0),
    ):
        if not low <= value <= MAX_FRAME:
            raise BlendFileError(
                f"scene {name!r}: implausible {label} {value} (expected {low}..{MAX_FRAME})"
            )
    if end < start:
        raise BlendFileError(
            f"scene frame range is empty: scene {name!r} ends at {end}, before its start {start}"
        )
    return SceneRange(name, start, end, step)


def _read_int(
    bfile: BlendFile, block: BlendFileBlock, dna_struct: bat_dna.Struct, path: tuple[bytes, ...]
) -> int | None:
    found = _field(bfile, block, dna_struct, path)
    if found is None:
        return None
    if (
        found.dna_type.dna_type_id not in (b"int", b"short")
        or found.name.is_pointer
        or found.name.array_size != 1
    ):
        dotted = ".".join(p.decode() for p in path)
        raise BlendFileError(f"corrupt Scene block: {dotted} is not an integer field")
    value = block.get(path)
    if type(value) is not int:
        raise BlendFileError("corrupt Scene block: frame value is not an integer")
    return value


def _clip(message: str) -> str:
    if len(message) <= _MAX_MESSAGE_CHARS:
        return message
    return message[: _MAX_MESSAGE_CHARS - 3] + "..."
