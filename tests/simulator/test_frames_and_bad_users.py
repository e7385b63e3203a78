"""Frames at the scene's output size and format, and bad users.

The simulator reads a .blend's output (resolution times percentage, file format) with BAT on
its own; its placeholder frames come at that size, cheaply even at 1080p; bad users upload
black, truncated, wrong-size or text "frames" for every frame, announced as PNGs."""

from __future__ import annotations

import heapq
import io
import itertools
import os
import random
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from PIL import Image

from simulator import Simulator, SimulatorConfig
from simulator import users as users_module
from simulator.__main__ import config_from, parse_args
from simulator.blobs import TEMP_BUCKET, BlobStore
from simulator.png import (
    SIGNATURE,
    adler32_combine,
    background,
    encode_rgb,
    frame_pixels,
    frame_png,
)
from simulator.profiles import assign_bad_users, assign_profiles
from simulator.render import BlendOutput, bad_frame, blend_output, render_frame
from simulator.users import UserPool
from tests.blendgen import blend_with_output
from tests.simulator.helpers import SEND

MakeSim = Callable[..., Simulator]
BLEND = Path(__file__).resolve().parents[1] / "fixtures" / "blend"
DEFAULT_50 = BLEND / "blender-5.0" / "default_1_250.blend"
ACTIVE_SECOND = BLEND / "blender-5.0" / "two_scenes_active_second.blend"
SESSION = "s-frames"
HASH = "hash-of-the-blend"
BAD = "black=1,truncated=1,wrong-resolution=1,text=1"
IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
SUN = (0xFF, 0xD2, 0x5A)


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def is_flat(image: Image.Image) -> bool:
    return all(low == high for low, high in image.getextrema())


def idat(data: bytes) -> bytes:
    """The IDAT data of one of our PNGs (one IDAT right after IHDR)."""
    assert data[:8] == SIGNATURE
    assert data[37:41] == b"IDAT"
    length = int.from_bytes(data[33:37], "big")
    return data[41 : 41 + length]


# ---------------------------------------------------------------- placeholder frames


@pytest.mark.parametrize(
    "size", [(1920, 1080), (1280, 720), (2048, 858), (160, 90), (19, 10), (3, 2), (1, 1)]
)
@pytest.mark.parametrize("frame", [1, 250, -7, 1_048_574])
def test_a_sized_frame_decodes_to_exactly_its_pixels(size: tuple[int, int], frame: int) -> None:
    width, height = size
    data = frame_png(frame, width, height)
    pixels = frame_pixels(frame, width, height)
    image = decoded(data)
    assert (image.size, image.mode) == (size, "RGB")
    assert image.tobytes() == pixels
    assert image.tobytes() == decoded(encode_rgb(width, height, pixels)).tobytes()
    # zlib checks the spliced stream's Adler-32, which Pillow does not.
    stride = 3 * width
    rows = (b"\x00" + pixels[y * stride : (y + 1) * stride] for y in range(height))
    assert zlib.decompress(idat(data)) == b"".join(rows)
    assert data.endswith(IEND)


def test_adler32_combine_agrees_with_zlib() -> None:
    rng = random.Random(3)
    for first_size, second_size in [(0, 0), (0, 9), (9, 0), (70_000, 5), (3, 200_000)]:
        first, second = rng.randbytes(first_size), rng.randbytes(second_size)
        combined = adler32_combine(zlib.adler32(first), zlib.adler32(second), len(second))
        assert combined == zlib.adler32(first + second)
    ones = b"\xff" * 300_000  # sums far past the modulus
    assert adler32_combine(zlib.adler32(ones), zlib.adler32(ones), len(ones)) == zlib.adler32(
        ones + ones
    )


def test_sized_frames_differ_from_frame_to_frame_and_none_is_flat() -> None:
    images = {frame: decoded(frame_png(frame, 1920, 1080)) for frame in range(1, 30)}
    assert len({image.tobytes() for image in images.values()}) == len(images)
    for frame, image in images.items():
        assert not is_flat(image)
        assert image.getpixel((0, 0)) == background(frame)
        assert len(image.getcolors(1 << 16) or ()) > 20  # sky, sun, digits, hills, ground
    # The sun moves: where its colour starts on the band's middle row.
    sun_starts = {
        next(x for x in range(1920) if image.getpixel((x, 1080 // 16)) == SUN)
        for image in images.values()
    }
    assert len(sun_starts) > 10


def test_the_small_frame_stays_as_it_was_and_sizes_are_checked() -> None:
    assert decoded(frame_png(7)).size == (160, 90)
    assert frame_png(7) != frame_png(7, 160, 90)
    with pytest.raises(ValueError, match="both"):
        frame_png(7, 1920)
    with pytest.raises(ValueError, match="pixels"):
        frame_png(7, 0, 10)
    with pytest.raises(ValueError, match="pixels"):
        frame_png(7, 100_000, 100_000)


def test_a_1080p_frame_costs_about_a_millisecond() -> None:
    """The intake benchmark pushes hundreds of frames a second through the simulator: a
    plain deflate of the whole frame takes about 8 ms. Best of several rounds, with room
    for a loaded machine (it takes 1.1 ms on an idle one)."""
    frame_png(0, 1920, 1080)  # the fixed part is deflated once per size
    rounds = []
    for start in range(0, 250, 50):
        began = time.perf_counter()
        for frame in range(start, start + 50):
            frame_png(frame, 1920, 1080)
        rounds.append((time.perf_counter() - began) / 50)
    assert min(rounds) < 0.003


# ---------------------------------------------------------------- the .blend's output


def test_a_corpus_file_renders_1080p_png() -> None:
    expected = BlendOutput(1920, 1080, "PNG")
    assert blend_output(DEFAULT_50) == expected
    assert blend_output(BLEND / "blender-5.0" / "default_1_250_zstd.blend") == expected
    assert blend_output(BLEND / "gzip" / "v402_range_10_20_gzip.blend") == expected


def test_the_active_scenes_resolution_and_percentage_are_read(tmp_path: Path) -> None:
    """The second scene is the active one; the first keeps 1920x1080."""
    patched = blend_with_output(
        ACTIVE_SECOND, tmp_path / "a.blend", width=1001, height=333, percentage=37
    )
    assert blend_output(patched) == BlendOutput(370, 123, "PNG")  # rounded down


def test_a_changed_file_is_read_again(tmp_path: Path) -> None:
    blend = blend_with_output(DEFAULT_50, tmp_path / "b.blend", width=640, height=480)
    assert blend_output(blend) == BlendOutput(640, 480, "PNG")
    stat = blend.stat()
    blend_with_output(DEFAULT_50, blend, width=320, height=200, file_format="JPEG")
    os.utime(blend, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert blend_output(blend) == BlendOutput(320, 200, "JPEG")


@pytest.mark.parametrize(
    "name", ["text.blend", "trunc_half_gzip.blend", "trunc_half_zstd.blend", "empty.blend"]
)
def test_an_unreadable_file_gives_the_small_placeholder(name: str) -> None:
    blend = BLEND / "bad" / name
    assert blend_output(blend) is None
    assert render_frame(blend, 5) == frame_png(5)


def test_no_file_gives_the_small_placeholder(tmp_path: Path) -> None:
    assert render_frame(None, 5) == frame_png(5)
    assert render_frame(tmp_path / "gone.blend", 5) == frame_png(5)


def test_placeholders_come_at_the_scenes_size_and_format(tmp_path: Path) -> None:
    png = blend_with_output(DEFAULT_50, tmp_path / "p.blend", width=1280, height=720, percentage=50)
    image = decoded(render_frame(png, 3))
    assert (image.format, image.size) == ("PNG", (640, 360))
    assert image.tobytes() == frame_pixels(3, 640, 360)

    jpeg = blend_with_output(
        DEFAULT_50, tmp_path / "j.blend", width=300, height=200, file_format="JPEG"
    )
    image = decoded(render_frame(jpeg, 3))
    assert (image.format, image.size) == ("JPEG", (300, 200))
    assert not is_flat(image)

    exr = blend_with_output(
        DEFAULT_50, tmp_path / "e.blend", width=300, height=200, file_format="OPEN_EXR"
    )
    assert blend_output(exr) == BlendOutput(300, 200, "OPEN_EXR")
    assert decoded(render_frame(exr, 3)).format == "PNG"  # the placeholder only makes these two


# ---------------------------------------------------------------- users on a virtual clock


class Farm:
    """A UserPool rendering with the real placeholder on a virtual clock, its blobs and every
    event it routes."""

    def __init__(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blend: Path | None, **knobs: Any
    ) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._count = itertools.count()
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        monkeypatch.setattr(users_module, "time", SimpleNamespace(monotonic=lambda: self.now))
        self.blobs = BlobStore(tmp_path / "blobs")
        self.pool = UserPool(
            SimulatorConfig(**{"frame_time": 1.0, "seed": 1, **knobs}),
            blobs=self.blobs,
            route=self._route,
            scheduler=self,  # type: ignore[arg-type]
            renderer=render_frame,
            blend_lookup=lambda _hash: blend,
        )

    def _route(self, _session: str | None, topic: str, data: dict[str, Any]) -> bool:
        self.events.append((self.now, topic, data))
        return True

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (self.now + max(0.0, delay), next(self._count), fn))

    def render(self, frames: list[int]) -> dict[str, str | None]:
        """Every user renders `frames`; return each user's bad kind."""
        for user in self.pool.take_idle(len(self.pool.idle()), SESSION):
            data = {"blend_file_hash": HASH, "frame_list": frames}
            assert self.pool.deliver(user, "start-rendering", data) is True
        while self._heap:
            self.now, _, fn = heapq.heappop(self._heap)
            fn()
        return {user: state["bad_kind"] for user, state in self.pool.snapshot().items()}

    def uploads(self, user: str) -> list[tuple[float, dict[str, Any], bytes]]:
        return [
            (when, data, self.blobs.read(TEMP_BUCKET, data["image-binary-path"]))
            for when, topic, data in self.events
            if topic == "user-frame-rendered" and data["user-id"] == user
        ]


def test_users_upload_frames_at_the_files_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blend = blend_with_output(DEFAULT_50, tmp_path / "u.blend", width=1920, height=1080)
    farm = Farm(tmp_path, monkeypatch, blend, users=2)
    for user in farm.render([1, 2, 3]):
        uploads = farm.uploads(user)
        assert [data["frame-number"] for _, data, _ in uploads] == [1, 2, 3]
        for _, data, image in uploads:
            assert data["image-extension"] == "png"
            assert data["image-binary-path"].endswith(".png")
            assert decoded(image).size == (1920, 1080)
            assert image == frame_png(data["frame-number"], 1920, 1080)


def test_users_announce_jpeg_frames_as_jpg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blend = blend_with_output(
        DEFAULT_50, tmp_path / "j.blend", width=320, height=180, file_format="JPEG"
    )
    farm = Farm(tmp_path, monkeypatch, blend, users=1)
    [user] = farm.render([4])
    [(_, data, image)] = farm.uploads(user)
    assert (data["image-extension"], data["image-binary-path"][-4:]) == ("jpg", ".jpg")
    assert decoded(image).format == "JPEG"


def test_each_kind_of_bad_user_uploads_its_bad_frame_on_the_usual_timing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blend = blend_with_output(
        DEFAULT_50, tmp_path / "bad.blend", width=1280, height=720, percentage=50
    )
    farm = Farm(tmp_path, monkeypatch, blend, users=5, bad_users=BAD)
    kinds = farm.render([10, 11, 12])
    assert sorted(map(str, kinds.values())) == sorted(
        ["None", "black", "truncated", "wrong-resolution", "text"]
    )
    timings = set()
    for user, kind in kinds.items():
        uploads = farm.uploads(user)
        assert [data["frame-number"] for _, data, _ in uploads] == [10, 11, 12]
        timings.add(tuple(when for when, _, _ in uploads))
        for _, data, image in uploads:
            frame = data["frame-number"]
            assert data["image-extension"] == "png"
            assert data["image-binary-path"].endswith(".png")
            if kind is None:
                assert image.endswith(IEND)
                assert decoded(image).size == (640, 360)
                assert not is_flat(decoded(image))
            elif kind == "black":
                assert image.endswith(IEND)
                assert decoded(image).size == (640, 360)
                assert decoded(image).getextrema() == ((0, 0), (0, 0), (0, 0))
            elif kind == "truncated":
                assert image[:8] == SIGNATURE
                assert image[12:16] == b"IHDR"
                assert struct.unpack(">II", image[16:24]) == (640, 360)
                assert not image.endswith(IEND)
                assert image == frame_png(frame, 640, 360)[: len(image)]
                assert len(image) == len(frame_png(frame, 640, 360)) // 2
                with pytest.raises(OSError, match="truncated"):
                    decoded(image)
            elif kind == "wrong-resolution":
                assert image.endswith(IEND)
                assert decoded(image).size == (320, 180)
                assert not is_flat(decoded(image))
            else:
                assert image == b"render failed: out of memory\n"
    assert len(timings) == 1  # bad users keep the farm's pace


def test_bad_frames_without_a_known_blend_take_the_small_placeholders_size() -> None:
    assert decoded(bad_frame("black", None, 3)).size == (160, 90)
    assert decoded(bad_frame("wrong-resolution", None, 3)).size == (80, 45)
    with pytest.raises(ValueError, match="kind"):
        bad_frame("purple", None, 3)


# ---------------------------------------------------------------- who is bad


def test_the_bad_users_are_drawn_from_the_seed_exactly_as_many_as_asked() -> None:
    ids = [f"u{i:02d}" for i in range(20)]
    config = SimulatorConfig(users=20, seed=5, bad_users="black=2, text=1,truncated=0")
    drawn = assign_bad_users(ids, config)
    assert assign_bad_users(ids, config) == drawn
    assert sorted(drawn.values()) == ["black", "black", "text"]

    def bad(seed: int) -> frozenset[str]:
        return frozenset(assign_bad_users(ids, SimulatorConfig(users=20, seed=seed, bad_users=BAD)))

    assert len({bad(seed) for seed in range(6)}) > 1  # the seed chooses them
    assert assign_bad_users(ids, SimulatorConfig(users=20, seed=5)) == {}


def test_bad_users_leave_every_other_seeded_draw_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    knobs = {
        "users": 8, "seed": 42, "disconnect_share": 0.3, "early_complete_share": 0.5,
        "slow_share": 0.3, "slow_factor": 2, "jitter": 0.3,
    }  # fmt: skip
    ids = [f"sim-user-{i:03d}" for i in range(1, 9)]
    assert assign_profiles(ids, SimulatorConfig(**knobs, bad_users=BAD)) == assign_profiles(
        ids, SimulatorConfig(**knobs)
    )

    def run(folder: str, **more: Any) -> tuple[dict[str, Any], list[tuple[float, str, Any]]]:
        farm = Farm(tmp_path / folder, monkeypatch, None, **knobs, **more)
        farm.render(list(range(1, 6)))
        plan = {u: {**s, "bad_kind": None} for u, s in farm.pool.snapshot().items()}
        events = [(when, topic, data.get("frame-number")) for when, topic, data in farm.events]
        return plan, events

    assert run("bad", bad_users=BAD) == run("plain")


def test_the_setting_is_checked_and_has_a_flag() -> None:
    assert SimulatorConfig(users=4, bad_users=BAD).bad_user_counts == {
        "black": 1, "truncated": 1, "wrong-resolution": 1, "text": 1,
    }  # fmt: skip
    assert SimulatorConfig().bad_user_counts == {}
    for wrong in ("grey=1", "black", "black=-1", "black=x", "black=1,black=1", "black=1;text=1"):
        with pytest.raises(ValueError, match="bad_users must be"):
            SimulatorConfig(users=4, bad_users=wrong)
    with pytest.raises(ValueError, match="names 4 users but there are 3"):
        SimulatorConfig(users=3, bad_users=BAD)
    assert config_from(parse_args(["--bad-users", BAD])).bad_users == BAD


def test_the_state_endpoint_shows_each_users_kind(make_sim: MakeSim, tmp_path: Path) -> None:
    blend = blend_with_output(DEFAULT_50, tmp_path / "s.blend", width=200, height=100)
    sim = make_sim(broker_url="memory://", users=3, seed=9, bad_users="text=1,black=1")
    sim.add_object("customer", "object", blend)
    found = sim.catalog_object("customer", "object")
    assert found is not None
    state = requests.get(sim.base_url + "/simulator/state", timeout=5).json()
    assert state["config"]["bad_users"] == "text=1,black=1"
    kinds = {user: s["bad_kind"] for user, s in state["users"].items()}
    assert sorted(map(str, kinds.values())) == ["None", "black", "text"]

    users = sim.users.take_idle(3, SESSION)
    for user in users:
        data = {"blend_file_hash": found["blendFileHash"], "frame_list": [1, 2]}
        body = {"user_id": user, "topic": "start-rendering", "data": data}
        assert requests.post(sim.base_url + SEND, json=body, timeout=5).status_code == 200
    sim.wait_until(lambda: len([k for k in sim.temp_keys() if k.endswith(".png")]) == 6)
    for key in sim.temp_keys():
        user = key.split("/")[2]
        image = sim.read_blob("temp", key)
        if kinds[user] == "text":
            assert image == b"render failed: out of memory\n"
        else:
            assert decoded(image).size == (200, 100)
            assert is_flat(decoded(image)) == (kinds[user] == "black")
