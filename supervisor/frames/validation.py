"""Is an uploaded frame the image its .blend asks for? Checked on the stream, chunk by chunk,
while the frame is copied to the final store, so a bad one is refused before it is stored.

`FrameCheck.feed` takes the bytes as they pass and refuses as soon as they prove the frame
bad: a first few bytes that are no image format's (`not-an-image`) or not the expected one's
(`wrong-format`), a header whose size is not the expected one (`wrong-resolution`: PNG's
IHDR, JPEG's SOFn, OpenEXR's dataWindow). `finish` judges the end: nothing at all (`empty`),
a PNG without its IEND chunk or a JPEG without its EOI marker (`truncated`), and, for a frame
of at most `content_max_bytes`, its pixels (`flat-colour`, `undecodable`). It hashes every
byte (SHA-256) on the way.

Memory is constant: the first HEAD_BYTES, the last TAIL_BYTES, a carry-over of a few bytes
for the JPEG marker walk, at most EXR_HEADER_MAX_BYTES of an OpenEXR header, and the frame
itself only while it may still be decoded: a PNG or JPEG of at most CONTENT_MAX_PIXELS, no
larger than `content_max_bytes` (dropped once it grows past it, or not kept at all when a
declared size is above it). Per chunk the work is the hash and slices: no Python loop over
bytes.

A check is used by one thread for one frame; a retried copy takes a new one.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import itertools
import re
import struct
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
    pixels, None when unknown. Frames of at most `content_max_bytes` are decoded and
    inspected; 0 never."""

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
    TGA); `colour` is the colour of a flat frame. `content_skipped` says why the pixels were
    not inspected: "disabled" (content_max_bytes is 0), "too-many-bytes", "too-many-pixels",
    "one-pixel", "format" (only PNG and JPEG are decoded), "invalid" (a problem was found
    first); None when they were.
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
        self._kept: list[bytes] | None = [] if expect.content_max_bytes else None
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
        if self._kept is not None:
            if self._size <= self._expect.content_max_bytes:
                # The chunk itself, not a copy; a caller's reused buffer is copied.
                self._kept.append(chunk if isinstance(chunk, bytes) else bytes(chunk))
            else:
                self._skip_content("too-many-bytes")
        if self._problem is None:
            try:
                self._inspect(chunk)
            except InvalidFrame as problem:
                self._found(problem)

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
        if self._kept is not None:
            self._kept = None
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

    def _parse(self, data: bytes) -> None:
        if self._jpeg is not None and self._jpeg.size is None:
            self._jpeg.feed(data)
            if self._jpeg.size is not None:
                self._sized(*self._jpeg.size)
        elif self._exr is not None and not self._exr.done:
            self._exr.feed(data)
            if self._exr.size is not None:
                self._sized(*self._exr.size)

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
        """Decode the kept frame (reduced where the format allows): its colour when every
        band holds one value, else None."""
        # Kept only for a PNG or JPEG whose header gave a size within the bounds.
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
