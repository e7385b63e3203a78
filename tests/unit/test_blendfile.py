"""The .blend reader: real files, hostile files, frame and output semantics, the child's limits."""

from __future__ import annotations

import gzip
import json
import logging
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import zstandard
from blender_asset_tracer.blendfile import BlendFile
from blender_asset_tracer.blendfile import dna as bat_dna

from supervisor.blendfile import SceneRange, isolation, parse_scene_range, read_scene_range, reader
from supervisor.errors import BlendFileError
from tests.blendgen import blend_with_output, blend_with_range

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "blend"
# The BAT project's files (public/) are GPL; they are read from the shared corpus, not copied.
# CI lays out ../shared beside the repository.
REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(os.environ.get("BLEND_CORPUS_DIR", REPO.parent / "shared" / "blend-corpus"))

V500 = FIXTURES / "blender-5.0" / "two_scenes_active_second.blend"
V402 = FIXTURES / "blender-4.2" / "two_scenes_active_first.blend"
DEFAULT_V500 = FIXTURES / "blender-5.0" / "default_1_250.blend"

# Expected values from the corpus README (checked against Blender itself).
EXPECTED = [
    ("blender-5.0/default_1_250.blend", "Scene", 1, 250, 1),
    ("blender-5.0/default_1_250_zstd.blend", "Scene", 1, 250, 1),
    ("blender-5.0/end_lt_start_attempt.blend", "Scene", 200, 200, 1),
    ("blender-5.0/neg_start_attempt.blend", "Scene", 0, 250, 1),
    ("blender-5.0/range_10_20.blend", "Scene", 10, 20, 1),
    ("blender-5.0/range_10_20_zstd.blend", "Scene", 10, 20, 1),
    ("blender-5.0/range_1_1000000.blend", "Scene", 1, 1000000, 1),
    ("blender-5.0/range_1_max.blend", "Scene", 1, 1048574, 1),
    ("blender-5.0/single_frame_5.blend", "Scene", 5, 5, 1),
    ("blender-5.0/start0_end0.blend", "Scene", 0, 0, 1),
    ("blender-5.0/step_0.blend", "Scene", 1, 250, 0),
    ("blender-5.0/step_3_1_100.blend", "Scene", 1, 100, 3),
    ("blender-5.0/step_3_1_100_zstd.blend", "Scene", 1, 100, 3),
    ("blender-5.0/two_scenes_active_first.blend", "AAA_active", 7, 77, 7),
    ("blender-5.0/two_scenes_active_second.blend", "ZZZ_active", 100, 200, 2),
    ("blender-5.0/two_scenes_active_second_zstd.blend", "ZZZ_active", 100, 200, 2),
    ("blender-4.2/default_1_250.blend", "Scene", 1, 250, 1),
    ("blender-4.2/default_1_250_zstd.blend", "Scene", 1, 250, 1),
    ("blender-4.2/range_1_1000000.blend", "Scene", 1, 1000000, 1),
    ("blender-4.2/step_3_1_100_zstd.blend", "Scene", 1, 100, 3),
    ("blender-4.2/two_scenes_active_first.blend", "AAA_active", 7, 77, 7),
    ("blender-4.2/two_scenes_active_second.blend", "ZZZ_active", 100, 200, 2),
    ("gzip/v402_range_10_20_gzip.blend", "Scene", 10, 20, 1),
    ("gzip/v500_two_scenes_active_second_gzip.blend", "ZZZ_active", 100, 200, 2),
    ("public/T53562_bam_pack_bug.blend", "Scene", 1, 100, 1),
    ("public/T55539-particles_particle.blend", "Scene", 1, 250, 1),
    ("public/absolute_path.blend", "Scene", 1, 250, 1),
    ("public/basic_file.blend", "Scene", 1, 250, 1),
    ("public/basic_file_compressed.blend", "Scene", 1, 250, 1),
    ("public/basic_file_compressed_zstd.blend", "Scene", 1, 250, 1),
    ("public/basic_file_zstandard.blend", "Scene", 1, 250, 1),
    ("public/doubly_linked.blend", "Scene", 1, 250, 1),
    ("public/geometry-nodes-3_set_file.blend", "Scene", 1, 250, 1),
    ("public/image_sequencer.blend", "Scene", 1, 250, 1),
    ("public/linked_cube.blend", "Scene", 1, 250, 1),
    ("public/linked_cube_compressed.blend", "Scene", 1, 250, 1),
    ("public/meshcache-source.blend", "Scene", 1, 70, 1),
    ("public/movieclip.blend", "Scene", 1, 250, 1),
    ("public/udim_v01_UDIM_BAT_debugging.blend", "Scene", 1, 250, 1),
    ("public/with_font.blend", "Scene", 1, 250, 1),
]

# What the active scene's RenderData holds (r.xsch, r.ysch, r.size, r.im_format.imtype), as
# plain BAT reads it from these files; the 2.79-era public files render at 50 %, several to
# FFMPEG video.
OUTPUTS = [
    ("blender-5.0/default_1_250.blend", 1920, 1080, 100, "PNG", 1920, 1080),
    ("blender-5.0/two_scenes_active_second_zstd.blend", 1920, 1080, 100, "PNG", 1920, 1080),
    ("blender-5.0/range_1_max.blend", 1920, 1080, 100, "PNG", 1920, 1080),
    ("blender-4.2/default_1_250_zstd.blend", 1920, 1080, 100, "PNG", 1920, 1080),
    ("blender-4.2/two_scenes_active_first.blend", 1920, 1080, 100, "PNG", 1920, 1080),
    ("gzip/v402_range_10_20_gzip.blend", 1920, 1080, 100, "PNG", 1920, 1080),
    ("gzip/v500_two_scenes_active_second_gzip.blend", 1920, 1080, 100, "PNG", 1920, 1080),
    ("public/T53562_bam_pack_bug.blend", 1920, 1080, 50, "PNG", 960, 540),
    ("public/basic_file.blend", 1920, 1080, 50, "FFMPEG", 960, 540),
    ("public/basic_file_compressed.blend", 1920, 1080, 50, "FFMPEG", 960, 540),
    ("public/basic_file_compressed_zstd.blend", 1920, 1080, 50, "FFMPEG", 960, 540),
    ("public/absolute_path.blend", 1920, 1080, 100, "PNG", 1920, 1080),
    ("public/geometry-nodes-3_set_file.blend", 2048, 858, 100, "PNG", 2048, 858),
]

# Every file in bad/ (plus the corrupt public one) and the start of the error it must give.
BAD = {
    "bad/bad_version_digits.blend": "invalid file header",
    "bad/crafted_dna1_64GiB.blend": "truncated file: block 'DNA1' at offset 17 claims 68719476736",
    "bad/empty.blend": "empty file",
    "bad/future_format_v2.blend": "unsupported .blend file format version 2",
    "bad/gzip_of_png.blend": "gzip-compressed data is not a .blend file",
    "bad/header_size_99.blend": "unsupported file header size 99",
    "bad/magic_only.blend": "truncated file: incomplete file header",
    "bad/magic_plus_random.blend": "truncated file: block",
    "bad/png_renamed.blend": "not a .blend file (bad magic)",
    "bad/random_4k.blend": "not a .blend file (bad magic)",
    "bad/text.blend": "not a .blend file (bad magic)",
    "bad/trunc1000_v402.blend": "truncated file: block 'GLOB'",
    "bad/trunc1000_v500.blend": "truncated file: block 'GLOB'",
    "bad/trunc1000_zstd.blend": "truncated file: no ENDB block",
    "bad/trunc_half_gzip.blend": "truncated gzip data",
    "bad/trunc_half_v500.blend": "truncated file: block 'DATA'",
    "bad/trunc_half_zstd.blend": "truncated file: no ENDB block",
    "bad/trunc_minus100_zstd.blend": "truncated file: block 'DNA1'",
    "bad/trunc_minus8_v500.blend": "truncated file: block header at offset 470174",
    "bad/zstd_of_text.blend": "zstd-compressed data is not a .blend file",
    "public/corrupt_only_magic.blend": "no DNA1 block",
}

HOSTILE_LIMITS = {"timeout": 5.0, "memory_limit": 256 * 1024**2}


def frames(scene: SceneRange) -> tuple[str, int, int, int]:
    """The scene's name and frame range, without its output settings."""
    return (scene.name, scene.frame_start, scene.frame_end, scene.frame_step)


def outputs(scene: SceneRange) -> tuple[object, ...]:
    """The scene's output settings and the size Blender writes."""
    return (
        scene.resolution_x,
        scene.resolution_y,
        scene.resolution_percentage,
        scene.file_format,
        scene.output_width,
        scene.output_height,
    )


def corpus_file(rel: str) -> Path:
    """Project fixtures must exist; the GPL public/ files are used when the corpus is here."""
    if not rel.startswith("public/"):
        return FIXTURES / rel
    path = CORPUS / rel
    if not path.is_file():
        message = f"{path} not available (set BLEND_CORPUS_DIR to the shared corpus)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


# --- crafting files ---------------------------------------------------------------------


def header_size(data: bytes) -> int:
    return 17 if data[7:9] == b"17" else 12


def bhead(data: bytes, code: bytes, length: int, old: int = 0, sdna: int = 0, nr: int = 1) -> bytes:
    """A block header in the layout of `data` (the fixtures are little-endian, 8-byte)."""
    if header_size(data) == 17:
        return struct.pack("<4siQqq", code, sdna, old, length, nr)
    return struct.pack("<4siQii", code, length, old, sdna, nr)


def with_block_first(data: bytes, block: bytes) -> bytes:
    size = header_size(data)
    return data[:size] + block + data[size:]


def field_offset(path: Path, code: bytes, field: tuple[bytes, ...], which: int = 0) -> int:
    """File offset of a field, found with plain BAT on a trusted fixture."""
    bfile = BlendFile(path)
    try:
        return bfile.code_index[code][which].abs_offset(field)[0]
    finally:
        bfile.close()


def block_header_offset(path: Path, code: bytes) -> int:
    bfile = BlendFile(path)
    try:
        block = bfile.code_index[code][0]
        return block.file_offset - bfile.block_header_struct.size
    finally:
        bfile.close()


def patched(tmp_path: Path, src: Path, offset: int, value: bytes) -> Path:
    data = bytearray(src.read_bytes())
    data[offset : offset + len(value)] = value
    out = tmp_path / f"patched_{src.name}"
    out.write_bytes(data)
    return out


def with_frames(tmp_path: Path, start: int, end: int, step: int) -> Path:
    src = FIXTURES / "blender-5.0" / "default_1_250.blend"
    data = bytearray(src.read_bytes())
    for name, value in ((b"sfra", start), (b"efra", end), (b"frame_step", step)):
        offset = field_offset(src, b"SC", (b"r", name))
        data[offset : offset + 4] = struct.pack("<i", value)
    out = tmp_path / "frames.blend"
    out.write_bytes(data)
    return out


def big_sparse_copy(tmp_path: Path, src: Path, dummy_bytes: int) -> Path:
    """A valid file with a huge unreferenced block first; a hole on disk, so it is quick."""
    data = src.read_bytes()
    size = header_size(data)
    out = tmp_path / f"big_{src.name}"
    with out.open("wb") as fh:
        fh.write(data[:size] + bhead(data, b"DATA", dummy_bytes, old=0xDEAD0000))
        fh.seek(dummy_bytes, os.SEEK_CUR)
        fh.write(data[size:])
    return out


# --- real files -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rel", "name", "start", "end", "step"), EXPECTED, ids=[e[0] for e in EXPECTED]
)
def test_corpus_file_gives_expected_scene(
    rel: str, name: str, start: int, end: int, step: int
) -> None:
    assert frames(parse_scene_range(corpus_file(rel))) == (name, start, end, step)


@pytest.mark.parametrize(
    "rel",
    [
        "blender-5.0/two_scenes_active_second.blend",
        "blender-5.0/two_scenes_active_second_zstd.blend",
        "blender-4.2/two_scenes_active_first.blend",
        "gzip/v500_two_scenes_active_second_gzip.blend",
        "blender-5.0/step_0.blend",
    ],
)
def test_read_in_child_matches_in_process_parse(rel: str) -> None:
    path = FIXTURES / rel
    assert read_scene_range(path) == parse_scene_range(path)


def test_active_scene_is_curscene_not_first_scene_block() -> None:
    assert parse_scene_range(V500).name == "ZZZ_active"
    assert field_offset(V500, b"SC", (b"id", b"name"), which=0) < field_offset(
        V500, b"SC", (b"id", b"name"), which=1
    )


def test_null_curscene_takes_first_scene(tmp_path: Path) -> None:
    offset = field_offset(V500, b"GLOB", (b"curscene",))
    path = patched(tmp_path, V500, offset, bytes(8))
    assert frames(parse_scene_range(path)) == ("AAA_first", 1, 10, 1)


def test_no_glob_block_takes_first_scene(tmp_path: Path) -> None:
    path = patched(tmp_path, V402, block_header_offset(V402, b"GLOB"), b"XXXX")
    assert parse_scene_range(path).name == "AAA_active"


def test_dangling_curscene_takes_first_scene_with_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    offset = field_offset(V500, b"GLOB", (b"curscene",))
    path = patched(tmp_path, V500, offset, struct.pack("<Q", 0x1234))
    with caplog.at_level(logging.WARNING, logger="supervisor.blendfile"):
        assert parse_scene_range(path).name == "AAA_first"
    assert "not a scene in the file" in caplog.text


def bytes_read_by_this_process() -> int:
    """What this process has read through read(2) and friends, page cache included."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_large_file_parses_without_reading_it(tmp_path: Path) -> None:
    path = big_sparse_copy(tmp_path, V500, 100 * 1024**2)
    before = bytes_read_by_this_process()
    assert frames(parse_scene_range(path)) == ("ZZZ_active", 100, 200, 2)
    # The header, the block headers and the blocks it needs: a few MB at most of the 100.
    assert bytes_read_by_this_process() - before < 8 * 1024**2
    assert read_scene_range(path).name == "ZZZ_active"


def test_many_small_blocks(tmp_path: Path) -> None:
    data = V402.read_bytes()
    filler = b"".join(bhead(data, b"DATA", 8, old=0x10000 + i) + bytes(8) for i in range(20_000))
    path = tmp_path / "many.blend"
    path.write_bytes(with_block_first(data, filler))
    assert parse_scene_range(path).name == "AAA_active"


# --- frame values -----------------------------------------------------------------------


def test_negative_start_is_legal(tmp_path: Path) -> None:
    assert frames(parse_scene_range(with_frames(tmp_path, -5, 10, 1))) == ("Scene", -5, 10, 1)


def test_end_before_start_is_an_empty_range(tmp_path: Path) -> None:
    with pytest.raises(BlendFileError, match="scene frame range is empty"):
        parse_scene_range(with_frames(tmp_path, 100, 50, 1))


@pytest.mark.parametrize(
    ("start", "end", "step", "label"),
    [
        (1, 250, -1, "frame_step"),
        (1, 2_000_000, 1, "frame_end"),
        (-2_000_000, 10, 1, "frame_start"),
        (1, 250, 1_048_575, "frame_step"),
    ],
)
def test_implausible_values_are_rejected(
    tmp_path: Path, start: int, end: int, step: int, label: str
) -> None:
    with pytest.raises(BlendFileError, match=f"implausible {label}"):
        parse_scene_range(with_frames(tmp_path, start, end, step))


def test_frame_numbers_step_0_is_only_the_start_frame() -> None:
    scene = SceneRange("S", 1, 250, 0)
    assert list(scene.frame_numbers()) == [1]
    assert scene.frame_count == 1


def test_frame_numbers_step_3() -> None:
    scene = SceneRange("S", 1, 100, 3)
    frames = scene.frame_numbers()
    assert frames[0] == 1
    assert frames[1] == 4
    assert frames[-1] == 100
    assert scene.frame_count == 34


def test_frame_numbers_step_that_overshoots_the_end() -> None:
    assert list(SceneRange("S", 7, 77, 7).frame_numbers())[-1] == 77
    assert list(SceneRange("S", 100, 200, 3).frame_numbers())[-1] == 199


def test_frame_numbers_negative_start() -> None:
    scene = SceneRange("S", -2, 2, 1)
    assert list(scene.frame_numbers()) == [-2, -1, 0, 1, 2]
    assert scene.frame_count == 5


def test_frame_numbers_single_and_inverted() -> None:
    assert list(SceneRange("S", 5, 5, 1).frame_numbers()) == [5]
    assert SceneRange("S", 10, 5, 1).frame_count == 0
    assert SceneRange("S", 10, 5, 0).frame_count == 0


def test_frame_numbers_always_has_a_positive_step() -> None:
    assert SceneRange("S", 3, 9, 0).frame_numbers().step == 1


def test_negative_step_is_not_a_scene_range() -> None:
    with pytest.raises(ValueError, match="frame_step"):
        SceneRange("S", 1, 10, -1)


def test_corpus_step_files_frame_counts() -> None:
    assert parse_scene_range(FIXTURES / "blender-5.0" / "step_0.blend").frame_count == 1
    assert parse_scene_range(FIXTURES / "blender-5.0" / "step_3_1_100.blend").frame_count == 34
    assert parse_scene_range(FIXTURES / "blender-5.0" / "range_1_max.blend").frame_count == 1048574


# --- output settings --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rel", "width", "height", "percentage", "file_format", "out_width", "out_height"),
    OUTPUTS,
    ids=[o[0] for o in OUTPUTS],
)
def test_corpus_file_gives_its_output_settings(
    rel: str,
    width: int,
    height: int,
    percentage: int,
    file_format: str,
    out_width: int,
    out_height: int,
) -> None:
    scene = parse_scene_range(corpus_file(rel))
    assert outputs(scene) == (width, height, percentage, file_format, out_width, out_height)


def test_output_size_follows_blenders_integer_rule() -> None:
    scene = SceneRange("S", 1, 1, 1, 1921, 1081, 33, "PNG")
    # (1921 * 33) / 100 = 633.93 and (1081 * 33) / 100 = 356.73: C int division truncates.
    assert (scene.output_width, scene.output_height) == (633, 356)
    assert SceneRange("S", 1, 1, 1, 640, 360, 250, "PNG").output_width == 1600


def test_output_size_is_unknown_when_a_part_is() -> None:
    assert SceneRange("S", 1, 250, 1).output_width is None
    assert SceneRange("S", 1, 250, 1, 1920, None, 100, "PNG").output_height is None
    assert SceneRange("S", 1, 250, 1, 1920, 1080, None, "PNG").output_width is None


def test_a_scene_range_built_from_the_frames_alone_knows_no_output() -> None:
    scene = SceneRange("S", 1, 250, 1)
    assert outputs(scene) == (None, None, None, None, None, None)


def test_patched_output_reads_in_process_and_in_the_child(tmp_path: Path) -> None:
    path = blend_with_output(
        V500, tmp_path / "out.blend", width=640, height=360, percentage=50, file_format="JPEG"
    )
    scene = parse_scene_range(path)
    assert outputs(scene) == (640, 360, 50, "JPEG", 320, 180)
    assert frames(scene) == ("ZZZ_active", 100, 200, 2)
    assert read_scene_range(path) == scene


@pytest.mark.parametrize("src", [V500, V402, DEFAULT_V500], ids=["v500", "v402", "default"])
@pytest.mark.parametrize("file_format", sorted(reader.FILE_FORMATS.values()))
def test_every_known_format_round_trips(tmp_path: Path, src: Path, file_format: str) -> None:
    path = blend_with_output(
        src, tmp_path / "fmt.blend", width=160, height=90, file_format=file_format
    )
    assert outputs(parse_scene_range(path)) == (160, 90, 100, file_format, 160, 90)


def test_small_png_for_render_tests(tmp_path: Path) -> None:
    frames_only = blend_with_range(DEFAULT_V500, tmp_path / "frames.blend", 1, 3)
    path = blend_with_output(frames_only, tmp_path / "small.blend", width=160, height=90)
    scene = read_scene_range(path)
    assert frames(scene) == ("Scene", 1, 3, 1)
    assert outputs(scene) == (160, 90, 100, "PNG", 160, 90)


@pytest.mark.parametrize("imtype", [7, 29, 37, 200, 255])
def test_unknown_imtype_gives_no_format_and_keeps_the_range(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, imtype: int
) -> None:
    path = blend_with_output(
        V500, tmp_path / "odd.blend", width=1280, height=720, file_format=imtype
    )
    with caplog.at_level(logging.DEBUG, logger="supervisor.blendfile"):
        scene = parse_scene_range(path)
    assert outputs(scene) == (1280, 720, 100, None, 1280, 720)
    assert frames(scene) == ("ZZZ_active", 100, 200, 2)
    assert f"unknown output imtype {imtype}" in caplog.text
    assert read_scene_range(path) == scene


@pytest.mark.parametrize(
    ("width", "height", "percentage", "expected"),
    [
        (0, 1080, 100, (None, 1080, 100, "PNG", None, 1080)),
        (-1920, 70_000, 100, (None, None, 100, "PNG", None, None)),
        (1920, 1080, 0, (1920, 1080, None, "PNG", None, None)),
        (1920, 1080, -50, (1920, 1080, None, "PNG", None, None)),
        (65_536, 4, 32_767, (65_536, 4, 32_767, "PNG", 21_474_181, 1310)),
    ],
)
def test_implausible_output_values_are_unknown(
    tmp_path: Path, width: int, height: int, percentage: int, expected: tuple[object, ...]
) -> None:
    path = blend_with_output(
        V402, tmp_path / "odd.blend", width=width, height=height, percentage=percentage
    )
    scene = parse_scene_range(path)
    assert outputs(scene) == expected
    assert frames(scene) == ("AAA_active", 7, 77, 7)
    assert read_scene_range(path) == scene


@pytest.mark.parametrize(
    ("name", "missing"),
    [
        (b"xsch", "resolution_x"),
        (b"size", "resolution_percentage"),
        (b"imtype", "file_format"),
        (b"im_format", "file_format"),
    ],
)
def test_output_field_missing_from_the_dna_is_unknown(
    tmp_path: Path, name: bytes, missing: str
) -> None:
    # Renamed in the DNA's name table, as a file from a Blender without the field has it.
    renamed = name[:-1] + b"X"
    path = dna_patched(tmp_path, b"\x00" + name + b"\x00", b"\x00" + renamed + b"\x00")
    scene = parse_scene_range(path)
    assert getattr(scene, missing) is None
    assert frames(scene) == ("ZZZ_active", 100, 200, 2)
    known = {"resolution_x", "resolution_y", "resolution_percentage", "file_format"} - {missing}
    assert all(getattr(scene, field) is not None for field in known)
    assert read_scene_range(path) == scene


def with_changed_render_field(
    monkeypatch: pytest.MonkeyPatch, struct_name: bytes, field_name: bytes, change: object
) -> None:
    """Make the DNA BAT decodes declare one field differently (type or name)."""
    real = reader._IndexedBlendFile.decode_structs

    def decode_structs(self: reader._IndexedBlendFile, block: object) -> None:
        real(self, block)
        struct = next(s for s in self.structs if s.dna_type_id == struct_name)
        field = next(f for f in struct.fields if f.name.name_only == field_name)
        change(field)

    monkeypatch.setattr(reader._IndexedBlendFile, "decode_structs", decode_structs)


def test_output_field_of_another_type_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    def as_float(field: bat_dna.Field) -> None:
        field.dna_type = bat_dna.Struct(b"float", 4)

    with_changed_render_field(monkeypatch, b"RenderData", b"xsch", as_float)
    scene = parse_scene_range(V500)
    assert (scene.resolution_x, scene.resolution_y, scene.output_width) == (None, 1080, None)
    assert frames(scene) == ("ZZZ_active", 100, 200, 2)


def test_output_struct_behind_a_pointer_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    def as_pointer(field: bat_dna.Field) -> None:
        field.name = bat_dna.Name(b"*im_format")

    with_changed_render_field(monkeypatch, b"RenderData", b"im_format", as_pointer)
    scene = parse_scene_range(V500)
    assert scene.file_format is None
    assert scene.output_width == 1920


def test_output_field_outside_the_scene_block_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    def far_away(field: bat_dna.Field) -> None:
        field.offset = 1 << 20

    with_changed_render_field(monkeypatch, b"RenderData", b"ysch", far_away)
    scene = parse_scene_range(V500)
    assert (scene.resolution_x, scene.resolution_y) == (1920, None)
    assert frames(scene) == ("ZZZ_active", 100, 200, 2)


def test_blend_with_output_refuses_compressed_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="compressed"):
        blend_with_output(
            FIXTURES / "blender-5.0" / "range_10_20_zstd.blend",
            tmp_path / "z.blend",
            width=160,
            height=90,
        )


# --- bad and hostile files --------------------------------------------------------------


def test_bad_table_covers_every_bad_fixture() -> None:
    on_disk = {f"bad/{p.name}" for p in (FIXTURES / "bad").iterdir()}
    assert on_disk == {rel for rel in BAD if rel.startswith("bad/")}


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("rel", "message"), sorted(BAD.items()))
def test_bad_file_fails_fast_with_one_clear_error(rel: str, message: str) -> None:
    path = corpus_file(rel)
    # The message is the check's own, so the child's timeout or memory limit did not end it;
    # a check that hangs instead meets the test's timeout.
    with pytest.raises(BlendFileError) as in_child:
        read_scene_range(path, **HOSTILE_LIMITS)
    assert str(in_child.value).startswith(message)
    # The checks, not only the child's limits, catch it: the same error in-process.
    with pytest.raises(BlendFileError) as in_process:
        parse_scene_range(path)
    assert str(in_process.value) == str(in_child.value)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("src", [V500, V402], ids=["v500", "v402"])
def test_negative_block_length(tmp_path: Path, src: Path) -> None:
    # Minus its own header size: plain BAT seeks back to the same header forever.
    data = src.read_bytes()
    length = -len(bhead(data, b"DATA", 0))
    path = tmp_path / "negative.blend"
    path.write_bytes(with_block_first(data, bhead(data, b"DATA", length)))
    with pytest.raises(
        BlendFileError, match=rf"block 'DATA' at offset \d+ has negative length {length}"
    ):
        read_scene_range(path, **HOSTILE_LIMITS)
    with pytest.raises(BlendFileError, match="negative length"):
        parse_scene_range(path)


def test_block_longer_than_the_file(tmp_path: Path) -> None:
    data = V500.read_bytes()
    path = tmp_path / "long.blend"
    path.write_bytes(with_block_first(data, bhead(data, b"DATA", 1 << 40)))
    with pytest.raises(BlendFileError, match=r"claims 1099511627776 bytes, only \d+ remain"):
        read_scene_range(path, **HOSTILE_LIMITS)


def dna_patched(tmp_path: Path, old: bytes, new: bytes) -> Path:
    data = bytearray(V500.read_bytes())
    at = data.index(old, data.rindex(b"SDNANAME"))
    data[at : at + len(old)] = new
    path = tmp_path / "dna.blend"
    path.write_bytes(data)
    return path


@pytest.mark.timeout(30)
def test_dna_name_with_open_bracket_only(tmp_path: Path) -> None:
    # Plain BAT loops forever on this name (and grows an int without bound).
    path = dna_patched(tmp_path, b"[64]\x00", b"[644\x00")
    with pytest.raises(
        BlendFileError, match=r"corrupt DNA1 block: malformed field name b'.*\[644'"
    ):
        read_scene_range(path, **HOSTILE_LIMITS)
    with pytest.raises(BlendFileError, match="malformed field name"):
        parse_scene_range(path)


def test_dna_huge_name_count(tmp_path: Path) -> None:
    data = V500.read_bytes()
    at = data.rindex(b"SDNANAME") + 8
    count = struct.unpack_from("<I", data, at)[0]
    path = dna_patched(
        tmp_path, b"SDNANAME" + struct.pack("<I", count), b"SDNANAME\xff\xff\xff\x7f"
    )
    with pytest.raises(BlendFileError, match="implausible NAME count 2147483647"):
        parse_scene_range(path)


def test_file_without_scene(tmp_path: Path) -> None:
    data = FIXTURES.joinpath("blender-5.0", "default_1_250.blend").read_bytes()
    header = block_header_offset(FIXTURES / "blender-5.0" / "default_1_250.blend", b"SC")
    path = tmp_path / "noscene.blend"
    path.write_bytes(data[:header] + b"XX" + data[header + 2 :])
    with pytest.raises(BlendFileError, match="no scene in file"):
        parse_scene_range(path)


def compressed_bomb(tmp_path: Path, kind: str, payload_head: bytes, size: int) -> Path:
    path = tmp_path / f"bomb_{kind}.blend"
    zeros = bytes(1024**2)
    if kind == "gzip":
        with gzip.GzipFile(path, "wb", compresslevel=1) as out:
            out.write(payload_head)
            for _ in range(size // len(zeros)):
                out.write(zeros)
    else:
        with path.open("wb") as raw, zstandard.ZstdCompressor().stream_writer(raw) as out:
            out.write(payload_head)
            for _ in range(size // len(zeros)):
                out.write(zeros)
    return path


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_decompression_bomb_is_capped(tmp_path: Path, kind: str) -> None:
    path = compressed_bomb(tmp_path, kind, b"BLENDER17-01v0500", 32 * 1024**2)
    assert path.stat().st_size < 200 * 1024
    with pytest.raises(BlendFileError, match=f"{kind}-compressed file expands to more than"):
        read_scene_range(path, max_uncompressed_bytes=4 * 1024**2, **HOSTILE_LIMITS)


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_compressed_non_blend_stops_at_the_first_chunk(tmp_path: Path, kind: str) -> None:
    path = compressed_bomb(tmp_path, kind, b"", 32 * 1024**2)
    with pytest.raises(BlendFileError, match=f"{kind}-compressed data is not a .blend file"):
        parse_scene_range(path)


def test_decompressed_copies_leave_no_temporary_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    parse_scene_range(FIXTURES / "blender-5.0" / "range_10_20_zstd.blend")
    with pytest.raises(BlendFileError):
        parse_scene_range(FIXTURES / "bad" / "trunc_half_gzip.blend")
    assert list(scratch.iterdir()) == []


def test_missing_file_directory_and_fifo(tmp_path: Path) -> None:
    with pytest.raises(BlendFileError, match="cannot open file"):
        parse_scene_range(tmp_path / "nope.blend")
    with pytest.raises(BlendFileError, match="not a regular file"):
        parse_scene_range(tmp_path)
    fifo = tmp_path / "fifo.blend"
    os.mkfifo(fifo)
    with pytest.raises(BlendFileError, match="not a regular file"):
        read_scene_range(fifo, timeout=5)


def test_unexpected_bat_errors_become_blend_file_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: object, block: object) -> None:
        raise struct.error("unpack requires a buffer of 4 bytes")

    monkeypatch.setattr(reader._IndexedBlendFile, "decode_structs", broken)
    with pytest.raises(BlendFileError, match=r"unreadable \.blend file \(error: unpack"):
        parse_scene_range(V500)


@pytest.mark.timeout(60)
def test_mutated_files_only_raise_blend_file_error(tmp_path: Path) -> None:
    rng = random.Random(20240611)
    sources = [V500.read_bytes(), V402.read_bytes()]
    path = tmp_path / "mutant.blend"
    outcomes = set()
    for _ in range(40):
        data = bytearray(rng.choice(sources))
        dna = data.rindex(b"SDNANAME")
        for _ in range(rng.randint(1, 6)):
            at = (
                rng.randrange(dna - 64, len(data))
                if rng.random() < 0.7
                else rng.randrange(len(data))
            )
            data[at] = rng.choice([0, 0xFF, ord("["), ord("]"), rng.randrange(256)])
        path.write_bytes(data)
        try:
            parse_scene_range(path)
            outcomes.add("ok")
        except BlendFileError:
            outcomes.add("error")
    assert "error" in outcomes


# --- the child process ------------------------------------------------------------------

# A parser child whose parse misbehaves as FAULTS[name] says; the rest is the real child.
FAULT_CHILD = """
import json, os, signal, subprocess, sys, time
from supervisor.blendfile import child
from supervisor.blendfile.reader import SceneRange, parse_scene_range

def hang(*args, **kwargs):
    time.sleep(60)

def hog(*args, **kwargs):
    blob = bytearray(512 * 1024**2)
    return SceneRange("hog", len(blob), len(blob), 1)

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

def boom(*args, **kwargs):
    raise RuntimeError("bug")

def environment(*args, **kwargs):
    from supervisor.errors import BlendFileError
    raise BlendFileError(",".join(sorted(os.environ)))

def chatter(*args, **kwargs):
    sys.stdout.buffer.write(b"x" * 100_000)
    sys.stdout.buffer.flush()
    time.sleep(60)

def reply(*args, **kwargs):
    return SceneRange(**json.loads(sys.argv[2]))

def leave_stdout_open(then):
    # A process that outlives us with our stdout, as one forked by another thread would.
    def parse(*args, **kwargs):
        subprocess.Popen(["sleep", "3"])
        return then(*args, **kwargs)
    return parse

FAULTS = {
    "hang": hang, "hog": hog, "die": die, "boom": boom, "chatter": chatter,
    "environment": environment, "reply": reply,
    "linger": leave_stdout_open(parse_scene_range), "linger-die": leave_stdout_open(die),
}
child.parse_scene_range = FAULTS[sys.argv[1]]
os._exit(child.main())
"""


@pytest.fixture
def child_pids(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Pids of the children read_scene_range starts, spare ones included."""
    pids: list[int] = []
    real_start = isolation._start

    def recording_start(argv: tuple[str, ...]) -> subprocess.Popen[bytes]:
        child = real_start(argv)
        pids.append(child.pid)
        return child

    monkeypatch.setattr(isolation, "_start", recording_start)
    return pids


def faulty(monkeypatch: pytest.MonkeyPatch, fault: str, *args: str) -> None:
    """Make read_scene_range's children misbehave."""
    argv = [sys.executable, "-P", "-c", FAULT_CHILD, fault, *args]
    monkeypatch.setattr(isolation, "child_argv", lambda: argv)


def assert_reaped(pid: int) -> None:
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_timeout_kills_and_reaps_the_child(
    monkeypatch: pytest.MonkeyPatch, child_pids: list[int]
) -> None:
    faulty(monkeypatch, "hang")
    started = time.monotonic()
    with pytest.raises(BlendFileError, match=r"parsing timed out after 0\.5s"):
        read_scene_range(V500, timeout=0.5)
    assert time.monotonic() - started < 2
    assert_reaped(child_pids[0])


def test_memory_limit_is_enforced(monkeypatch: pytest.MonkeyPatch, child_pids: list[int]) -> None:
    faulty(monkeypatch, "hog")
    with pytest.raises(BlendFileError, match="parsing needs more than 67108864 bytes of memory"):
        read_scene_range(V500, memory_limit=64 * 1024**2)
    assert_reaped(child_pids[0])


def test_child_killed_by_a_signal(monkeypatch: pytest.MonkeyPatch, child_pids: list[int]) -> None:
    faulty(monkeypatch, "die")
    with pytest.raises(BlendFileError, match=r"parser process died \(SIGKILL\)"):
        read_scene_range(V500)
    assert_reaped(child_pids[0])


def test_unexpected_error_in_the_child(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    faulty(monkeypatch, "boom")
    with pytest.raises(BlendFileError, match=r"parser failed unexpectedly \(RuntimeError\)"):
        read_scene_range(V500)
    assert "blend parser child failed" in caplog.text
    assert "RuntimeError: bug" in caplog.text


def test_an_oversized_reply_is_refused(
    monkeypatch: pytest.MonkeyPatch, child_pids: list[int]
) -> None:
    faulty(monkeypatch, "chatter")
    started = time.monotonic()
    with pytest.raises(BlendFileError, match="parser process sent an oversized reply"):
        read_scene_range(V500, timeout=5)
    assert time.monotonic() - started < 2
    assert_reaped(child_pids[0])


@pytest.mark.parametrize("kwargs", [{"timeout": 0}, {"memory_limit": 0}])
def test_limits_must_be_positive(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        read_scene_range(V500, **kwargs)


def test_reply_does_not_wait_for_eof(monkeypatch: pytest.MonkeyPatch) -> None:
    faulty(monkeypatch, "linger")
    started = time.monotonic()
    assert read_scene_range(V500, timeout=5).name == "ZZZ_active"
    assert time.monotonic() - started < 2


def test_dead_child_is_noticed_without_eof(monkeypatch: pytest.MonkeyPatch) -> None:
    faulty(monkeypatch, "linger-die")
    started = time.monotonic()
    with pytest.raises(BlendFileError, match="parser process died"):
        read_scene_range(V500, timeout=5)
    assert time.monotonic() - started < 2


def test_child_warnings_reach_our_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    offset = field_offset(V500, b"GLOB", (b"curscene",))
    path = patched(tmp_path, V500, offset, struct.pack("<Q", 0x1234))
    with caplog.at_level(logging.WARNING, logger="supervisor.blendfile"):
        assert read_scene_range(path).name == "AAA_first"
    assert "not a scene in the file" in caplog.text


def test_a_spare_child_waits_for_the_next_file(child_pids: list[int]) -> None:
    read_scene_range(V500)
    started = len(child_pids)
    assert started >= 1  # the spare for the next read
    assert read_scene_range(V402).name == "AAA_active"
    assert len(child_pids) == started + 1  # the read took the spare and started another


def test_the_child_gets_none_of_our_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMIN_TOKEN", "secret")
    faulty(monkeypatch, "environment")
    with pytest.raises(BlendFileError) as seen:
        read_scene_range(V500)
    assert "PYTHONPATH" in str(seen.value).split(",")
    assert "ADMIN_TOKEN" not in str(seen.value)


def test_concurrent_reads_from_threads() -> None:
    files = [V500, V402, FIXTURES / "blender-5.0" / "range_10_20_zstd.blend"] * 4
    with ThreadPoolExecutor(max_workers=4) as pool:
        names = list(pool.map(lambda p: read_scene_range(p, timeout=10).name, files))
    assert names == ["ZZZ_active", "AAA_active", "Scene"] * 4


GOOD_OUTPUT = {
    "name": "S",
    "frame_start": 1,
    "frame_end": 3,
    "frame_step": 1,
    "resolution_x": 160,
    "resolution_y": 90,
    "resolution_percentage": 100,
    "file_format": "OPEN_EXR_MULTILAYER",
}


def test_the_childs_output_settings_cross_intact(monkeypatch: pytest.MonkeyPatch) -> None:
    faulty(monkeypatch, "reply", json.dumps(GOOD_OUTPUT))
    assert read_scene_range(V500) == SceneRange(**GOOD_OUTPUT)


def test_unknown_output_settings_cross_as_none(monkeypatch: pytest.MonkeyPatch) -> None:
    unknown = GOOD_OUTPUT | dict.fromkeys(
        ("resolution_x", "resolution_y", "resolution_percentage", "file_format")
    )
    faulty(monkeypatch, "reply", json.dumps(unknown))
    assert read_scene_range(V500) == SceneRange("S", 1, 3, 1)


@pytest.mark.parametrize(
    "bad",
    [
        {"resolution_x": True},
        {"resolution_x": 0},
        {"resolution_y": 65_537},
        {"resolution_y": "1080"},
        {"resolution_percentage": 1.5},
        {"resolution_percentage": 32_768},
        {"file_format": "GIF"},
        {"file_format": "PNG" * 300},
        {"file_format": 17},
        {"file_format": ["PNG"]},
    ],
    ids=lambda bad: json.dumps(bad)[:40],
)
def test_the_childs_output_settings_are_checked(
    monkeypatch: pytest.MonkeyPatch, bad: dict[str, object]
) -> None:
    faulty(monkeypatch, "reply", json.dumps(GOOD_OUTPUT | bad))
    with pytest.raises(BlendFileError, match=r"parser process gave no result \(exit code 0\)"):
        read_scene_range(V500)
