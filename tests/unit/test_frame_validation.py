"""Frame validation on the stream: valid frames in any chunking, each reason for refusing
one, reports without refusing, the hash, the content check's bounds, and a PNG's pixels
judged on the stream: every filter type against PNGs of our own (checked with Pillow), how
little of a frame that is not flat is inflated, and the memory a flat one takes."""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import pickle
import random
import struct
import tracemalloc
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pytest
from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile

from supervisor.frames import validation
from supervisor.frames.validation import (
    PNG_TRAILER,
    Expectation,
    FrameCheck,
    FrameReport,
    InvalidFrame,
)

MIB = 1024 * 1024
ROOMY = 64 * MIB
SIZES = [(1, 1), (17, 9), (64, 48), (640, 360)]


def noise(width: int, height: int, mode: str = "RGB", seed: int = 1) -> Image.Image:
    pixel = len(Image.new(mode, (8, 1)).tobytes()) / 8
    pixels = random.Random(seed).randbytes(int(width * height * pixel + 0.99))
    return Image.frombytes(mode, (width, height), pixels)


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def png(width: int, height: int, mode: str = "RGB") -> bytes:
    return encoded(noise(width, height, mode), "PNG")


def jpeg(width: int, height: int, **options: object) -> bytes:
    return encoded(noise(width, height), "JPEG", quality=90, **options)


def flat(fmt: str, mode: str, colour: object, size: tuple[int, int] = (96, 64)) -> bytes:
    return encoded(Image.new(mode, size, colour), fmt)  # type: ignore[arg-type]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def stored_png(width: int, height: int, row: bytes) -> Iterator[bytes]:
    """A valid RGB PNG, streamed: every row `row`, deflated at level 0 (fast, any size)."""
    assert len(row) == width * 3
    yield b"\x89PNG\r\n\x1a\n" + png_chunk(
        b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    )
    deflate = zlib.compressobj(0)
    rows = max(1, MIB // (len(row) + 1))
    for start in range(0, height, rows):
        data = deflate.compress((b"\x00" + row) * min(rows, height - start))
        if data:
            yield png_chunk(b"IDAT", data)
    yield png_chunk(b"IDAT", deflate.flush()) + png_chunk(b"IEND", b"")


def predictor(kind: int, left: int, up: int, upleft: int) -> int:
    """What PNG filter type `kind` predicts a byte from (the PNG specification, 9.2-9.4)."""
    if kind == 0:
        return 0
    if kind == 1:
        return left
    if kind == 2:
        return up
    if kind == 3:
        return (left + up) // 2
    estimate = left + up - upleft
    to_left, to_up, to_upleft = abs(estimate - left), abs(estimate - up), abs(estimate - upleft)
    if to_left <= to_up and to_left <= to_upleft:
        return left
    return up if to_up <= to_upleft else upleft


def filtered(rows: Sequence[bytes], bpp: int, kinds: Sequence[int]) -> bytes:
    """Scanlines as a PNG stores them: each one filtered by its own filter type, after it."""
    out = bytearray()
    prior = bytes(len(rows[0]))
    for row, kind in zip(rows, kinds, strict=True):
        out.append(kind)
        for i, byte in enumerate(row):
            left = row[i - bpp] if i >= bpp else 0
            upleft = prior[i - bpp] if i >= bpp else 0
            out.append((byte - predictor(kind, left, prior[i], upleft)) & 0xFF)
        prior = row
    return bytes(out)


def scanline(pixels: Sequence[Sequence[int]], depth: int) -> bytes:
    """Pixels (tuples of samples) packed as a PNG row: big-endian samples, or several pixels
    a byte below 8 bits, the last byte padded with zero bits."""
    if depth >= 8:
        return b"".join(sample.to_bytes(depth // 8, "big") for pixel in pixels for sample in pixel)
    bits = "".join(format(pixel[0], f"0{depth}b") for pixel in pixels)
    bits += "0" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big")


ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)
SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def made_png(
    grid: Sequence[Sequence[Sequence[int]]],
    colour_type: int,
    depth: int,
    kinds: Sequence[int] | None = None,
    *,
    palette: bytes | None = None,
    interlaced: bool = False,
    idat_size: int | None = None,
) -> bytes:
    """A PNG of our own of `grid` (rows of pixels), each row filtered by the filter type
    `kinds` gives it (None by default), or Adam7-interlaced (every row of every pass
    unfiltered), its image data in IDAT chunks of `idat_size` bytes (one by default)."""
    height, width = len(grid), len(grid[0])
    bpp = max(1, SAMPLES[colour_type] * depth // 8)
    if interlaced:
        data = b""
        for x0, y0, dx, dy in ADAM7:
            xs, ys = range(x0, width, dx), range(y0, height, dy)
            if xs and ys:
                rows = [scanline([grid[y][x] for x in xs], depth) for y in ys]
                data += filtered(rows, bpp, [0] * len(rows))
    else:
        rows = [scanline(row, depth) for row in grid]
        data = filtered(rows, bpp, kinds or [0] * height)
    deflated = zlib.compress(data)
    step = idat_size or len(deflated)
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, int(interlaced))
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + (png_chunk(b"PLTE", palette) if palette is not None else b"")
        + b"".join(
            png_chunk(b"IDAT", deflated[at : at + step]) for at in range(0, len(deflated), step)
        )
        + png_chunk(b"IEND", b"")
    )


def pillow_sees_flat(data: bytes) -> bool:
    with Image.open(io.BytesIO(data)) as image:
        extrema = image.getextrema()
    bands = extrema if isinstance(extrema[0], tuple) else (extrema,)
    return all(low == high for low, high in bands)


class Inflaters:
    """zlib.decompressobj, counting what each inflater made is given and gives back."""

    def __init__(self) -> None:
        self.made: list[dict[str, int]] = []
        self._real = zlib.decompressobj

    def __call__(self, *args: Any) -> Any:
        real = self._real(*args)
        counts = {"given": 0, "gave": 0, "largest": 0}
        self.made.append(counts)

        class Counted:
            def decompress(self, data: Any, max_length: int = 0) -> bytes:
                out = real.decompress(data, max_length)
                counts["given"] += len(data) - len(real.unconsumed_tail)
                counts["gave"] += len(out)
                counts["largest"] = max(counts["largest"], len(out))
                return out

            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

        return Counted()


def exr_header(data_window: tuple[int, int, int, int], padding: int = 0) -> bytes:
    """The magic, the version and a header with a dataWindow (after `padding` bytes of an
    attribute of our own), then one fake offset table entry."""

    def attribute(name: bytes, kind: bytes, value: bytes) -> bytes:
        return name + b"\0" + kind + b"\0" + struct.pack("<i", len(value)) + value

    return (
        b"v/1\x01"
        + struct.pack("<I", 2)
        + attribute(b"comment", b"string", b"x" * padding)
        + attribute(b"compression", b"compression", b"\x00")
        + attribute(b"dataWindow", b"box2i", struct.pack("<4i", *data_window))
        + attribute(b"displayWindow", b"box2i", struct.pack("<4i", *data_window))
        + b"\0"
        + struct.pack("<Q", 0)
    )


def pieces(data: bytes, seed: int = 7, low: int = 1, high: int = 7) -> Iterator[bytes]:
    """`data` in chunks of `low` to `high` bytes."""
    rng = random.Random(seed)
    at = 0
    while at < len(data):
        step = rng.randint(low, high)
        yield data[at : at + step]
        at += step


def check(
    chunks: Iterable[bytes],
    file_format: str | None = "PNG",
    width: int | None = None,
    height: int | None = None,
    *,
    content_max_bytes: int = ROOMY,
    enforce: bool = True,
) -> FrameReport:
    frame = FrameCheck(Expectation(file_format, width, height, content_max_bytes), enforce=enforce)
    for chunk in chunks:
        frame.feed(chunk)
    return frame.finish()


def refused(
    data: bytes, file_format: str | None, width: int | None = None, height: int | None = None
) -> InvalidFrame:
    """The refusal of `data`, checked that an unenforced check reports the same."""
    with pytest.raises(InvalidFrame) as info:
        check([data], file_format, width, height)
    report = check([data], file_format, width, height, enforce=False)
    assert report.problem is not None
    assert (report.problem.reason, report.problem.detail) == (info.value.reason, info.value.detail)
    assert report.sha256 == hashlib.sha256(data).hexdigest()
    assert report.size == len(data)
    return info.value


# ---------------------------------------------------------------- valid frames


@pytest.mark.parametrize(("width", "height"), SIZES)
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("chunking", ["whole", "tiny"])
def test_a_valid_frame_passes_in_any_chunking(
    fmt: str, width: int, height: int, chunking: str
) -> None:
    data = png(width, height) if fmt == "PNG" else jpeg(width, height)
    chunks = [data] if chunking == "whole" else pieces(data)

    report = check(chunks, fmt, width, height)

    assert report == FrameReport(
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        problem=None,
        width=width,
        height=height,
        detected_format=fmt,
        colour=None,
        content_skipped="one-pixel" if width * height == 1 else None,
    )


def test_a_tiny_jpeg_is_decoded_large_enough_to_tell_flat_from_not() -> None:
    assert check([jpeg(8, 8)], "JPEG", 8, 8).problem is None
    assert check([jpeg(16, 3)], "JPEG", 16, 3).problem is None
    assert refused(flat("JPEG", "RGB", (9, 9, 9), (8, 8)), "JPEG").reason == "flat-colour"


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "I;16", "1"])
def test_png_modes_pass(mode: str) -> None:
    data = png(40, 30, mode)
    assert check(pieces(data, high=4096), "PNG", 40, 30).problem is None


def test_a_jpeg_with_large_metadata_segments_is_walked_across_tiny_chunks() -> None:
    """An ICC profile of 200 KB (four APP2 segments) and EXIF before the frame header."""
    icc = random.Random(3).randbytes(200_000)
    exif = Image.Exif()
    exif[0x010E] = "a frame" * 1000
    data = jpeg(320, 200, icc_profile=icc, exif=exif, progressive=True)
    for chunks in ([data], pieces(data, seed=11), pieces(data, low=1, high=2)):
        report = check(chunks, "JPEG", 320, 200)
        assert (report.problem, report.width, report.height) == (None, 320, 200)


def test_an_unknown_or_absent_expectation_checks_only_that_it_is_an_image() -> None:
    data = jpeg(33, 21)
    for fmt in (None, "FFMPEG", "jpeg"):
        report = check([data], fmt)
        assert (report.problem, report.detected_format) == (None, "JPEG")
        assert (report.width, report.height) == (33, 21)


@pytest.mark.parametrize(
    ("fmt", "blender"),
    [
        ("TIFF", "TIFF"),
        ("BMP", "BMP"),
        ("WEBP", "WEBP"),
        ("SGI", "IRIS"),
        ("JPEG2000", "JPEG2000"),
    ],
)
def test_other_formats_are_detected_by_their_magic(fmt: str, blender: str) -> None:
    Image.init()
    if fmt not in Image.SAVE:
        pytest.skip(f"this Pillow cannot write {fmt}")
    data = encoded(noise(16, 8), fmt)
    report = check(pieces(data, high=64), blender, 16, 8)
    assert (report.problem, report.detected_format, report.content_skipped) == (
        None,
        blender,
        "format",
    )
    assert check([data], "OPEN_EXR", enforce=False).problem.reason == "wrong-format"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("head", "blender"),
    [
        (b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 1 +X 1\n", "HDR"),
        (b"SDPX" + bytes(60), "DPX"),
        (b"\x80\x2a\x5f\xd7" + bytes(60), "CINEON"),
        (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + bytes(60), "JPEG2000"),
    ],
)
def test_formats_pillow_does_not_write_are_detected_too(head: bytes, blender: str) -> None:
    assert check([head], blender).detected_format == blender


def test_targa_has_no_magic_so_any_bytes_pass_but_another_format_does_not() -> None:
    tga = encoded(noise(16, 8), "TGA")
    for fmt in ("TARGA", "TARGA_RAW"):
        report = check([tga], fmt)
        assert (report.problem, report.detected_format, report.width) == (None, None, None)
    assert refused(png(16, 8), "TARGA").reason == "wrong-format"


def test_an_exr_size_comes_from_its_data_window() -> None:
    data = exr_header((0, 0, 1919, 1079)) + bytes(100)
    report = check(pieces(data), "OPEN_EXR_MULTILAYER", 1920, 1080)
    assert (report.problem, report.detected_format) == (None, "OPEN_EXR")
    assert (report.width, report.height, report.content_skipped) == (1920, 1080, "format")
    assert refused(data, "OPEN_EXR", 1280, 720).reason == "wrong-resolution"


def test_an_exr_header_too_large_to_read_leaves_its_size_unchecked() -> None:
    data = exr_header((0, 0, 99, 99), padding=validation.EXR_HEADER_MAX_BYTES) + bytes(10)
    report = check([data], "OPEN_EXR", 1920, 1080)
    assert (report.problem, report.width, report.height) == (None, None, None)


def test_sha256_is_hashlib_s_for_any_chunking() -> None:
    data = b"".join(stored_png(300, 200, os.urandom(900)))
    expected = hashlib.sha256(data).hexdigest()
    for chunks in ([data], pieces(data), pieces(data, low=1000, high=70_000)):
        assert check(chunks, "PNG", 300, 200).sha256 == expected


# ---------------------------------------------------------------- refusals


def test_nothing_at_all_is_empty() -> None:
    assert refused(b"", "PNG").reason == "empty"
    assert refused(b"", None).reason == "empty"


@pytest.mark.parametrize(
    "data",
    [b"<html>not found</html>" + b" " * 40, os.urandom(64), b"\x89PNX" + bytes(60), b"BA"],
)
def test_bytes_of_no_image_format_are_not_an_image(data: bytes) -> None:
    assert refused(data, "PNG").reason == "not-an-image"
    assert refused(data, None).reason == "not-an-image"


def test_not_an_image_is_refused_by_its_first_bytes() -> None:
    frame = FrameCheck(Expectation("PNG", None, None, ROOMY))
    frame.feed(b'{"message": "no such key", ')
    with pytest.raises(InvalidFrame) as info:
        frame.feed(b'"status": 404}')
    assert info.value.reason == "not-an-image"
    with pytest.raises(InvalidFrame):
        frame.feed(b"more")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (jpeg(8, 8), "PNG"),
        (png(8, 8), "JPEG"),
        (png(8, 8), "OPEN_EXR"),
        (exr_header((0, 0, 7, 7)), "PNG"),
    ],
)
def test_another_format_than_the_blend_s_is_wrong(data: bytes, expected: str) -> None:
    problem = refused(data, expected)
    assert problem.reason == "wrong-format"
    assert expected in problem.detail


@pytest.mark.parametrize(
    ("fmt", "width", "height"),
    [("PNG", 1920, 1080), ("PNG", 64, None), ("PNG", None, 47), ("JPEG", 64, 1080)],
)
def test_another_size_than_the_blend_s_is_wrong(
    fmt: str, width: int | None, height: int | None
) -> None:
    data = png(65, 48) if fmt == "PNG" else jpeg(65, 48)
    problem = refused(data, fmt, width, height)
    assert problem.reason == "wrong-resolution"
    assert "65x48" in problem.detail


def test_a_wrong_size_is_refused_from_the_header_before_the_end() -> None:
    for data, header_end in ((png(65, 48), validation.HEAD_BYTES), (jpeg(65, 48), None)):
        if header_end is None:  # a JPEG's SOFn: its size ends 9 bytes after the marker
            header_end = data.index(b"\xff\xc0") + 9
        frame = FrameCheck(Expectation(None, 64, 48, ROOMY))
        frame.feed(data[: header_end - 1])
        assert not frame.header_known
        with pytest.raises(InvalidFrame) as info:
            frame.feed(data[header_end - 1 : header_end])
        assert info.value.reason == "wrong-resolution"


@pytest.mark.parametrize(
    ("fmt", "cut"),
    [
        ("PNG", lambda d: d[:-1]),
        ("PNG", lambda d: d[: -len(PNG_TRAILER)]),
        ("PNG", lambda d: d[: len(d) // 2]),
        ("PNG", lambda d: d[:20]),
        ("JPEG", lambda d: d[:-1]),
        ("JPEG", lambda d: d[:-2]),
        ("JPEG", lambda d: d[: len(d) // 2]),
        ("JPEG", lambda d: d[:10]),
        ("JPEG", lambda d: d + b"\x00"),
    ],
    ids=[
        "png-last-byte",
        "png-no-iend",
        "png-half",
        "png-in-header",
        "jpeg-last-byte",
        "jpeg-no-eoi",
        "jpeg-half",
        "jpeg-in-header",
        "jpeg-padded",
    ],
)
def test_a_frame_cut_short_is_truncated(fmt: str, cut: object) -> None:
    whole = png(64, 48) if fmt == "PNG" else jpeg(64, 48)
    data = cut(whole)  # type: ignore[operator]
    assert refused(data, fmt, 64, 48).reason == "truncated"


def test_an_exr_cut_inside_its_header_is_truncated() -> None:
    data = exr_header((0, 0, 9, 9))
    assert refused(data[:40], "OPEN_EXR").reason == "truncated"


@pytest.mark.parametrize(
    ("data", "colour"),
    [
        (flat("PNG", "RGB", (0, 0, 0)), (0, 0, 0)),
        (flat("PNG", "RGBA", (0, 0, 0, 0)), (0, 0, 0, 0)),
        (flat("PNG", "L", 128), (128,)),
        (flat("PNG", "P", 3), None),
        (flat("JPEG", "RGB", (250, 250, 250), (1920, 1080)), None),
        (flat("JPEG", "L", 17), (17,)),
    ],
    ids=["png-black", "png-transparent", "png-grey", "png-palette", "jpeg-white", "jpeg-grey"],
)
def test_a_frame_of_one_colour_is_flat(data: bytes, colour: tuple[int, ...] | None) -> None:
    fmt = "PNG" if data.startswith(b"\x89PNG") else "JPEG"
    problem = refused(data, fmt)
    assert problem.reason == "flat-colour"
    report = check(pieces(data, high=512), fmt, enforce=False)
    assert report.colour is not None
    if colour is not None:
        assert report.colour == colour
    assert str(report.colour) in problem.detail


def test_a_palette_frame_reports_its_colour_not_its_index() -> None:
    image = Image.new("P", (10, 10), 1)
    image.putpalette([0, 0, 0, 12, 34, 56] + [0] * 762)
    report = check([encoded(image, "PNG")], "PNG", enforce=False)
    assert report.colour == (12, 34, 56)


def test_one_pixel_off_is_not_flat() -> None:
    image = Image.new("RGB", (64, 48), (9, 9, 9))
    image.putpixel((63, 47), (9, 9, 10))
    assert check([encoded(image, "PNG")], "PNG").problem is None
    image = Image.new("RGB", (64, 48), (9, 9, 9))
    image.paste((200, 0, 0), (56, 40, 64, 48))
    assert check([encoded(image, "JPEG", quality=90)], "JPEG").problem is None


def test_a_jpeg_is_decoded_at_an_eighth_of_its_size(monkeypatch: pytest.MonkeyPatch) -> None:
    drafts: list[tuple[object, ...]] = []
    draft = JpegImageFile.draft

    def spy(self: JpegImageFile, mode: str | None, size: tuple[int, int] | None) -> object:
        drafts.append((mode, size))
        result = draft(self, mode, size)
        drafts.append(self.size)
        return result

    monkeypatch.setattr(JpegImageFile, "draft", spy)
    assert check([flat("JPEG", "RGB", (1, 2, 3), (1920, 1080))], "JPEG", enforce=False).colour
    assert drafts == [("RGB", (240, 135)), (240, 135)]


def test_a_png_that_does_not_decode_is_undecodable() -> None:
    data = bytearray(png(64, 48))
    idat = data.index(b"IDAT")
    data[idat + 40 : idat + 80] = bytes(40)
    problem = refused(bytes(data), "PNG", 64, 48)
    assert problem.reason == "undecodable"
    assert check([bytes(data)], "PNG", 64, 48, content_max_bytes=0).problem is None


def test_a_jpeg_with_a_bogus_huffman_table_is_undecodable() -> None:
    data = bytearray(jpeg(64, 48))
    table = data.index(b"\xff\xc4")
    data[table + 5 : table + 21] = b"\xff" * 16  # code counts far past 256 codes
    problem = refused(bytes(data), "JPEG", 64, 48)
    assert problem.reason == "undecodable"
    assert " at 0x" not in problem.detail


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"tEXt", b"k\0v" * 10) + PNG_TRAILER,
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", bytes(13)) + PNG_TRAILER,
        b"\xff\xd8\xff\xe0\x00\x01" + bytes(40),
        b"\xff\xd8\xff\xda\x00\x08" + bytes(40),
        b"\xff\xd8\xff\xe0\x00\x04\x00\x00\x12" + bytes(40),
    ],
    ids=["png-no-ihdr", "png-zero-size", "jpeg-short-length", "jpeg-scan-first", "jpeg-no-marker"],
)
def test_a_broken_header_is_undecodable(data: bytes) -> None:
    assert refused(data, None).reason == "undecodable"


def test_a_jpeg_walk_is_bounded() -> None:
    comments = b"\xff\xfe\x00\x02" * (validation.JPEG_MAX_STEPS + 1)
    data = b"\xff\xd8" + comments + jpeg(8, 8)[2:]
    assert refused(data, "JPEG").reason == "undecodable"


# ---------------------------------------------------------------- a PNG's pixels on the stream

# Colour types and depths, with a pixel of odd and high bytes (the Average filter halves,
# the Sub filter wraps around) and black (Paeth's ties).
PNG_KINDS = {
    "grey1": (0, 1, (1,)),
    "grey2": (0, 2, (2,)),
    "grey4": (0, 4, (11,)),
    "grey8": (0, 8, (201,)),
    "grey16": (0, 16, (51_234,)),
    "grey-alpha8": (4, 8, (77, 255)),
    "grey-alpha16": (4, 16, (65_535, 3)),
    "rgb8": (2, 8, (255, 131, 7)),
    "rgb8-black": (2, 8, (0, 0, 0)),
    "rgb16": (2, 16, (40_000, 1, 65_535)),
    "rgba8": (6, 8, (0, 129, 254, 3)),
    "rgba16": (6, 16, (12_345, 54_321, 255, 256)),
    "palette1": (3, 1, (1,)),
    "palette2": (3, 2, (2,)),
    "palette4": (3, 4, (9,)),
    "palette8": (3, 8, (200,)),
}
# Every entry distinct, so another index is another colour.
PALETTE = bytes(channel for i in range(256) for channel in (i, 255 - i, i * 7 % 256))
# Rows of several bytes and a partly used last one (13 pixels), a row within one byte
# below 8 bits (3 pixels), one row, one column.
PNG_SIZES = [(13, 3), (3, 3), (13, 1), (1, 4)]


def off_by_one(pixel: tuple[int, ...]) -> tuple[int, ...]:
    """The pixel with its last sample's lowest bit flipped: the last bit of its last byte."""
    return (*pixel[:-1], pixel[-1] ^ 1)


@pytest.mark.parametrize("kinds", [(first, later) for first in range(5) for later in range(5)])
@pytest.mark.parametrize("name", list(PNG_KINDS))
def test_every_filter_type_on_the_first_and_later_rows(name: str, kinds: tuple[int, int]) -> None:
    """A flat PNG whose first row is filtered by one filter type and the others by another
    is flat, in its own colour; one pixel off at the end of the first row, or at the very
    end, is not: the whole of each row is compared. Pillow reads our PNGs the same way."""
    colour_type, depth, pixel = PNG_KINDS[name]
    palette = PALETTE[: 3 * 2**depth] if colour_type == 3 else None
    colour = tuple(PALETTE[3 * pixel[0] : 3 * pixel[0] + 3]) if palette else pixel
    # Pillow keeps only 8 bits of a 16-bit sample, except grey's.
    pillow_sees_all = depth <= 8 or colour_type == 0
    for width, height in PNG_SIZES:
        row_kinds = [kinds[0]] + [kinds[1]] * (height - 1)
        grid = [[pixel] * width for _ in range(height)]
        data = made_png(grid, colour_type, depth, row_kinds, palette=palette)
        assert pillow_sees_flat(data)
        where = f"{name} {width}x{height} filters {kinds}"
        for chunks in ([data], pieces(data)):
            report = check(chunks, "PNG", width, height, enforce=False)
            assert report.problem is not None, f"{where}: not flat"
            assert report.problem.reason == "flat-colour", f"{where}: {report.problem}"
            assert report.colour == colour, where
        for y in sorted({0, height - 1}):
            grid[y][-1] = off_by_one(pixel)
            data = made_png(grid, colour_type, depth, row_kinds, palette=palette)
            grid[y][-1] = pixel
            if pillow_sees_all:
                assert not pillow_sees_flat(data)
            for chunks in ([data], pieces(data)):
                report = check(chunks, "PNG", width, height, enforce=False)
                assert report.problem is None, f"{where}, row {y} off: {report.problem}"
                assert report.content_skipped is None


@pytest.mark.parametrize(
    ("mode", "colour", "off"),
    [
        ("RGB", (250, 3, 129), (250, 3, 128)),
        ("RGBA", (1, 2, 3, 255), (1, 2, 3, 254)),
        ("L", 77, 78),
        ("LA", (200, 9), (200, 8)),
        ("I;16", 40_000, 40_001),
        ("1", 1, 0),
    ],
)
def test_pillow_s_pngs_are_judged_whatever_filters_it_chose(
    mode: str, colour: object, off: object
) -> None:
    """Pillow picks each row's filter type by itself."""
    for size in ((97, 61), (640, 360)):
        image = Image.new(mode, size, colour)  # type: ignore[arg-type]
        report = check(pieces(encoded(image, "PNG"), high=999), "PNG", *size, enforce=False)
        expected = colour if isinstance(colour, tuple) else (colour,)
        if mode == "1":
            expected = (1,)  # the sample, not Pillow's 255
        assert (report.problem and report.problem.reason, report.colour) == (
            "flat-colour",
            expected,
        )
        image.putpixel((size[0] - 1, size[1] - 1), off)  # type: ignore[arg-type]
        report = check([encoded(image, "PNG")], "PNG", *size)
        assert (report.problem, report.content_skipped) == (None, None)


def test_a_png_is_judged_on_the_stream_without_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("Pillow opened a PNG")

    monkeypatch.setattr(validation.Image, "open", refuse)
    assert refused(flat("PNG", "RGB", (4, 5, 6)), "PNG").reason == "flat-colour"
    assert check([png(64, 48)], "PNG").problem is None


@pytest.mark.parametrize("why", ["interlaced", "wide"])
def test_an_interlaced_png_or_one_of_very_wide_rows_is_left_to_pillow(
    why: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adam7's passes are no rows of the image, and a row too wide to hold is not held:
    the frame is kept and Pillow decodes it."""
    opened: list[object] = []
    real_open = validation.Image.open

    def spy(*args: Any, **kwargs: Any) -> Any:
        opened.append(args)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(validation.Image, "open", spy)
    if why == "wide":
        monkeypatch.setattr(validation, "PNG_MAX_ROW_BYTES", 3 * 13)
    grid = [[(9, 200, 31)] * 13 for _ in range(11)]
    data = made_png(grid, 2, 8, interlaced=why == "interlaced")
    report = check(pieces(data), "PNG", 13, 11, enforce=False)
    assert (report.problem and report.problem.reason, report.colour) == (
        "flat-colour",
        (9, 200, 31),
    )
    grid[-1][-1] = (9, 200, 30)
    report = check([made_png(grid, 2, 8, interlaced=why == "interlaced")], "PNG", 13, 11)
    assert (report.problem, report.content_skipped) == (None, None)
    assert len(opened) == 2


def test_image_data_in_many_small_idat_chunks_is_read_across_them() -> None:
    grid = [[(3, 1, 4, 1)] * 50 for _ in range(40)]
    for idat_size in (1, 7, 100):
        data = made_png(grid, 6, 8, [4] * 40, idat_size=idat_size)
        assert check([data], "PNG", enforce=False).colour == (3, 1, 4, 1)
    grid[-1][-1] = (3, 1, 4, 2)
    assert check([made_png(grid, 6, 8, [4] * 40, idat_size=7)], "PNG").problem is None


def test_a_frame_that_is_not_flat_is_inflated_no_further_than_its_first_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 1080p frame of noise (6 MB, deflated at level 0 so inflating it all would show):
    its first row is not flat, and a few rows are all that is inflated. One flat but for
    its very last pixel is inflated whole, a few rows at a time."""
    inflaters = Inflaters()
    monkeypatch.setattr(zlib, "decompressobj", inflaters)
    width, height = 1920, 1080
    row_size = 1 + 3 * width
    rows_at_once = validation.PNG_INFLATE_OUTPUT // row_size

    noisy = list(stored_png(width, height, random.Random(2).randbytes(3 * width)))
    report = check(noisy, "PNG", width, height)
    assert (report.problem, report.content_skipped) == (None, None)
    assert sum(map(len, noisy)) > height * row_size
    (counts,) = inflaters.made
    assert counts["gave"] <= rows_at_once * row_size
    # Deflated at level 0, the image data is as big as the rows it holds, plus framing.
    assert counts["given"] <= rows_at_once * row_size + 64

    image = Image.new("RGB", (width, height), (40, 50, 60))
    image.putpixel((width - 1, height - 1), (40, 50, 61))
    report = check([encoded(image, "PNG")], "PNG", width, height)
    assert (report.problem, report.content_skipped) == (None, None)
    counts = inflaters.made[-1]
    assert counts["gave"] == height * row_size
    assert counts["largest"] <= rows_at_once * row_size


def test_a_flat_1080p_frame_is_judged_in_constant_memory() -> None:
    """6 MB of a flat frame (deflated at level 0: as big as its pixels) fed in 64 KiB
    pieces: a few rows, zlib's window and the rows it is compared with are all it takes."""
    data = b"".join(stored_png(1920, 1080, bytes((7, 8, 9)) * 1920))
    view = memoryview(data)
    frame = FrameCheck(Expectation("PNG", 1920, 1080, ROOMY), enforce=False)
    tracemalloc.start()
    try:
        for at in range(0, len(data), 64 * 1024):
            frame.feed(view[at : at + 64 * 1024])
        report = frame.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(data) > 6_000_000
    assert report.colour == (7, 8, 9)
    assert peak < 256 * 1024, f"peak {peak / 1024:.0f} KiB"


def png_file(ihdr: tuple[int, ...], *chunks: bytes) -> bytes:
    """A PNG of these IHDR fields (width, height, depth, colour type) and chunks."""
    header = struct.pack(">IIBBBBB", *ihdr, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + b"".join(chunks) + PNG_TRAILER


# Three rows of 8 RGB pixels, unfiltered: one colour, so nothing is judged before the end.
RGB_ROWS = (b"\x00" + bytes((5, 6, 7)) * 8) * 3


@pytest.mark.parametrize(
    "data",
    [
        png_file((8, 3, 8, 2), png_chunk(b"IDAT", b"\x78\x9c\xff" + bytes(20))),
        png_file((8, 3, 8, 2), png_chunk(b"IDAT", b"\x00\x00" + zlib.compress(RGB_ROWS)[2:])),
        png_file((8, 3, 8, 2), png_chunk(b"IDAT", zlib.compress(b"\x05" + RGB_ROWS[1:]))),
        png_file((8, 3, 8, 2), png_chunk(b"IDAT", zlib.compress(RGB_ROWS[:-1]))),
        png_file((8, 3, 8, 2)),
        png_file(
            (8, 3, 8, 2),
            png_chunk(b"IDAT", zlib.compress(RGB_ROWS)[:9]),
            png_chunk(b"tEXt", b"k\0v"),
            png_chunk(b"IDAT", zlib.compress(RGB_ROWS)[9:]),
        ),
        png_file((8, 3, 8, 3), png_chunk(b"IDAT", zlib.compress(bytes(27)))),
        png_file((8, 3, 4, 2), png_chunk(b"IDAT", zlib.compress(RGB_ROWS))),
        png_file(
            (8, 3, 8, 2),
            png_chunk(b"tEXt", b"k\0v")[:-1] + b"\x00",
            png_chunk(b"IDAT", zlib.compress(RGB_ROWS)),
        ),
        png_file((8, 3, 8, 2), struct.pack(">I", 100) + b"tEXt" + b"k\0v"),
        png_file((8, 3, 8, 2), png_chunk(b"IDAT", zlib.compress(RGB_ROWS)), PNG_TRAILER),
    ],
    ids=[
        "bad-deflate-block",
        "bad-zlib-header",
        "filter-type-5",
        "rows-cut-short",
        "no-idat",
        "idat-split",
        "palette-without-plte",
        "rgb-of-4-bits",
        "bad-crc",
        "chunk-over-the-iend",
        "bytes-after-iend",
    ],
)
def test_a_png_with_broken_image_data_or_chunks_is_undecodable(data: bytes) -> None:
    """Found by the content check on the stream: off, the frame passes."""
    assert refused(data, "PNG", 8, 3).reason == "undecodable"
    for chunks in ([data], pieces(data)):
        report = check(chunks, "PNG", 8, 3, content_max_bytes=0)
        assert (report.problem, report.content_skipped) == (None, "disabled")


# ---------------------------------------------------------------- not enforcing


def test_an_unenforced_check_reports_the_first_problem_and_hashes_everything() -> None:
    data = png(65, 48)[:-1]  # wrong size and truncated: the size is found first
    frame = FrameCheck(Expectation("PNG", 64, 48, ROOMY), enforce=False)
    for chunk in pieces(data):
        frame.feed(chunk)
    report = frame.finish()
    assert report.problem is not None
    assert report.problem.reason == "wrong-resolution"
    assert (report.size, report.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert (report.width, report.height, report.content_skipped) == (65, 48, "invalid")
    assert frame.finish() is report


def test_an_enforced_finish_raises_again_when_asked_again() -> None:
    frame = FrameCheck(Expectation("PNG", None, None, ROOMY))
    frame.feed(png(8, 8)[:-1])
    for _ in range(2):
        with pytest.raises(InvalidFrame, match="truncated"):
            frame.finish()
    with pytest.raises(RuntimeError):
        frame.feed(b"x")


# ---------------------------------------------------------------- content check bounds


def test_the_content_check_is_skipped_above_content_max_bytes() -> None:
    data = flat("PNG", "RGB", (0, 0, 0))
    assert check([data], "PNG", content_max_bytes=len(data), enforce=False).colour == (0, 0, 0)
    report = check(pieces(data), "PNG", content_max_bytes=len(data) - 1)
    assert (report.problem, report.content_skipped, report.colour) == (None, "too-many-bytes", None)
    report = check([data], "PNG", content_max_bytes=0)
    assert (report.problem, report.content_skipped) == (None, "disabled")


def test_a_frame_over_content_max_bytes_is_not_kept_in_memory() -> None:
    """64 MiB made and fed chunk by chunk through a check whose content limit is 2 MiB:
    at most that, and the chunk being made (a few MiB), is held at any time."""
    row = os.urandom(4096 * 3)
    frame = FrameCheck(Expectation("PNG", 4096, 5500, 2 * MIB))
    tracemalloc.start()
    try:
        for chunk in stored_png(4096, 5500, row):
            frame.feed(chunk)
        report = frame.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.size > 64 * MIB
    assert (report.problem, report.content_skipped) == (None, "too-many-bytes")
    assert peak < 8 * MIB, f"peak {peak / MIB:.1f} MiB"


def test_a_declared_size_over_content_max_bytes_keeps_nothing() -> None:
    data = flat("PNG", "RGB", (0, 0, 0))
    for declared, skipped in ((len(data), None), (len(data) + 1, "too-many-bytes")):
        frame = FrameCheck(Expectation("PNG", None, None, len(data)), enforce=False)
        frame.declare_size(declared)
        frame.feed(data)
        report = frame.finish()
        assert report.content_skipped == skipped
        assert (report.problem is None) == (skipped is not None)


@pytest.mark.parametrize("fmt", ["PNG", "OPEN_EXR"])
def test_a_frame_whose_header_rules_out_decoding_is_not_kept(
    fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PNG of more pixels than decoded, or a format not decoded: nothing is kept though
    the content limit would allow the whole frame."""
    monkeypatch.setattr(validation, "CONTENT_MAX_PIXELS", 1_000_000)
    row = os.urandom(4096 * 3)
    if fmt == "PNG":
        chunks = stored_png(4096, 1400, row)
        skipped = "too-many-pixels"
    else:
        made = (row * 85 for _ in range(20))  # a new MiB each: kept ones would show
        chunks = itertools.chain([exr_header((0, 0, 4095, 1399))], made)
        skipped = "format"
    frame = FrameCheck(Expectation(fmt, 4096, 1400, ROOMY))
    tracemalloc.start()
    try:
        for chunk in chunks:
            frame.feed(chunk)
        report = frame.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.size > 16 * MIB
    assert (report.problem, report.content_skipped) == (None, skipped)
    assert peak < 6 * MIB, f"peak {peak / MIB:.1f} MiB"


def test_a_jpeg_within_content_max_bytes_is_kept_once() -> None:
    """The chunks are kept as they came, not copied, and read back as one file."""
    data = jpeg(600, 400)
    chunks = [data[at : at + 30_000] for at in range(0, len(data), 30_000)]
    frame = FrameCheck(Expectation("JPEG", 600, 400, len(data)))
    tracemalloc.start()
    try:
        for chunk in chunks:
            frame.feed(chunk)
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert kept < len(data) // 10
    assert frame.finish().content_skipped is None


def test_a_frame_of_too_many_pixels_is_not_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    data = flat("PNG", "RGB", (5, 5, 5), (200, 100))
    monkeypatch.setattr(validation, "CONTENT_MAX_PIXELS", 200 * 100 - 1)
    report = check([data], "PNG", 200, 100)
    assert (report.problem, report.content_skipped) == (None, "too-many-pixels")


def test_a_decompression_bomb_is_not_decoded() -> None:
    """A header claiming 10 gigapixels in a few bytes: within every byte limit, not decoded
    (Pillow would refuse it, and our bound comes first)."""
    data = b"".join(stored_png(1, 1, b"\0\0\0"))
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
    bomb = data[:8] + ihdr + data[8 + len(ihdr) :]
    report = check([bomb], "PNG")
    assert (report.problem, report.width, report.content_skipped) == (
        None,
        100_000,
        "too-many-pixels",
    )


# ---------------------------------------------------------------- the types


def test_header_known_says_when_a_copy_may_open_its_upload() -> None:
    frame = FrameCheck(Expectation("JPEG", None, None, 0))
    data = jpeg(16, 16)
    sof = data.index(b"\xff\xc0") + 9
    frame.feed(data[: sof - 1])
    assert not frame.header_known
    frame.feed(data[sof - 1 :])
    assert frame.header_known


def test_invalid_frame_keeps_its_reason_across_pickling() -> None:
    problem = pickle.loads(pickle.dumps(InvalidFrame("truncated", "cut")))
    assert (problem.reason, problem.detail, str(problem)) == ("truncated", "cut", "truncated: cut")
    with pytest.raises(ValueError, match="unknown reason"):
        InvalidFrame("bad", "x")


def test_an_expectation_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="content_max_bytes"):
        Expectation("PNG", 1, 1, -1)
    with pytest.raises(ValueError, match="width"):
        Expectation("PNG", 0, 1, 0)
    with pytest.raises(TypeError):
        Expectation("PNG", "1920", 1, 0)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["PNG", "flat PNG", "JPEG"])
def test_chunks_may_be_views_of_a_reused_buffer(kind: str) -> None:
    """A caller reading into one buffer (FilePart does) passes views of it: the check keeps
    copies where it keeps anything (a JPEG; a PNG's chunk headers and rows cut by a view's
    end)."""
    frames = {
        "PNG": png(64, 48),
        "flat PNG": b"".join(stored_png(64, 48, bytes((1, 2, 3)) * 64)),
        "JPEG": jpeg(64, 48),
    }
    data = frames[kind]
    fmt = kind.split()[-1]
    buffer = bytearray(1000)
    frame = FrameCheck(Expectation(fmt, 64, 48, ROOMY), enforce=False)
    for at in range(0, len(data), len(buffer)):
        piece = data[at : at + len(buffer)]
        buffer[: len(piece)] = piece
        frame.feed(memoryview(buffer)[: len(piece)])
    report = frame.finish()
    assert report.sha256 == hashlib.sha256(data).hexdigest()
    assert report.colour == ((1, 2, 3) if kind == "flat PNG" else None)
    assert report.problem is None or report.problem.reason == "flat-colour"
