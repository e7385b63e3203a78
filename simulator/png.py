"""A tiny PNG encoder and a bitmap digit font, so placeholder frames need no imaging library.

Each frame shows its number on a background colour derived from the number, so two frames
never give the same image and a human can check a stored frame at a glance.
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


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def encode_rgb(width: int, height: int, pixels: bytes) -> bytes:
    """Encode 8-bit RGB `pixels` (rows top to bottom, no padding) as a PNG file."""
    if width <= 0 or height <= 0 or len(pixels) != width * height * 3:
        raise ValueError("pixels must hold width * height RGB triples")
    stride = width * 3
    raw = b"".join(b"\x00" + pixels[y * stride : (y + 1) * stride] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 6))
        + _chunk(b"IEND", b"")
    )


def background(frame: int) -> tuple[int, int, int]:
    """A dark colour that changes with every frame number."""
    return (40 + (frame * 37) % 150, 40 + (frame * 91) % 150, 40 + (frame * 53) % 150)


def frame_png(frame: int, *, scale: int = 6, margin: int = 10) -> bytes:
    """A PNG showing `frame` in white digits on a per-frame background."""
    text = str(frame)
    glyph_w, gap = GLYPH_WIDTH * scale, scale
    width = max(96, 2 * margin + len(text) * glyph_w + (len(text) - 1) * gap)
    height = 2 * margin + GLYPH_HEIGHT * scale
    canvas = bytearray(bytes(background(frame)) * (width * height))
    ink = b"\xff\xff\xff"
    left = (width - (len(text) * glyph_w + (len(text) - 1) * gap)) // 2
    for index, char in enumerate(text):
        x0 = left + index * (glyph_w + gap)
        for row, line in enumerate(_GLYPHS[char]):
            for col, cell in enumerate(line):
                if cell != "#":
                    continue
                for dy in range(scale):
                    y = margin + row * scale + dy
                    start = (y * width + x0 + col * scale) * 3
                    canvas[start : start + 3 * scale] = ink * scale
    return encode_rgb(width, height, bytes(canvas))
