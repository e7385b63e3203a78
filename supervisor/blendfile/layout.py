"""The uncompressed file's layout, checked before BAT sees any of it.

Plain BAT trusts the file: a negative block length makes it seek back to the same header
forever, a DNA name with `[` but no `]` makes it loop, huge counts make it allocate without
bound. `check_layout` walks every block header (lengths non-negative and inside the file)
and the DNA1 tables, and returns where the only blocks we read (GLOB, DNA1, the scenes)
start.
"""

from __future__ import annotations

import os
import re
import struct
import sys
from array import array
from dataclasses import dataclass, field
from typing import Any

from supervisor.errors import BlendFileError

BLEND_MAGIC = b"BLENDER"
_LEGACY_HEADER = re.compile(rb"BLENDER([_-])([vV])([0-9]{3})")
_V1_HEADER = re.compile(rb"BLENDER([0-9]{2})-([0-9]{2})v([0-9]{4})")
_V1_HEADER_SIZE = 17

_ENDB = b"ENDB"
GLOB = b"GLOB"
DNA1 = b"DNA1"
_SCENE = b"SC\x00\x00"
_WANTED_CODES = frozenset((_ENDB, GLOB, DNA1, _SCENE))

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


@dataclass(frozen=True)
class Layout:
    """What the file header says about the rest of the file."""

    header_size: int
    version: int
    pointer_size: int
    endian: str
    bhead_size: int
    code_and_length: struct.Struct  # the two block-header fields the walk needs


@dataclass
class BlockIndex:
    """Header offsets of the only blocks we read; DNA1 also with its length."""

    glob: int | None = None
    dna: int | None = None
    dna_length: int = 0
    scenes: list[int] = field(default_factory=list)


def _parse_header(head: bytes) -> Layout:
    """Accept the legacy 12-byte header and the Blender 5 17-byte `BLENDER17-01v0500`."""
    if not head.startswith(BLEND_MAGIC):
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
        return Layout(12, int(legacy.group(3)), pointer_size, endian, bhead_size, code_and_length)
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
    return Layout(_V1_HEADER_SIZE, int(v1.group(3)), 8, "<", 32, struct.Struct("<4s12xq"))


def _code_text(code: bytes) -> str:
    """A block code for messages: 'DATA', or b'\\x89...' when it is not printable."""
    text = code.rstrip(b"\x00")
    if text.isascii() and text.decode().isprintable():
        return repr(text.decode())
    return repr(text)


def _scan_blocks(fd: int, file_size: int, layout: Layout) -> BlockIndex:
    """Walk every block header up to ENDB, checking lengths, reading only the headers.

    Blender writes DNA1 last, so the whole chain has to be walked; block data is skipped
    with pread windows that start small after each jump. This loop is the cost of a big
    file, hence its shape.
    """
    unpack_from = layout.code_and_length.unpack_from
    header_len = layout.bhead_size
    wanted = _WANTED_CODES
    index = BlockIndex()
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


def _note_block(index: BlockIndex, code: bytes, pos: int, length: int) -> None:
    if code == _SCENE:
        if len(index.scenes) >= _MAX_SCENES:
            raise BlendFileError(f"implausible file: more than {_MAX_SCENES} scenes")
        index.scenes.append(pos)
    elif code == GLOB:
        if index.glob is None:
            index.glob = pos
    elif code == DNA1 and index.dna is None:
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


def check_layout(fd: int) -> tuple[Layout, BlockIndex]:
    """Check the uncompressed file open at `fd`; where its GLOB, DNA1 and scenes start.

    On return DNA1 exists and passed `_check_dna`, and there is at least one scene.
    """
    file_size = os.fstat(fd).st_size
    layout = _parse_header(os.pread(fd, _V1_HEADER_SIZE, 0))
    index = _scan_blocks(fd, file_size, layout)
    if index.dna is None:
        raise BlendFileError("no DNA1 block")
    if not index.scenes:
        raise BlendFileError("no scene in file")
    if index.dna_length > _MAX_DNA_BYTES:
        raise BlendFileError(f"implausible DNA1 block of {index.dna_length} bytes")
    _check_dna(os.pread(fd, index.dna_length, index.dna + layout.bhead_size), layout.endian)
    return layout, index
