"""Blob keys never leave their bucket, and writes land whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator.blobs import FRAMES_BUCKET, TEMP_BUCKET, BadKey, BlobStore, UnknownBucket, check_key


@pytest.mark.parametrize(
    "key",
    [
        "",
        "..",
        "../x",
        "a/../../x",
        "a/..",
        "/etc/passwd",
        "a\\b",
        "a\x00b",
        "a//b",
        "./a",
        "a/./b",
        "C:x",
        "a\nb",
        "x" * 1100,
        None,
        7,
    ],
)
def test_bad_keys_are_refused(key: object) -> None:
    with pytest.raises(BadKey):
        check_key(key)


@pytest.mark.parametrize("key", ["a", "a/b/c.png", "temp/s-1/u_1/7-ab12.png", "c/o/007.png"])
def test_plain_keys_pass(key: str) -> None:
    assert check_key(key) == key


def test_write_read_list_delete(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    store.write(TEMP_BUCKET, "temp/s/u/1-a.png", b"one")
    store.write(TEMP_BUCKET, "temp/s/u/2-b.png", b"two")
    assert store.keys(TEMP_BUCKET) == ["temp/s/u/1-a.png", "temp/s/u/2-b.png"]
    assert store.read(TEMP_BUCKET, "temp/s/u/2-b.png") == b"two"
    assert store.delete(TEMP_BUCKET, "temp/s/u/1-a.png")
    assert not store.delete(TEMP_BUCKET, "temp/s/u/1-a.png")
    assert store.keys(FRAMES_BUCKET) == []
    assert list(store.spool.iterdir()) == []


def test_symlinks_out_of_a_bucket_are_refused(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "data")
    (tmp_path / "outside").mkdir()
    (tmp_path / "data" / "buckets" / TEMP_BUCKET / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(BadKey):
        store.path(TEMP_BUCKET, "link/file")


def test_a_file_symlink_out_of_a_bucket_is_refused_deep_in_the_key(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "data")
    (tmp_path / "secret").write_text("secret")
    folder = tmp_path / "data" / "buckets" / TEMP_BUCKET / "s" / "u"
    folder.mkdir(parents=True)
    (folder / "1.png").symlink_to(tmp_path / "secret")
    with pytest.raises(BadKey):
        store.path(TEMP_BUCKET, "s/u/1.png")


def test_a_symlink_that_stays_in_its_bucket_is_followed(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "data")
    store.write(TEMP_BUCKET, "real/1.png", b"png")
    (tmp_path / "data" / "buckets" / TEMP_BUCKET / "alias").symlink_to("real")
    assert store.path(TEMP_BUCKET, "alias/1.png") == store.path(TEMP_BUCKET, "real/1.png")
    assert store.read(TEMP_BUCKET, "alias/1.png") == b"png"


def test_unknown_buckets_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UnknownBucket):
        BlobStore(tmp_path).path("secrets", "a")
