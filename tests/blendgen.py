"""Make test .blend files with any frame range from a real one, by patching the active
scene's `r.sfra`, `r.efra` and `r.frame_step` where BAT says they are."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

from blender_asset_tracer.blendfile import BlendFile

FIELDS = {"frame_start": b"sfra", "frame_end": b"efra", "frame_step": b"frame_step"}


def blend_with_range(source: Path, target: Path, start: int, end: int, step: int = 1) -> Path:
    """Copy an uncompressed single-scene .blend with its scene's range replaced."""
    shutil.copyfile(source, target)
    bfile = BlendFile(target)
    try:
        [scene] = [block for block in bfile.blocks if block.code == b"SC"]
        endian = "<" if bfile.header.is_little_endian else ">"
        offsets = {
            name: scene.file_offset
            + scene.dna_type.field_from_path(bfile.header.pointer_size, (b"r", field))[1]
            for name, field in FIELDS.items()
        }
    finally:
        bfile.close()
    values = {"frame_start": start, "frame_end": end, "frame_step": step}
    with target.open("r+b") as handle:
        for name, offset in offsets.items():
            handle.seek(offset)
            handle.write(struct.pack(endian + "i", values[name]))
    return target
