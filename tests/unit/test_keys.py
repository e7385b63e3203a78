"""Blob keys, image extensions and final frame keys: what supervisor.keys accepts and refuses."""

from __future__ import annotations

from typing import Any

import pytest

from supervisor.errors import InvalidInput
from supervisor.keys import final_frame_key, validate_blob_key, validate_extension


@pytest.mark.parametrize(
    "key",
    [
        "",
        "..",
        "a/../b",
        "../a",
        "a/..",
        "./a",
        "a/./b",
        "/abs/key",
        "a//b",
        "a/b/",
        "a\x00b",
        "a\nb",
        "a\x7fb",
        "a\x85b",
        "http://x",
        "a/s3://b",
        "a\\b",
        "a/\ud800",
        "k" * 1025,
        "é" * 513,
    ],
)
def test_bad_keys_are_refused(key: str) -> None:
    with pytest.raises(InvalidInput):
        validate_blob_key(key)


@pytest.mark.parametrize(
    "key", ["a", "c/o/f.blend", "c/o/my file+1é.png", "a/.hidden/b", "k" * 1024]
)
def test_good_keys_pass_unchanged(key: str) -> None:
    assert validate_blob_key(key) == key


def test_non_string_key_is_refused() -> None:
    with pytest.raises(InvalidInput):
        validate_blob_key(b"a/b")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("frame", "ext", "expected"),
    [
        (7, "png", "cust/obj/007.png"),
        (0, "png", "cust/obj/000.png"),
        (42, "PNG", "cust/obj/042.png"),
        (250, "exr", "cust/obj/250.exr"),
        (1234, "jpg", "cust/obj/1234.jpg"),
        (-7, "png", "cust/obj/-07.png"),
        (-123, "png", "cust/obj/-123.png"),
    ],
)
def test_final_frame_key(frame: int, ext: str, expected: str) -> None:
    assert final_frame_key("cust", "obj", frame, ext) == expected


@pytest.mark.parametrize(
    ("customer", "obj", "frame", "ext"),
    [
        ("cust", "obj", 1, ""),
        ("cust", "obj", 1, ".png"),
        ("cust", "obj", 1, "p.ng"),
        ("cust", "obj", 1, "abcdefghijk"),
        ("cust", "obj", 1, "pñg"),
        ("cust", "obj", True, "png"),
        ("cust", "obj", "7", "png"),
        ("cu/st", "obj", 1, "png"),
        ("cust", "..", 1, "png"),
        ("", "obj", 1, "png"),
    ],
)
def test_final_frame_key_refuses(customer: str, obj: str, frame: Any, ext: str) -> None:
    with pytest.raises(InvalidInput):
        final_frame_key(customer, obj, frame, ext)


def test_validate_extension_lowercases() -> None:
    assert validate_extension("ExR") == "exr"
    assert validate_extension("a" * 10) == "a" * 10
