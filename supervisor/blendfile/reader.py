"""Read the active scene's frame range and output settings from a .blend file, without Blender.

Blender Asset Tracer (BAT) decodes the DNA and the scene fields; it is only handed a file
whose layout `check_layout` has checked, and only the few blocks we read (GLOB, DNA1, the
scenes), so a big file costs a walk over its block headers and nothing more. Compressed
files are expanded into a temporary file with a size cap first.

`parse_scene_range` runs in the calling process. For customer files use
`supervisor.blendfile.read_scene_range`, which runs it in a child with hard limits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from blender_asset_tracer.blendfile import BlendFile, BlendFileBlock
from blender_asset_tracer.blendfile import dna as bat_dna

from supervisor.blendfile.files import clip, open_regular_file, uncompressed
from supervisor.blendfile.layout import DNA1, GLOB, check_layout
from supervisor.errors import BlendFileError

logger = logging.getLogger(__name__)

# Blender's frame limits (MAXFRAME, MINAFRAME in DNA_scene_types.h).
MAX_FRAME = 1_048_574
MIN_FRAME = -1_048_574

DEFAULT_MAX_UNCOMPRESSED_BYTES = 4 * 1024**3

# Output values outside these are read as unknown. Blender's UI never goes below 4 px and
# 65536 px is far beyond any frame we render; `r.size` (the percentage) is a DNA short.
MAX_RESOLUTION = 65_536
MAX_RESOLUTION_PERCENTAGE = 32_767

# `ImageFormatData.imtype` (the R_IMF_IMTYPE_* values of DNA_scene_types.h) to the name
# bpy gives `ImageFormatSettings.file_format` (the enum items of rna_scene). Values Blender
# no longer offers (IRIZ, DDS, H264, XVID, THEORA, AV1, AVIF) are left out: read as unknown.
FILE_FORMATS: dict[int, str] = {
    0: "TARGA",
    1: "IRIS",
    4: "JPEG",
    14: "TARGA_RAW",
    15: "AVI_RAW",
    16: "AVI_JPEG",
    17: "PNG",
    20: "BMP",
    21: "HDR",
    22: "TIFF",
    23: "OPEN_EXR",
    24: "FFMPEG",
    26: "CINEON",
    27: "DPX",
    28: "OPEN_EXR_MULTILAYER",
    30: "JPEG2000",
    35: "WEBP",
}

# DNA types an output field may have, with the size BAT reads for each.
_INTEGER_SIZES = {b"int": 4, b"short": 2, b"char": 1, b"uchar": 1}


@dataclass(frozen=True)
class SceneRange:
    """The frames Blender renders for the file's active scene, and the images it writes.

    The output fields are None when the file does not say (an old file, odd DNA, a value
    out of range, an `imtype` not in `FILE_FORMATS`); the frame range is always known.
    """

    name: str
    frame_start: int
    frame_end: int
    frame_step: int
    resolution_x: int | None = None
    resolution_y: int | None = None
    resolution_percentage: int | None = None
    file_format: str | None = None

    def __post_init__(self) -> None:
        if self.frame_step < 0:
            raise ValueError(f"frame_step must not be negative, got {self.frame_step}")

    @property
    def output_width(self) -> int | None:
        """Width in pixels of the images Blender writes; None when a part is unknown."""
        return _scaled(self.resolution_x, self.resolution_percentage)

    @property
    def output_height(self) -> int | None:
        """Height in pixels of the images Blender writes; None when a part is unknown."""
        return _scaled(self.resolution_y, self.resolution_percentage)

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


def _scaled(size: int | None, percentage: int | None) -> int | None:
    """Blender's own rounding: `(rd->size * rd->xsch) / 100` in C ints (render pipeline).

    A render region with "crop to render region" makes Blender write only that region;
    this is the size of the whole frame.
    """
    if size is None or percentage is None:
        return None
    return size * percentage // 100


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
            raw = stack.enter_context(open_regular_file(name))
            blend = uncompressed(raw, max_uncompressed_bytes)
            if blend is not raw:
                stack.enter_context(blend)
            scene = _parse_blend(Path(name), blend)
    except BlendFileError as exc:
        logger.debug("rejected %s: %s", name, exc)
        raise
    except MemoryError as exc:
        raise BlendFileError("out of memory while parsing the file") from exc
    except OSError as exc:
        raise BlendFileError(clip(f"I/O error while reading the file: {exc}")) from exc
    except Exception as exc:
        # BAT can raise struct.error, ValueError, IndexError, ... on files our checks let
        # through; none of those may leave this function as anything but BlendFileError.
        logger.debug("BAT failed on %s", name, exc_info=True)
        raise BlendFileError(clip(f"unreadable .blend file ({type(exc).__name__}: {exc})")) from exc
    logger.debug("parsed %s in %.1f ms: %s", name, (time.perf_counter() - started) * 1000, scene)
    return scene


class _IndexedBlendFile(BlendFile):
    """BAT's BlendFile on an open, checked file, loading only the blocks we index.

    BAT 1.23 parses the Blender 5 header itself; what it must not do on untrusted input is
    walk the block chain or decode DNA we have not checked, hence this subclass. It overrides
    BAT's private `_open_file` and `_load_blocks`, which is why setup.cfg pins BAT to 1.23.x.
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
            if block.code == DNA1:
                self.decode_structs(block)
            self.blocks.append(block)
            self.code_index[block.code].append(block)
            self.block_from_addr.setdefault(block.addr_old, block)


def _parse_blend(path: Path, blend: IO[bytes]) -> SceneRange:
    """Check the uncompressed file, then let BAT decode only the blocks that matter."""
    layout, index = check_layout(blend.fileno())
    logger.debug(
        "%s: .blend version %d, %d scene block(s), DNA1 of %d bytes",
        path,
        layout.version,
        len(index.scenes),
        index.dna_length,
    )
    offsets = [index.dna, *index.scenes]
    if index.glob is not None:
        offsets.append(index.glob)
    bfile = _IndexedBlendFile(path, blend, sorted(offsets))
    scene_blocks = bfile.code_index[b"SC"]
    glob_blocks = bfile.code_index[GLOB]
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
    return SceneRange(name, start, end, step, **_output_settings(bfile, scene, dna_struct, name))


def _output_settings(
    bfile: BlendFile, scene: BlendFileBlock, dna_struct: bat_dna.Struct, name: str
) -> dict[str, int | str | None]:
    """`r.xsch`, `r.ysch`, `r.size`, `r.im_format.imtype`, each None when unreadable."""
    resolution = (1, MAX_RESOLUTION)
    imtype = _output_int(bfile, scene, dna_struct, (b"r", b"im_format", b"imtype"), (0, 255))
    file_format = None if imtype is None else FILE_FORMATS.get(imtype)
    if imtype is not None and file_format is None:
        logger.debug("scene %r: unknown output imtype %d", name, imtype)
    return {
        "resolution_x": _output_int(bfile, scene, dna_struct, (b"r", b"xsch"), resolution),
        "resolution_y": _output_int(bfile, scene, dna_struct, (b"r", b"ysch"), resolution),
        "resolution_percentage": _output_int(
            bfile, scene, dna_struct, (b"r", b"size"), (1, MAX_RESOLUTION_PERCENTAGE)
        ),
        "file_format": file_format,
    }


def _output_int(
    bfile: BlendFile,
    block: BlendFileBlock,
    dna_struct: bat_dna.Struct,
    path: tuple[bytes, ...],
    bounds: tuple[int, int],
) -> int | None:
    """An integer output field, or None (logged at debug) for anything unexpected.

    Stricter than `_read_int` about the DNA, and it never raises: these fields came after
    the frame range, and a file whose range reads must not be refused over them.
    """
    dotted = ".".join(p.decode() for p in path)
    why = _unreadable(bfile, block, dna_struct, path)
    if why is None:
        value = block.get(path)
        low, high = bounds
        if type(value) is int and low <= value <= high:
            return value
        why = f"value {value!r} outside {low}..{high}"
    logger.debug("%s: %s unknown, %s", bfile.filepath, dotted, why)
    return None


def _unreadable(
    bfile: BlendFile, block: BlendFileBlock, dna_struct: bat_dna.Struct, path: tuple[bytes, ...]
) -> str | None:
    """Why BAT cannot read `path` as one plain integer inside the block; None if it can."""
    pointer_size = bfile.header.pointer_size
    for depth in range(1, len(path)):
        # BAT steps into a nested struct even through a pointer or an array; the bytes it
        # would read there are not the field.
        try:
            outer, _offset = dna_struct.field_from_path(pointer_size, path[:depth])
        except (KeyError, OverflowError):
            return "not in the file's DNA"
        if outer.name.is_pointer or outer.name.array_size != 1:
            return f"{outer.name.name_only!r} is not a plain struct"
    try:
        found = _field(bfile, block, dna_struct, path)
    except BlendFileError as exc:
        return str(exc)
    if found is None:
        return "not in the file's DNA"
    type_id = found.dna_type.dna_type_id
    if (
        _INTEGER_SIZES.get(type_id) != found.dna_type.size
        or found.name.is_pointer
        or found.name.array_size != 1
    ):
        return f"not a plain integer field ({type_id[:40]!r}, {found.name.name_full[:40]!r})"
    return None


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
