"""Is an uploaded frame the image its .blend asks for? Checked on the stream, chunk by chunk,
while the frame is copied to the final store, so a bad one is refused before it is stored.

`FrameCheck.feed` takes the bytes as they pass and refuses as soon as they prove the frame
bad: a first few bytes that are no image format's (`not-an-image`) or not the expected one's
(`wrong-format`), a header whose size is not the expected one (`wrong-resolution`: PNG's
IHDR, JPEG's SOFn, OpenEXR's dataWindow). `finish` judges the end: nothing at all (`empty`),
a PNG without its IEND chunk or a JPEG without its EOI marker (`truncated`), and, for a frame
of at most `content_max_bytes`, its pixels (`flat-colour`, `undecodable`). It hashes every
byte (SHA-256) on the way.

A PNG's pixels are judged as they pass (`_PngPixels`): its chunks are walked and their CRCs
checked to the IEND, and its image data is inflated a few rows at a time, each row compared
with what it must be if the frame is one colour, until a row is not: for a rendered frame
that is one of its first rows, and nothing more is inflated. Only a flat frame is inflated
whole. An interlaced PNG (or one of rows wider than PNG_MAX_ROW_BYTES), and a JPEG, are
kept and decoded by Pillow at the end.

Memory is constant: the first HEAD_BYTES, the last TAIL_BYTES, a carry-over of a few bytes
for the JPEG marker walk and the PNG chunk walk, at most EXR_HEADER_MAX_BYTES of an OpenEXR
header, a PNG's palette and a few of its rows (PNG_INFLATE_OUTPUT) with zlib's window, and
a JPEG or an interlaced PNG itself only while it may still be decoded: one of at most
CONTENT_MAX_PIXELS, no larger than `content_max_bytes` (dropped once it grows past it, or
not kept at all when a declared size is above it). Per chunk the work is the hash and
slices, and for a PNG a CRC and a few rows: no Python loop over bytes.

A check is used by one thread for one frame; a retried copy takes a new one.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import itertools
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from PIL import Image

from supervisor.errors import SupervisorError

REASONS = frozenset(
    {
        "empty",
        "not-an-image",
        "wrong-format",
        "wrong-resolution",
        "truncated",
        "flat-colour",
        "undecodable",
    }
)

# The longest magic (JPEG 2000's signature box) is 12 bytes, PNG's IHDR size ends at 24.
HEAD_BYTES = 32
PNG_TRAILER = b"\x00\x00\x00\x00IEND\xaeB`\x82"
JPEG_TRAILER = b"\xff\xd9"
TAIL_BYTES = len(PNG_TRAILER)
# Pixels decoded for the content check; a bigger frame is not decoded (a 40 MP RGBA frame
# decodes to 160 MB, a decompression bomb to whatever it claims).
CONTENT_MAX_PIXELS = 40_000_000
# An OpenEXR header larger than this (custom attributes) leaves its size unchecked.
EXR_HEADER_MAX_BYTES = 64 * 1024
# Marker steps (segments and fill bytes) walked before a JPEG's SOFn: real files take tens.
JPEG_MAX_STEPS = 4096
# PNG image data inflated at a time, in whole rows (one at least): a frame that is not flat
# is known after its first rows, a flat one is inflated whole in calls of this size.
PNG_INFLATE_OUTPUT = 32 * 1024
# A PNG of wider rows (Blender's widest, 65536 pixels of 16-bit RGBA, is 512 KiB) is left
# to Pillow, as an interlaced one is: a row, and each row it is compared with, is held.
PNG_MAX_ROW_BYTES = 1024 * 1024
# Compressed bytes handed to zlib at a time: what it has not consumed when its output is
# full comes back as a copy (`unconsumed_tail`), a copy this bounds.
PNG_INFLATE_INPUT = 8 * 1024

# What the first bytes say, checked in order: (magic, the format's name as Blender spells it).
_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"v/1\x01", "OPEN_EXR"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
    (b"#?RADIANCE", "HDR"),
    (b"#?RGBE", "HDR"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG2000"),
    (b"\xff\x4f\xff\x51", "JPEG2000"),
    (b"SDPX", "DPX"),
    (b"XPDS", "DPX"),
    (b"\x80\x2a\x5f\xd7", "CINEON"),
    (b"\xd7\x5f\x2a\x80", "CINEON"),
    (b"\x01\xda", "IRIS"),
    (b"BM", "BMP"),
)
# Blender's `file_format` names to the format their files are detected as.
_BLENDER_FORMATS = {
    "PNG": "PNG",
    "JPEG": "JPEG",
    "OPEN_EXR": "OPEN_EXR",
    "OPEN_EXR_MULTILAYER": "OPEN_EXR",
    "TIFF": "TIFF",
    "BMP": "BMP",
    "WEBP": "WEBP",
    "HDR": "HDR",
    "JPEG2000": "JPEG2000",
    "DPX": "DPX",
    "CINEON": "CINEON",
    "IRIS": "IRIS",
}
# Formats without a magic: bytes that match none are accepted as one of them. Every magic
# above has a second byte no TGA header has (its colour-map type is 0 or 1), or, for JPEG
# 2000's, image type 0 ("no image data"), so a detected format is never a TGA.
_NO_MAGIC = frozenset({"TARGA", "TARGA_RAW"})
_JPEG_SOF = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
)
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
# PNG colour types: samples a pixel, and the bit depths allowed.
_PNG_COLOUR_TYPES = {
    0: (1, (1, 2, 4, 8, 16)),
    2: (3, (8, 16)),
    3: (1, (1, 2, 4, 8)),
    4: (2, (8, 16)),
    6: (4, (8, 16)),
}
_PNG_CHUNK_HEAD = struct.Struct(">I4s")
_PNG_MAX_CHUNK = 2**31 - 1
_OBJECT_REPR = re.compile(r"<[^<>]* object at 0x[0-9a-fA-F]+>")


class InvalidFrame(SupervisorError):
    """A frame that must not be stored. `reason` is one of REASONS, a short stable code for
    metrics and logs; `detail` says what was found, for people."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown reason {reason!r}")
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")

    def __reduce__(self) -> tuple[type[InvalidFrame], tuple[str, str]]:
        return type(self), (self.reason, self.detail)


@dataclass(frozen=True)
class Expectation:
    """What a frame is checked against. `file_format` is Blender's name for the output
    format in the .blend ("PNG", "JPEG", "OPEN_EXR", ...); None, or a name without a
    detectable format (a movie's), checks only that the bytes are an image. Sizes are in
    pixels, None when unknown. The pixels of frames of at most `content_max_bytes` are
    inspected (a PNG's on the stream, a JPEG kept and decoded); 0 never."""

    file_format: str | None
    width: int | None
    height: int | None
    content_max_bytes: int

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"{name} must be an int or None")
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1")
        if isinstance(self.content_max_bytes, bool) or not isinstance(self.content_max_bytes, int):
            raise TypeError("content_max_bytes must be an int")
        if self.content_max_bytes < 0:
            raise ValueError("content_max_bytes must be at least 0")


@dataclass(frozen=True)
class FrameReport:
    """What a check found in a whole frame.

    `problem` is what would have refused the frame when the check does not enforce (the
    first one found), else None. `width`, `height` come from the header where it gives them;
    `detected_format` is Blender's name of the format the bytes are in (None: no magic, a
    TGA); `colour` is the colour of a flat frame (a PNG's in its own samples, 0-65535 for
    16 bits, 0-3 for 2; a palette's entry; Pillow's for a JPEG or an interlaced PNG).
    `content_skipped` says why the pixels were not inspected: "disabled" (content_max_bytes
    is 0), "too-many-bytes", "too-many-pixels", "one-pixel", "format" (only PNG and JPEG
    are), "invalid" (a problem was found first); None when they were.
    """

    size: int
    sha256: str
    problem: InvalidFrame | None
    width: int | None
    height: int | None
    detected_format: str | None
    colour: tuple[int, ...] | None
    content_skipped: str | None


def _sniff(head: bytes) -> str | None:
    """The format the first bytes are in, None when they are in none we know."""
    for magic, name in _MAGICS:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


class _Joined(io.RawIOBase):
    """Chunks read as one seekable file, without joining them into a copy."""

    def __init__(self, chunks: list[bytes]) -> None:
        super().__init__()
        self._chunks = chunks
        self._ends = list(itertools.accumulate(len(chunk) for chunk in chunks))
        self._size = self._ends[-1] if self._ends else 0
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        done = 0
        index = bisect.bisect_right(self._ends, self._pos)
        while done < len(out) and index < len(self._chunks):
            chunk = self._chunks[index]
            start = self._pos - (self._ends[index] - len(chunk))
            step = min(len(out) - done, len(chunk) - start)
            out[done : done + step] = memoryview(chunk)[start : start + step]
            done += step
            self._pos += step
            index += 1
        return done


class _JpegHeader:
    """Walks a JPEG's marker segments from SOI to the first SOFn, across chunks, keeping at
    most the few bytes of a marker cut by a chunk's end. `size` is (width, height) once the
    SOFn is found."""

    def __init__(self) -> None:
        self.size: tuple[int, int] | None = None
        self._skip = 2  # SOI
        self._carry = b""
        self._steps = 0

    def feed(self, data: bytes) -> None:
        if self.size is not None:
            return
        if self._carry:
            data = self._carry + data
            self._carry = b""
        i, end = 0, len(data)
        while i < end:
            if self._skip:
                step = min(self._skip, end - i)
                i += step
                self._skip -= step
                continue
            if end - i < 2:
                break
            self._steps += 1
            if self._steps > JPEG_MAX_STEPS:
                raise InvalidFrame("undecodable", "no JPEG frame header among the first markers")
            if data[i] != 0xFF:
                raise InvalidFrame("undecodable", f"no JPEG marker at byte {i}")
            marker = data[i + 1]
            if marker == 0xFF:  # a fill byte before the marker
                i += 1
                continue
            if marker in _JPEG_STANDALONE:
                i += 2
                continue
            if marker in (0x00, 0xD8, 0xD9, 0xDA):
                raise InvalidFrame(
                    "undecodable", f"JPEG marker {marker:02X} before its frame header"
                )
            if end - i < 4:
                break
            length = (data[i + 2] << 8) | data[i + 3]
            if length < 2:
                raise InvalidFrame("undecodable", "JPEG segment shorter than its length field")
            if marker in _JPEG_SOF:
                if end - i < 9:
                    break
                height = (data[i + 5] << 8) | data[i + 6]
                width = (data[i + 7] << 8) | data[i + 8]
                if length < 8 or not width or not height:
                    raise InvalidFrame("undecodable", "JPEG frame header without a size")
                self.size = (width, height)
                return
            i += 2
            self._skip = length
        self._carry = bytes(data[i:])


class _ExrHeader:
    """Reads an OpenEXR header's attributes up to `dataWindow`, keeping at most
    EXR_HEADER_MAX_BYTES; past that (or at the header's end without one) the size stays
    unknown and `done` is True."""

    def __init__(self) -> None:
        self.size: tuple[int, int] | None = None
        self.done = False
        self._buffer = bytearray()
        self._next = 8  # magic and version

    def feed(self, data: bytes) -> None:
        if self.done:
            return
        self._buffer += data[: EXR_HEADER_MAX_BYTES - len(self._buffer)]
        buf, pos = self._buffer, self._next
        while True:
            name_end = buf.find(b"\0", pos)
            if name_end < 0:
                break
            if name_end == pos:  # an empty name ends the header
                self.done = True
                return
            type_end = buf.find(b"\0", name_end + 1)
            if type_end < 0 or type_end + 5 > len(buf):
                break
            (length,) = struct.unpack_from("<i", buf, type_end + 1)
            value = type_end + 5
            if length < 0:
                raise InvalidFrame("undecodable", "OpenEXR attribute of negative size")
            if value + length > len(buf):
                break
            if buf[pos:name_end] == b"dataWindow" and length == 16:
                x_min, y_min, x_max, y_max = struct.unpack_from("<4i", buf, value)
                if x_max < x_min or y_max < y_min:
                    raise InvalidFrame("undecodable", "OpenEXR dataWindow is empty")
                self.size = (x_max - x_min + 1, y_max - y_min + 1)
                self.done = True
                self._buffer = bytearray()
                return
            pos = value + length
        self._next = pos
        if len(buf) >= EXR_HEADER_MAX_BYTES:
            self.done = True
            self._buffer = bytearray()

    @property
    def cut_short(self) -> bool:
        """The header ended (at the end of the data) before it could be read through."""
        return not self.done


def _png_predictor(kind: int, left: int, up: int, upleft: int) -> int:
    """The byte PNG filter type `kind` predicts from the bytes left, up and up-left of it."""
    if kind == 0:
        return 0
    if kind == 1:
        return left
    if kind == 2:
        return up
    if kind == 3:
        return (left + up) >> 1
    estimate = left + up - upleft
    to_left, to_up, to_upleft = abs(estimate - left), abs(estimate - up), abs(estimate - upleft)
    if to_left <= to_up and to_left <= to_upleft:
        return left
    return up if to_up <= to_upleft else upleft


def _png_filtered(kind: int, raw: bytes, left: bytes, up: bytes, upleft: bytes) -> bytes:
    """`raw` bytes as filter type `kind` stores them, given their neighbours."""
    return bytes(
        (byte - _png_predictor(kind, a, b, c)) & 0xFF
        for byte, a, b, c in zip(raw, left, up, upleft, strict=True)
    )


class _PngPixels:
    """Judges a non-interlaced PNG's pixels as its bytes pass, from its first byte: walks its
    chunks to the IEND, checking each one's CRC, and inflates its image data a few rows at
    a time while every row so far is its first pixel repeated.

    Rows are not unfiltered: when the rows above are all pixel v, a row is too exactly when
    it holds what filtering a row of v gives, which is one of ten rows (five filter types,
    with a row of zeros or of v above), each made once, on first use, by repeating a few
    filtered bytes, and compared whole. The first row that differs proves the frame is not
    flat: nothing more is inflated (the walk and the CRCs go on). A pixel of less than a
    byte is judged by whole bytes, those of a flat row all alike, and the last one padded
    with zero bits, as encoders do (one padded otherwise is judged not flat).
    """

    def __init__(self, ihdr: bytes) -> None:
        width, height, depth, colour_type, compression, filtering = struct.unpack_from(
            ">IIBBBB", ihdr
        )
        samples, depths = _PNG_COLOUR_TYPES.get(colour_type, (0, ()))
        if depth not in depths:
            raise InvalidFrame(
                "undecodable", f"a PNG of colour type {colour_type} and bit depth {depth}"
            )
        if compression or filtering:
            raise InvalidFrame(
                "undecodable", f"a PNG of compression {compression} and filter method {filtering}"
            )
        bits = samples * depth
        self._height = height
        self._depth = depth
        self._palette_type = colour_type == 3
        self._unit_size = max(1, bits // 8)  # a pixel's bytes, or the one holding several
        self._full_units = width if depth >= 8 else width * depth // 8
        self._last_mask = (0xFF00 >> (width * bits % 8)) & 0xFF  # a partly used last byte's bits
        self.row_size = 1 + (width * bits + 7) // 8
        self._step = self.row_size * max(1, PNG_INFLATE_OUTPUT // self.row_size)
        self._inflate: zlib._Decompress | None = zlib.decompressobj()
        self._partial = bytearray()  # a row cut by the end of an inflated piece
        self._unit = b""  # the first pixel's bytes, as the first row stores them
        self._expected: list[bytes | None] = [None] * 10
        self._made: dict[tuple[bytes, bytes, bytes], bytes] = {}
        self._rows = 0  # rows seen, all alike
        self._flat = True
        # The chunk walk: the signature is skipped, then come the first chunk's length and
        # type, and after each chunk's data its CRC with the next chunk's length and type.
        self._skip = 8
        self._want = 8
        self._carry = bytearray()
        self._kind = b""
        self._left = 0
        self._crc = 0
        self._palette = bytearray()
        self._idat = 0  # 0: none yet, 1: in them, 2: past them
        self._ended = False

    def feed(self, data: bytes) -> None:
        """The next bytes of the file."""
        view = memoryview(data).cast("B")
        at, end = 0, len(view)
        if self._skip:
            at = min(self._skip, end)
            self._skip -= at
        while at < end:
            if self._ended:
                raise InvalidFrame("undecodable", "bytes after the PNG's IEND chunk")
            if self._left:
                step = min(self._left, end - at)
                piece = view[at : at + step]
                self._crc = zlib.crc32(piece, self._crc)
                if self._kind == b"IDAT":
                    if self._inflate is not None:
                        self._inflate_data(piece)
                elif self._kind == b"PLTE":
                    self._palette += piece
                at += step
                self._left -= step
            elif self._carry or end - at < self._want:
                step = min(self._want - len(self._carry), end - at)
                self._carry += view[at : at + step]
                at += step
                if len(self._carry) == self._want:
                    self._between_chunks(self._carry)
                    self._carry = bytearray()
            else:
                want = self._want
                self._between_chunks(view[at : at + want])
                at += want

    def colour(self) -> tuple[int, ...] | None:
        """Once the whole file has passed: the frame's colour when it is flat, else None.
        The colour is in the PNG's samples (16-bit ones as such), a palette's entry for a
        palette PNG (black past its end, as Pillow shows it)."""
        if not self._ended:
            raise InvalidFrame("undecodable", "the PNG's chunks do not end at its IEND chunk")
        if not self._flat:
            return None
        if self._rows < self._height:
            raise InvalidFrame(
                "undecodable",
                f"the PNG's image data ends after {self._rows} of its {self._height} rows",
            )
        unit = self._unit
        if self._depth < 8:
            samples: tuple[int, ...] = (unit[0] >> (8 - self._depth),)
        elif self._depth == 16:
            samples = tuple(int.from_bytes(unit[i : i + 2], "big") for i in range(0, len(unit), 2))
        else:
            samples = tuple(unit)
        if self._palette_type:
            return tuple(self._palette[samples[0] * 3 : samples[0] * 3 + 3]) or (0, 0, 0)
        return samples

    def _between_chunks(self, data: bytes | bytearray | memoryview) -> None:
        """The CRC of the chunk just walked (none before the first), then the length and type
        of the next one (none after the IEND)."""
        if self._kind:
            if int.from_bytes(data[:4], "big") != self._crc:
                raise InvalidFrame(
                    "undecodable", f"the PNG's {self._kind.decode('latin-1')} chunk fails its CRC"
                )
            if self._kind == b"IEND":
                self._ended = True
                return
            data = data[4:]
        length, kind = _PNG_CHUNK_HEAD.unpack_from(data)
        if length > _PNG_MAX_CHUNK:
            raise InvalidFrame("undecodable", f"a PNG chunk of {length} bytes")
        if kind == b"IDAT":
            if self._idat == 2:
                raise InvalidFrame("undecodable", "the PNG's IDAT chunks are not consecutive")
            if self._palette_type and not self._palette:
                raise InvalidFrame("undecodable", "a palette PNG without a PLTE chunk")
            self._idat = 1
        elif self._idat == 1:
            self._idat = 2
        if kind == b"PLTE" and (self._palette or not 0 < length <= 768 or length % 3):
            raise InvalidFrame("undecodable", f"a PNG palette of {length} bytes, or a second one")
        self._kind = kind
        self._crc = zlib.crc32(kind)
        self._left = length
        self._want = 4 if kind == b"IEND" else 12

    def _inflate_data(self, data: memoryview) -> None:
        """Inflate image data into whole rows and judge them, a few at a time, until they
        are judged (then drop the inflater) or the data is used up."""
        inflate = self._inflate
        for start in range(0, len(data), PNG_INFLATE_INPUT):
            pending: bytes | memoryview = data[start : start + PNG_INFLATE_INPUT]
            while True:
                room = self._step - len(self._partial)
                try:
                    out = inflate.decompress(pending, room)
                except zlib.error as exc:
                    raise InvalidFrame(
                        "undecodable", f"the PNG's image data does not inflate: {exc}"
                    ) from exc
                if (out and not self._judge(out)) or inflate.eof:
                    self._inflate = None
                    self._partial = bytearray()
                    self._expected, self._made = [], {}
                    return
                pending = inflate.unconsumed_tail
                # Output that filled the room may have more behind it, with no input left.
                if not pending and len(out) < room:
                    break

    def _judge(self, out: bytes) -> bool:
        """Judge the rows `out` completes (the part of one from the last call first), and
        keep the part of one it ends with. False once the frame is judged: a row that is
        not flat, or the last row."""
        size = self.row_size
        partial = self._partial
        start = 0
        if partial:
            start = size - len(partial)
            partial += out[:start]
            if len(partial) < size:
                return True
            if not self._row(partial, 0):
                return False
            partial.clear()
        end = len(out) - (len(out) - start) % size
        for at in range(start, end, size):
            if not self._row(out, at):
                return False
        partial += out[end:]
        return True

    def _row(self, rows: bytes | bytearray, at: int) -> bool:
        """Whether the row at `at` (its filter type byte) is flat, and not the last one."""
        kind = rows[at]
        if kind > 4:
            raise InvalidFrame("undecodable", f"row {self._rows} of the PNG has filter type {kind}")
        if not self._rows:
            # The first row's first pixel is stored as it is, whatever its filter: the
            # filters' left, up and up-left neighbours are all zero there.
            first = bytes(rows[at + 1 : at + 1 + self._unit_size])
            if self._depth < 8:  # the first pixel repeated across the byte
                first = bytes([(first[0] >> (8 - self._depth)) * (255 // ((1 << self._depth) - 1))])
            self._unit = first
        index = kind + 5 * (self._rows > 0)
        expected = self._expected[index]
        if expected is None:
            expected = self._expected[index] = self._flat_row(kind, self._rows > 0)
        if not rows.startswith(expected, at + 1):
            self._flat = False
            return False
        self._rows += 1
        return self._rows < self._height

    def _flat_row(self, kind: int, below_first: bool) -> bytes:
        """A row of the first pixel as filter type `kind` stores it, below a row of it or
        (the first row) of zeros: the first pixel, the one after it repeated, and the
        partly used last byte of a row of pixels under a byte. Filter types that store a
        row alike (None and Up on the first row, Up and Paeth below it, ...) share it."""
        unit = self._unit
        zeros = bytes(len(unit))
        above = unit if below_first else zeros
        first = rest = last = b""
        if self._full_units:
            first = _png_filtered(kind, unit, zeros, above, zeros)
            rest = _png_filtered(kind, unit, unit, above, above)
        if self._last_mask:
            end = bytes([unit[0] & self._last_mask])
            left = unit if self._full_units else zeros
            last = _png_filtered(
                kind, end, left, end if below_first else zeros, left if below_first else zeros
            )
        row = self._made.get((first, rest, last))
        if row is None:
            row = first + rest * max(0, self._full_units - 1) + last
            self._made[first, rest, last] = row
        return row


class FrameCheck:
    """One frame checked as it streams past: `feed` each chunk in order, then `finish`.

    When enforcing, `feed` raises InvalidFrame as soon as the bytes seen prove the frame bad
    (magic, format, header size) and `finish` for what only the whole frame shows (empty,
    truncated, flat, undecodable). When not, nothing raises: the report carries the first
    problem found.
    """

    def __init__(self, expect: Expectation, *, enforce: bool = True) -> None:
        self._expect = expect
        self._enforce = enforce
        wanted = (expect.file_format or "").upper()
        self._expected_format = _BLENDER_FORMATS.get(wanted)
        self._no_magic = wanted in _NO_MAGIC
        self._hash = hashlib.sha256()
        self._size = 0
        self._head = bytearray()
        self._tail = b""
        self._format: str | None = None
        self._sniffed = False
        self._jpeg: _JpegHeader | None = None
        self._exr: _ExrHeader | None = None
        self._width: int | None = None
        self._height: int | None = None
        # The frame's chunks, kept for Pillow until the format says it is not needed.
        self._kept: list[bytes] | None = [] if expect.content_max_bytes else None
        self._png: _PngPixels | None = None
        self._content_skipped: str | None = None if expect.content_max_bytes else "disabled"
        self._problem: InvalidFrame | None = None
        self._report: FrameReport | None = None

    @property
    def header_known(self) -> bool:
        """Whether the bytes fed so far settle the header: the format, and the size where
        the header gives one (or a problem was found). A copy reads this far before it
        opens the upload."""
        if self._problem is not None:
            return True
        if not self._sniffed:
            return False
        if self._jpeg is not None:
            return self._jpeg.size is not None
        if self._exr is not None:
            return self._exr.done
        return True

    def declare_size(self, size: int) -> None:
        """The frame's whole size, when it is known before its bytes (a declared length):
        a frame above content_max_bytes is then not kept at all."""
        if size > self._expect.content_max_bytes:
            self._skip_content("too-many-bytes")

    def feed(self, chunk: bytes) -> None:
        """The next bytes of the frame (any bytes-like object: a view of a buffer the
        caller reuses is copied where it is kept)."""
        if self._report is not None:
            raise RuntimeError("the check is finished")
        if self._problem is not None and self._enforce:
            raise self._problem
        if not chunk:
            return
        self._hash.update(chunk)
        self._size += len(chunk)
        if len(chunk) >= TAIL_BYTES:
            self._tail = bytes(chunk[-TAIL_BYTES:])
        else:
            self._tail = (self._tail + chunk)[-TAIL_BYTES:]
        if self._size > self._expect.content_max_bytes:
            self._skip_content("too-many-bytes")
        if self._problem is None:
            try:
                self._inspect(chunk)
            except InvalidFrame as problem:
                self._found(problem)
        # Kept after the inspection: the chunk that shows a PNG is not kept.
        if self._kept is not None:
            # The chunk itself, not a copy; a caller's reused buffer is copied.
            self._kept.append(chunk if isinstance(chunk, bytes) else bytes(chunk))

    def finish(self) -> FrameReport:
        """The report on the whole frame; a second call gives the same one."""
        if self._report is not None:
            if self._report.problem is not None and self._enforce:
                raise self._report.problem
            return self._report
        if self._problem is None:
            try:
                self._conclude()
            except InvalidFrame as problem:
                self._problem = problem
        colour = None
        if self._problem is None:
            try:
                colour = self._flat_colour()
            except InvalidFrame as problem:
                self._problem = problem
            if colour is not None:
                self._problem = InvalidFrame("flat-colour", f"every pixel is {colour}")
        else:
            self._skip_content("invalid")
        self._kept = None
        self._png = None
        self._report = FrameReport(
            size=self._size,
            sha256=self._hash.hexdigest(),
            problem=self._problem,
            width=self._width,
            height=self._height,
            detected_format=self._format,
            colour=colour,
            content_skipped=self._content_skipped,
        )
        if self._problem is not None and self._enforce:
            raise self._problem
        return self._report

    # ---------------------------------------------------------------- stream

    def _found(self, problem: InvalidFrame) -> None:
        self._problem = problem
        self._skip_content("invalid")
        if self._enforce:
            raise problem

    def _skip_content(self, reason: str) -> None:
        """Keep no more of the frame (and free what was kept): its content is not checked."""
        if self._content_skipped is None:
            self._kept = None
            self._png = None
            self._content_skipped = reason

    def _inspect(self, chunk: bytes) -> None:
        if not self._sniffed:
            seen = len(self._head)
            self._head += chunk[: HEAD_BYTES - seen]
            if len(self._head) < HEAD_BYTES:
                return
            self._sniff()
            # The header parsers read from the frame's first byte: what came before this
            # chunk is in the head.
            self._parse(bytes(self._head[:seen]))
        self._parse(chunk)

    def _sniff(self) -> None:
        self._sniffed = True
        head = bytes(self._head)
        detected = _sniff(head)
        if detected is None:
            if self._no_magic:
                self._skip_content("format")
                return
            raise InvalidFrame("not-an-image", f"starts with {head[:8].hex()}, no image format's")
        if self._no_magic or (self._expected_format and detected != self._expected_format):
            raise InvalidFrame(
                "wrong-format", f"a {detected} file, the .blend asks for {self._expect.file_format}"
            )
        self._format = detected
        if detected not in ("PNG", "JPEG"):
            self._skip_content("format")
        if detected == "PNG":
            self._png_header(head)
        elif detected == "JPEG":
            self._jpeg = _JpegHeader()
        elif detected == "OPEN_EXR":
            self._exr = _ExrHeader()

    def _png_header(self, head: bytes) -> None:
        if len(head) < 24:
            raise InvalidFrame("truncated", f"{len(head)} bytes end inside the PNG header")
        if head[8:16] != b"\x00\x00\x00\x0dIHDR":
            raise InvalidFrame("undecodable", "the PNG does not start with its IHDR chunk")
        width, height = struct.unpack_from(">II", head, 16)
        if not width or not height:
            raise InvalidFrame("undecodable", "the PNG header gives a zero size")
        self._sized(width, height)
        # Judged on the stream unless interlaced (Adam7, which Blender does not write: its
        # passes are no rows of the image) or of rows too wide: then it is kept and left to
        # Pillow. A head short of the interlace byte is a file too short to end with IEND.
        if self._content_skipped is None and len(head) >= 29 and head[28] == 0:
            pixels = _PngPixels(head[16:29])
            if pixels.row_size <= PNG_MAX_ROW_BYTES:
                self._png = pixels
                self._kept = None

    def _parse(self, data: bytes) -> None:
        if self._jpeg is not None and self._jpeg.size is None:
            self._jpeg.feed(data)
            if self._jpeg.size is not None:
                self._sized(*self._jpeg.size)
        elif self._exr is not None and not self._exr.done:
            self._exr.feed(data)
            if self._exr.size is not None:
                self._sized(*self._exr.size)
        elif self._png is not None:
            self._png.feed(data)

    def _sized(self, width: int, height: int) -> None:
        self._width, self._height = width, height
        # Pillow warns, or refuses, past MAX_IMAGE_PIXELS as it opens the file; staying below
        # it keeps the process-wide warning filters out of this (copies run in threads).
        bound = min(CONTENT_MAX_PIXELS, Image.MAX_IMAGE_PIXELS or CONTENT_MAX_PIXELS)
        if width * height > bound:
            self._skip_content("too-many-pixels")
        elif width * height == 1:  # one pixel is one colour: nothing to judge
            self._skip_content("one-pixel")
        expect = self._expect
        if (expect.width is not None and width != expect.width) or (
            expect.height is not None and height != expect.height
        ):
            raise InvalidFrame(
                "wrong-resolution",
                f"{width}x{height} pixels, the .blend asks for "
                f"{expect.width or '?'}x{expect.height or '?'}",
            )

    # ---------------------------------------------------------------- end

    def _conclude(self) -> None:
        if not self._size:
            raise InvalidFrame("empty", "no bytes")
        if not self._sniffed:
            self._sniff()
            self._parse(bytes(self._head))
        if self._jpeg is not None and self._jpeg.size is None:
            raise InvalidFrame("truncated", "the JPEG ends before its frame header")
        if self._exr is not None and self._exr.cut_short:
            raise InvalidFrame("truncated", "the OpenEXR file ends inside its header")
        if self._format == "PNG" and self._tail != PNG_TRAILER:
            raise InvalidFrame("truncated", "the PNG does not end with its IEND chunk")
        if self._format == "JPEG" and not self._tail.endswith(JPEG_TRAILER):
            raise InvalidFrame("truncated", "the JPEG does not end with its EOI marker")

    def _flat_colour(self) -> tuple[int, ...] | None:
        """The frame's colour when every pixel is that colour, else None: the verdict of the
        PNG judged on the stream, or Pillow's on the kept frame (reduced where the format
        allows)."""
        if self._png is not None:
            png, self._png = self._png, None
            return png.colour()
        # Kept only for a JPEG, or an interlaced PNG, whose header gave a size within bounds.
        if self._kept is None or self._width is None or self._height is None:
            return None
        width, height = self._width, self._height
        data = io.BufferedReader(_Joined(self._kept))
        self._kept = None
        try:
            with Image.open(data, formats=[self._format]) as image:
                if image.size != (width, height):
                    raise InvalidFrame(
                        "undecodable", f"decoded as {image.size}, the header says {width}x{height}"
                    )
                if self._format == "JPEG":
                    # libjpeg decodes at 1/8 scale from the DC coefficients alone: a flat
                    # frame stays flat, for a small part of the cost. A tiny frame keeps
                    # two pixels a side where it has them, or it would always look flat.
                    image.draft("RGB", (max(2, width // 8), max(2, height // 8)))
                extrema = image.getextrema()
                palette = image.getpalette() if image.mode == "P" else None
        except InvalidFrame:
            raise
        # Pillow's decoders raise a wide, undocumented set of errors on hostile input
        # (OSError, SyntaxError, ValueError, struct.error, zlib.error, ...).
        except Exception as exc:
            message = _OBJECT_REPR.sub("the frame", str(exc))
            raise InvalidFrame("undecodable", f"{type(exc).__name__}: {message}"[:200]) from exc
        bands = [extrema] if not isinstance(extrema[0], tuple) else list(extrema)
        if any(low != high for low, high in bands):
            return None
        colour = tuple(int(low) for low, _ in bands)
        if palette is not None:
            colour = tuple(palette[colour[0] * 3 : colour[0] * 3 + 3])
        return colour
