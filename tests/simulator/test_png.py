"""The placeholder frames are valid PNGs that differ from frame to frame."""

from __future__ import annotations

import struct
import zlib

import pytest

from simulator.png import SIGNATURE, background, encode_rgb, frame_png


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """Split a PNG into (type, data) chunks, checking every CRC."""
    assert data[:8] == SIGNATURE
    found, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        found.append((kind, body))
        offset += 12 + length
    return found


def decode(data: bytes) -> tuple[int, int, bytes]:
    parts = chunks(data)
    assert [kind for kind, _ in parts] == [b"IHDR", b"IDAT", b"IEND"]
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", parts[0][1]
    )
    assert (depth, colour, compression, filtering, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(parts[1][1])
    assert len(raw) == height * (1 + 3 * width)
    rows = [raw[y * (1 + 3 * width) : (y + 1) * (1 + 3 * width)] for y in range(height)]
    assert all(row[0] == 0 for row in rows)
    return width, height, b"".join(row[1:] for row in rows)


@pytest.mark.parametrize("frame", [0, 1, 7, 250, -12, 1_000_000])
def test_frames_are_valid_pngs_with_ink(frame: int) -> None:
    width, height, pixels = decode(frame_png(frame))
    assert width >= 96
    assert height > 30
    assert b"\xff\xff\xff" in pixels
    assert pixels[:3] == bytes(background(frame))


def test_two_frames_give_different_images() -> None:
    assert decode(frame_png(1))[2] != decode(frame_png(2))[2]
    assert frame_png(10) != frame_png(11)


def test_long_numbers_widen_the_image() -> None:
    assert decode(frame_png(123456789012))[0] > decode(frame_png(1))[0]


def test_encoder_refuses_the_wrong_pixel_count() -> None:
    with pytest.raises(ValueError, match="RGB"):
        encode_rgb(2, 2, b"\x00" * 11)


@pytest.mark.parametrize("frame", [0, 1, 42, 250, 9999, -3])
def test_frames_look_like_small_pictures(frame: int) -> None:
    data = frame_png(frame)
    width, height, pixels = decode(data)
    assert (width, height) == (160, 90)
    assert len(data) < 3 * 1024  # benches pad frames to 4 KiB
    colours = {pixels[i : i + 3] for i in range(0, len(pixels), 3)}
    assert len(colours) > 20  # a sky gradient, a sun, the ground and the digits
    top_left, bottom_left = pixels[:3], pixels[(height - 1) * width * 3 :][:3]
    assert top_left != bottom_left


def test_the_picture_changes_with_the_frame_not_only_the_digits() -> None:
    def sky(frame: int) -> bytes:
        width, _, pixels = decode(frame_png(frame))
        return pixels[: 8 * width * 3]  # the top rows, above the digits

    assert sky(1) != sky(2)


def test_the_scale_knob_still_sizes_the_digits() -> None:
    assert decode(frame_png(5, scale=20))[1] > decode(frame_png(5))[1]
    assert decode(frame_png(5, scale=1, margin=0))[:2] == (160, 90)
