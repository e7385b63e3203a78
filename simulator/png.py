"""A tiny PNG encoder and a bitmap digit font, so placeholder frames need no imaging library.

Each frame is a tiny landscape whose colours and sun depend on the frame number, with the
number written on it, so two frames never give the same image, a dashboard's thumbnails look
like the frames of a film, and a human can check a stored frame at a glance.
"""

from __future__ import annotations

import struct
import zlib

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


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def encode_rgb(width: int, height: int, pixels: bytes, *, level: int = 6) -> bytes:
    """Encode 8-bit RGB `pixels` (rows top to bottom, no padding) as a PNG file, deflated at
    zlib `level`."""
    if width <= 0 or height <= 0 or len(pixels) != width * height * 3:
        raise ValueError("pixels must hold width * height RGB triples")
    stride = width * 3
    raw = b"".join(b"\x00" + pixels[y * stride : (y + 1) * stride] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, level))
        + _chunk(b"IEND", b"")
    )


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


def frame_png(frame: int, *, scale: int = 6, margin: int = 10) -> bytes:
    """A small PNG (160x90, wider for long numbers) that reads as a frame in a thumbnail: a
    sky fading from `background(frame)` to the horizon, a sun that moves along with the frame
    number, the ground, and `frame` in white digits (`scale` pixels a glyph cell) on top.

    Rows of one colour compress to almost nothing, so a frame is about 1.3 KiB and takes
    about half a millisecond to make."""
    text = str(frame)
    glyph_w, gap, shadow = GLYPH_WIDTH * scale, scale, max(1, scale // 3)
    text_w = len(text) * glyph_w + (len(text) - 1) * gap
    width = max(MIN_WIDTH, 2 * margin + text_w + shadow)
    height = max(MIN_HEIGHT, 2 * margin + GLYPH_HEIGHT * scale + shadow)
    horizon = height * 3 // 4
    top = background(frame)
    low = (min(255, top[0] + 110), min(255, top[1] + 80), min(255, top[2] + 60))
    r0, g0, b0 = top
    dr, dg, db = low[0] - r0, low[1] - g0, low[2] - b0
    rows = [
        bytes((r0 + dr * y // horizon, g0 + dg * y // horizon, b0 + db * y // horizon)) * width
        for y in range(horizon)
    ]
    ground = background(frame + 50)
    rows.append(
        bytes((ground[0] // 3, ground[1] // 2, ground[2] // 3)) * (width * (height - horizon))
    )
    canvas = bytearray(b"".join(rows))

    radius = max(3, height // 8)
    cx = radius + 2 + (frame * 9) % max(1, width - 2 * radius - 4)
    cy = horizon // 3 + radius // 2
    for y in range(max(0, cy - radius), min(horizon, cy + radius + 1)):
        half = int((radius * radius - (y - cy) ** 2) ** 0.5)
        x0, x1 = max(0, cx - half), min(width, cx + half + 1)
        canvas[(y * width + x0) * 3 : (y * width + x1) * 3] = SUN * (x1 - x0)

    left = (width - shadow - text_w) // 2
    top_y = (height - shadow - GLYPH_HEIGHT * scale) // 2
    for ink, offset in ((SHADOW, shadow), (INK, 0)):
        for index, char in enumerate(text):
            x = left + index * (glyph_w + gap) + offset
            for row, col, length in _RUNS[char]:
                run = ink * (length * scale)
                size = len(run)
                start = ((top_y + offset + row * scale) * width + x + col * scale) * 3
                for _ in range(scale):
                    canvas[start : start + size] = run
                    start += width * 3
    # Level 3 makes a frame 25 % larger than level 6 (still about 1.3 KiB) in a fifth the time.
    return encode_rgb(width, height, bytes(canvas), level=3)
