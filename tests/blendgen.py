"""Make test .blend files from a real one by patching its active scene where BAT says the
fields are: the frame range (`r.sfra`, `r.efra`, `r.frame_step`) or the output
(`r.xsch`, `r.ysch`, `r.size`, `r.im_format.imtype`)."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

from blender_asset_tracer.blendfile import BlendFile, BlendFileBlock

from supervisor.blendfile import FILE_FORMATS

FIELDS = {"frame_start": b"sfra", "frame_end": b"efra", "frame_step": b"frame_step"}
OUTPUT_FIELDS = {
    "width": (b"r", b"xsch"),
    "height": (b"r", b"ysch"),
    "percentage": (b"r", b"size"),
    "file_format": (b"r", b"im_format", b"imtype"),
}
IMTYPES = {name: imtype for imtype, name in FILE_FORMATS.items()}
# struct formats for the DNA types these fields have had (xsch was a short in old files).
_PACKING = {b"int": "i", b"short": "h", b"char": "B", b"uchar": "B"}


def blend_with_range(source: Path, target: Path, start: int, end: int, step: int = 1) -> Path:
    """Copy an uncompressed .blend with its active scene's range replaced."""
    wanted = {"frame_start": start, "frame_end": end, "frame_step": step}
    values = {(b"r", field): wanted[name] for name, field in FIELDS.items()}
    return _patched_copy(source, target, values)


def blend_with_output(
    source: Path,
    target: Path,
    *,
    width: int,
    height: int,
    percentage: int = 100,
    file_format: str | int = "PNG",
) -> Path:
    """Copy an uncompressed .blend with its active scene's output size and format replaced.

    `file_format` is a bpy name ("PNG", "JPEG", "OPEN_EXR", ...) or a raw `imtype` number,
    for files that hold one Blender does not know.
    """
    imtype = IMTYPES[file_format] if isinstance(file_format, str) else file_format
    values = {
        OUTPUT_FIELDS["width"]: width,
        OUTPUT_FIELDS["height"]: height,
        OUTPUT_FIELDS["percentage"]: percentage,
        OUTPUT_FIELDS["file_format"]: imtype,
    }
    return _patched_copy(source, target, values)


def _patched_copy(source: Path, target: Path, values: dict[tuple[bytes, ...], int]) -> Path:
    """Copy `source` and overwrite the active scene's fields in place, in their DNA types."""
    shutil.copyfile(source, target)
    bfile = BlendFile(target)
    try:
        if bfile.is_compressed:
            raise ValueError(f"{source} is compressed; patch an uncompressed file")
        scene = _active_scene(bfile)
        endian = "<" if bfile.header.is_little_endian else ">"
        writes = []
        for path, value in values.items():
            field, offset = scene.dna_type.field_from_path(bfile.header.pointer_size, path)
            packing = endian + _PACKING[field.dna_type.dna_type_id]
            writes.append((scene.file_offset + offset, struct.pack(packing, value)))
    finally:
        bfile.close()
    with target.open("r+b") as handle:
        for offset, data in writes:
            handle.seek(offset)
            handle.write(data)
    return target


def _active_scene(bfile: BlendFile) -> BlendFileBlock:
    """The scene `FileGlobal.curscene` names, else the first one, as Blender opens it."""
    scenes = bfile.code_index[b"SC"]
    glob = bfile.code_index[b"GLOB"]
    current = glob[0].get(b"curscene") if glob else 0
    return next((scene for scene in scenes if scene.addr_old == current), scenes[0])
