"""A tiny PNG encoder and a bitmap digit font, so placeholder frames need no imaging library.

Each frame is a tiny landscape whose colours and sun depend on the frame number, with the
number written on it, so two frames never give the same image, a dashboard's thumbnails look
like the frames of a film, and a human can check a stored frame at a glance.

A frame at a scene's output size (`frame_png(frame, width, height)`) must stay cheap at
1920x1080, where deflating the whole image takes milliseconds. So only its top band (an
eighth of the height: the sky's frame colour, the sun and the digits) depends on the frame,
and the rest is a fixed landscape per size, deflated once: a frame deflates its band alone
and splices the cached deflate blocks of the rest after it, adding up the Adler-32 of both.
"""

from __future__ import annotations

import functools
import math
import struct
import zlib
from collections.abc import Iterator

SIGNATURE = b"\x89PNG\r\n\x1a\n"

# 3x5 glyphs, one string per row, "#" is ink.
_GLYPHS: dict[str, tuple[str, ...]] = {
    "0": ("###", "#.#", "#.#", "#.#", "###"),
    "1": (".#.", "##.", ".#.", ".#.", "###"),
    "2": ("###", "..#", "###", "#..", "###"),
    "3": ("###", "..#", ".##", "..#", "###"),
    "4": ("#.#", "#.#", "###", "..#", "..#"),
    "5": ("###", "#..", "###", "..#", "###"),
    "6": ("###", "#..", "###", "#.#", "###"),
    "7": ("###", "..#", ".#.", ".#.", ".#."),
    "8": ("###", "#.#", "###", "#.#", "###"),
    "9": ("###", "#.#", "###", "..#", "###"),
    "-": ("...", "...", "###", "...", "..."),
}
GLYPH_WIDTH = 3
GLYPH_HEIGHT = 5
MIN_WIDTH, MIN_HEIGHT = 160, 90
# The largest frame `frame_png` draws at a given size: its fixed part is built once, row by
# row, and at 8192x8192 that is already 200 MB of rows to deflate.
MAX_PIXELS = 8192 * 8192
BAND_SHARE = 8  # the top 1/BAND_SHARE of a sized frame depends on the frame
# At 1080p level 1 deflates the band in a fifth of level 6's time, to 6.6 KiB instead of
# 3.3 KiB; memory level 4 (a smaller hash table) is a third faster than the default 8, for
# 1 % more bytes. The fixed part is deflated once, so it takes the smallest.
BAND_LEVEL = 1
BAND_MEMORY_LEVEL = 4
REST_LEVEL = 9
# A zlib header (deflate, 32 KiB window, FCHECK making it a multiple of 31) and the last,
# empty, block that ends a deflate stream none of whose other blocks is marked final.
_ZLIB_HEADER = b"\x78\x01"
_FINAL_BLOCK = zlib.compressobj(REST_LEVEL, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)
_ADLER_BASE = 65521


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _png(width: int, height: int, idat: bytes) -> bytes:
    """A PNG file of 8-bit RGB rows, from the zlib stream of its filtered rows."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def encode_rgb(width: int, height: int, pixels: bytes, *, level: int = 6) -> bytes:
    """Encode 8-bit RGB `pixels` (rows top to bottom, no padding) as a PNG file, deflated at
    zlib `level`."""
    if width <= 0 or height <= 0 or len(pixels) != width * height * 3:
        raise ValueError("pixels must hold width * height RGB triples")
    stride = width * 3
    raw = b"".join(b"\x00" + pixels[y * stride : (y + 1) * stride] for y in range(height))
    return _png(width, height, zlib.compress(raw, level))


def adler32_combine(first: int, second: int, second_length: int) -> int:
    """The Adler-32 of two byte strings one after the other, from the Adler-32 of each and
    the second's length (zlib's adler32_combine): the second's sums restart from the first's
    instead of from 1."""
    a1, b1 = first & 0xFFFF, first >> 16
    a2, b2 = second & 0xFFFF, second >> 16
    total = (a1 + a2 - 1) % _ADLER_BASE
    running = (b1 + b2 + second_length * (a1 - 1)) % _ADLER_BASE
    return running << 16 | total


def background(frame: int) -> tuple[int, int, int]:
    """A dark colour that changes with every frame number: the top of the sky."""
    return (40 + (frame * 37) % 150, 40 + (frame * 91) % 150, 40 + (frame * 53) % 150)


def _runs(glyph: tuple[str, ...]) -> tuple[tuple[int, int, int], ...]:
    """The glyph's ink as (row, first column, length) runs."""
    runs = []
    for row, line in enumerate(glyph):
        col = 0
        while col < len(line):
            if line[col] != "#":
                col += 1
                continue
            end = col
            while end < len(line) and line[end] == "#":
                end += 1
            runs.append((row, col, end - col))
            col = end
    return tuple(runs)


_RUNS = {char: _runs(glyph) for char, glyph in _GLYPHS.items()}
SUN = b"\xff\xd2\x5a"
INK = b"\xff\xff\xff"
SHADOW = b"\x10\x10\x10"
# The fixed part of a sized frame: the sky under the band fading to the horizon's haze, two
# hills on the horizon, and the ground darkening towards the bottom.
REST_SKY = (120, 150, 190)
REST_HAZE = (215, 200, 170)
HILL = b"\x3c\x5f\x46"
GROUND_TOP = (80, 110, 55)
GROUND_LOW = (30, 45, 25)


def _fade(top: tuple[int, int, int], low: tuple[int, int, int], step: int, steps: int) -> bytes:
    """The colour `step` of `steps` on the way from `top` to `low`, as one RGB triple."""
    return bytes(t + (w - t) * step // steps for t, w in zip(top, low, strict=True))


# Pixel (x, y) of a canvas is at y * row_bytes + lead + 3 x: lead 1 skips the filter byte
# that starts each row of a PNG's raw data, so a band is drawn straight into that data.


def _draw_sun(
    canvas: bytearray,
    layout: tuple[int, int, int, int],
    centre: tuple[int, int],
    radius: int,
) -> None:
    """A SUN disc clipped to the canvas; `layout` is (row_bytes, lead, width, rows)."""
    row_bytes, lead, width, rows = layout
    cx, cy = centre
    for y in range(max(0, cy - radius), min(rows, cy + radius + 1)):
        half = int((radius * radius - (y - cy) ** 2) ** 0.5)
        x0, x1 = max(0, cx - half), min(width, cx + half + 1)
        if x1 > x0:
            start = y * row_bytes + lead + x0 * 3
            canvas[start : start + (x1 - x0) * 3] = SUN * (x1 - x0)


def _draw_text(
    canvas: bytearray,
    row_bytes: int,
    lead: int,
    text: str,
    origin: tuple[int, int],
    scale: int,
    shadow: int,
) -> None:
    """`text` in INK over a SHADOW copy offset by `shadow`, `scale` pixels a glyph cell, a
    cell's gap between glyphs, its top left corner at `origin` (it must fit)."""
    left, top = origin
    glyph_w = GLYPH_WIDTH * scale
    for ink, offset in ((SHADOW, shadow), (INK, 0)):
        for index, char in enumerate(text):
            x = left + index * (glyph_w + scale) + offset
            for row, col, length in _RUNS[char]:
                run = ink * (length * scale)
                size = len(run)
                start = (top + offset + row * scale) * row_bytes + lead + (x + col * scale) * 3
                for _ in range(scale):
                    canvas[start : start + size] = run
                    start += row_bytes


def frame_png(
    frame: int,
    width: int | None = None,
    height: int | None = None,
    *,
    scale: int = 6,
    margin: int = 10,
) -> bytes:
    """The placeholder frame `frame`: a PNG showing a sky fading from `background(frame)`,
    a sun that moves with the frame number, and the number in white digits.

    Without a size, a small picture (160x90, wider for long numbers, `scale` pixels a glyph
    cell, `margin` around the digits) for thumbnails and tests: about 1.3 KiB, half a
    millisecond. With `width` and `height`, a picture of exactly that size whose top band
    changes with the frame (see the module's docstring); `scale` and `margin` do not apply.
    ValueError for a size below 1x1 or above MAX_PIXELS."""
    if width is not None or height is not None:
        if width is None or height is None:
            raise ValueError("give both width and height, or neither")
        return _sized_png(frame, width, height)
    text = str(frame)
    glyph_w, gap, shadow = GLYPH_WIDTH * scale, scale, max(1, scale // 3)
    text_w = len(text) * glyph_w + (len(text) - 1) * gap
    width = max(MIN_WIDTH, 2 * margin + text_w + shadow)
    height = max(MIN_HEIGHT, 2 * margin + GLYPH_HEIGHT * scale + shadow)
    horizon = height * 3 // 4
    top = background(frame)
    low = (min(255, top[0] + 110), min(255, top[1] + 80), min(255, top[2] + 60))
    rows = [_fade(top, low, y, horizon) * width for y in range(horizon)]
    ground = background(frame + 50)
    rows.append(
        bytes((ground[0] // 3, ground[1] // 2, ground[2] // 3)) * (width * (height - horizon))
    )
    canvas = bytearray(b"".join(rows))

    radius = max(3, height // 8)
    cx = radius + 2 + (frame * 9) % max(1, width - 2 * radius - 4)
    _draw_sun(canvas, (width * 3, 0, width, horizon), (cx, horizon // 3 + radius // 2), radius)
    left = (width - shadow - text_w) // 2
    top_y = (height - shadow - GLYPH_HEIGHT * scale) // 2
    _draw_text(canvas, width * 3, 0, text, (left, top_y), scale, shadow)
    # Level 3 makes a frame 25 % larger than level 6 (still about 1.3 KiB) in a fifth the time.
    return encode_rgb(width, height, bytes(canvas), level=3)


def frame_pixels(frame: int, width: int, height: int) -> bytes:
    """The RGB pixels (rows top to bottom, no padding) of `frame_png(frame, width, height)`,
    for other encoders and for checking the PNG."""
    _check_size(width, height)
    band = _band(frame, width, height)
    row_bytes = 1 + 3 * width
    rows = [band[y * row_bytes + 1 : (y + 1) * row_bytes] for y in range(len(band) // row_bytes)]
    return b"".join(rows) + b"".join(_rest_rows(width, height))


def _check_size(width: int, height: int) -> None:
    if width < 1 or height < 1 or width * height > MAX_PIXELS:
        raise ValueError(f"a frame must be 1x1 to {MAX_PIXELS} pixels, not {width}x{height}")


def _band_rows(height: int) -> int:
    return max(1, height // BAND_SHARE)


def _band(frame: int, width: int, height: int) -> bytearray:
    """The frame-dependent top rows as PNG raw data (each row led by filter byte 0): the sky
    fading from `background(frame)` to where the fixed sky starts, the sun, the digits as
    large as the band allows (none when it is too small for one pixel a cell)."""
    rows = _band_rows(height)
    row_bytes = 1 + 3 * width
    (r0, g0, b0), (r1, g1, b1) = background(frame), REST_SKY
    dr, dg, db = r1 - r0, g1 - g0, b1 - b0
    # Rows written into a zeroed canvas (the filter bytes): joining them and copying the
    # result into a bytearray took ten times longer at 1080p (two large fresh buffers).
    canvas = bytearray(rows * row_bytes)
    for y in range(rows):
        colour = bytes((r0 + dr * y // rows, g0 + dg * y // rows, b0 + db * y // rows))
        canvas[y * row_bytes + 1 : (y + 1) * row_bytes] = colour * width
    radius = max(1, rows * 3 // 8)
    travel = max(1, width - 2 * radius)
    cx = radius + (frame * max(1, width * 9 // MIN_WIDTH)) % travel
    _draw_sun(canvas, (row_bytes, 1, width, rows), (cx, rows // 2), radius)

    text = str(frame)
    pad = max(1, rows // 8)
    # A glyph with its shadow fits 6 cells high and a cell's gap or shadow 4 cells wide.
    scale = min(
        (rows - 2 * pad) // (GLYPH_HEIGHT + 1),
        (width - 2 * pad) // (len(text) * (GLYPH_WIDTH + 1)),
    )
    if scale >= 1:
        shadow = max(1, scale // 3)
        text_w = len(text) * (GLYPH_WIDTH + 1) * scale - scale
        origin = ((width - shadow - text_w) // 2, (rows - shadow - GLYPH_HEIGHT * scale) // 2)
        _draw_text(canvas, row_bytes, 1, text, origin, scale, shadow)
    return canvas


def _rest_rows(width: int, height: int) -> Iterator[bytes]:
    """The fixed rows under the band, as RGB pixels: the sky down to the horizon (three
    quarters down), two hills on it, the ground below."""
    band = _band_rows(height)
    horizon = max(band, height * 3 // 4)
    sky = horizon - band
    hills = (
        (width * 3 // 10, width // 4, max(1, sky // 5)),
        (width * 3 // 4, width // 5, max(1, sky // 8)),
    )
    for y in range(band, horizon):
        row = bytearray(_fade(REST_SKY, REST_HAZE, y - band, sky) * width)
        rise = horizon - y
        for centre, half_width, hill_height in hills:
            if rise <= hill_height:
                half = int(half_width * math.sqrt(1 - (rise / hill_height) ** 2))
                x0, x1 = max(0, centre - half), min(width, centre + half + 1)
                row[x0 * 3 : x1 * 3] = HILL * (x1 - x0)
        yield bytes(row)
    ground = max(1, height - horizon)
    for y in range(horizon, height):
        yield _fade(GROUND_TOP, GROUND_LOW, y - horizon, ground) * width


@functools.lru_cache(maxsize=8)
def _rest_deflate(width: int, height: int) -> tuple[bytes, int, int]:
    """The fixed rows as raw deflate blocks (none final, ending on a byte boundary, never
    referring to data before them), with the Adler-32 and length of their raw data."""
    compressor = zlib.compressobj(REST_LEVEL, zlib.DEFLATED, -15)
    parts, adler, length = [], 1, 0
    for row in _rest_rows(width, height):
        line = b"\x00" + row
        parts.append(compressor.compress(line))
        adler = zlib.adler32(line, adler)
        length += len(line)
    parts.append(compressor.flush(zlib.Z_FULL_FLUSH))
    return b"".join(parts), adler, length


def _sized_png(frame: int, width: int, height: int) -> bytes:
    _check_size(width, height)
    band = _band(frame, width, height)
    rest, rest_adler, rest_length = _rest_deflate(width, height)
    compressor = zlib.compressobj(BAND_LEVEL, zlib.DEFLATED, -15, BAND_MEMORY_LEVEL)
    head = compressor.compress(band) + compressor.flush(zlib.Z_FULL_FLUSH)
    adler = adler32_combine(zlib.adler32(band), rest_adler, rest_length)
    idat = b"".join((_ZLIB_HEADER, head, rest, _FINAL_BLOCK, struct.pack(">I", adler)))
    return _png(width, height, idat)


@functools.lru_cache(maxsize=4)
def black_png(width: int, height: int) -> bytes:
    """A PNG of one flat colour, black, at this size (what a broken render node may send)."""
    _check_size(width, height)
    compressor = zlib.compressobj(REST_LEVEL)
    row = bytes(1 + 3 * width)
    parts = [compressor.compress(row) for _ in range(height)]
    parts.append(compressor.flush())
    return _png(width, height, b"".join(parts))
