"""`--render real`: frames rendered by Blender's Workbench through `bpy`.

bpy is the optional `render` extra, so this module is skipped where it is not installed.
Like the simulator, the tests never import bpy themselves: it runs in the renderer's child.
"""

from __future__ import annotations

import importlib.util
import os
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from simulator import Simulator
from simulator.core import DEMO_CUSTOMER, DEMO_OBJECT
from simulator.png import SIGNATURE, frame_png
from simulator.render import BlenderRenderer, real_renderer, render_frame
from tests.blendgen import blend_with_output
from tests.simulator.helpers import Supervisor, Tap

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("bpy") is None, reason="the optional `render` extra is not installed"
)

BLEND = Path(__file__).resolve().parents[1] / "fixtures" / "blend"
DEFAULT_42 = BLEND / "blender-4.2" / "default_1_250.blend"
NO_CAMERA_42 = BLEND / "blender-4.2" / "two_scenes_active_second.blend"
RANGE_50 = BLEND / "blender-5.0" / "range_10_20.blend"
# Frames come at the file's resolution times its percentage: small.blend's 128x72 at 50 %.
SMALL = (64, 36)
ANIMATE = """
import sys
import bpy
bpy.ops.wm.open_mainfile(filepath=sys.argv[1], load_ui=False, use_scripts=False)
cube = bpy.data.objects["Cube"]
for frame, x in ((1, -3.0), (20, 3.0)):
    cube.location.x = x
    cube.keyframe_insert(data_path="location", index=0, frame=frame)
bpy.ops.wm.save_as_mainfile(filepath=sys.argv[2], copy=True)
"""


def png_parts(data: bytes) -> tuple[tuple[int, int], bytes, list[bytes]]:
    """(width, height), the inflated image data and the chunk types of a PNG, CRCs checked."""
    assert data[:8] == SIGNATURE
    kinds, idat, offset, size = [], b"", 8, (0, 0)
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind, body = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        kinds.append(kind)
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        offset += 12 + length
    assert kinds[0] == b"IHDR"
    assert kinds[-1] == b"IEND"
    return size, zlib.decompress(idat), kinds


@pytest.fixture
def renderer() -> BlenderRenderer:
    try:
        return real_renderer()
    except ImportError as exc:
        pytest.skip(f"bpy is installed but does not load here: {exc}")


@pytest.fixture
def small(tmp_path: Path) -> Path:
    """The 4.2 default scene with a 128x72 output at 50 %, so frames render quickly."""
    return blend_with_output(
        DEFAULT_42, tmp_path / "small.blend", width=128, height=72, percentage=50
    )


@pytest.fixture
def animated(tmp_path: Path, small: Path) -> Path:
    """The default cube moving from x=-3 at frame 1 to x=3 at frame 20, saved by Blender."""
    target = tmp_path / "animated.blend"
    subprocess.run(
        [sys.executable, "-c", ANIMATE, str(small), str(target)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return target


def test_one_renderer_per_process(renderer: BlenderRenderer) -> None:
    assert real_renderer() is renderer


def test_a_frame_is_a_workbench_png_of_the_files_size(
    renderer: BlenderRenderer, small: Path
) -> None:
    image = renderer(small, 1)
    size, pixels, kinds = png_parts(image)
    assert size == SMALL
    assert b"tEXt" not in kinds
    assert image != frame_png(1)
    assert len(set(pixels)) > 10


def test_frames_follow_the_animation(renderer: BlenderRenderer, animated: Path) -> None:
    first, last = renderer(animated, 1), renderer(animated, 20)
    assert png_parts(first)[1] != png_parts(last)[1]
    assert renderer(animated, 1) == first


def test_a_still_scene_gives_the_same_image_every_frame(
    renderer: BlenderRenderer, small: Path
) -> None:
    assert renderer(small, 3) == renderer(small, 200)


def test_the_open_file_is_reused_until_it_changes(
    renderer: BlenderRenderer, tmp_path: Path, small: Path
) -> None:
    blend = tmp_path / "scene.blend"
    blend.write_bytes(small.read_bytes())
    renderer(blend, 1)
    opened = renderer.files_opened
    renderer(blend, 2)
    assert renderer.files_opened == opened
    stat = blend.stat()
    os.utime(blend, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    renderer(blend, 3)
    assert renderer.files_opened == opened + 1


def test_a_lost_render_process_is_started_again(renderer: BlenderRenderer, small: Path) -> None:
    renderer.close()
    assert png_parts(renderer(small, 5))[0] == SMALL


def test_renders_from_the_scheduler_threads(renderer: BlenderRenderer, small: Path) -> None:
    images: list[bytes] = []
    workers = [
        threading.Thread(target=lambda f=f: images.append(renderer(small, f))) for f in range(1, 9)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert len(images) == 8
    assert len(set(images)) == 1


@pytest.mark.parametrize(
    "blend",
    [NO_CAMERA_42, BLEND / "bad" / "text.blend", BLEND / "bad" / "trunc_half_v500.blend"],
    ids=["no-camera", "not-a-blend", "truncated"],
)
def test_a_file_blender_cannot_render_gives_placeholders(
    renderer: BlenderRenderer, blend: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert renderer(blend, 7) == render_frame(blend, 7)
    assert renderer(blend, 8) == render_frame(blend, 8)
    assert sum("cannot render" in r.getMessage() for r in caplog.records) == 1


def test_without_a_blend_or_file_the_frame_is_a_placeholder(
    renderer: BlenderRenderer, tmp_path: Path
) -> None:
    assert renderer(None, 4) == frame_png(4)
    assert renderer(tmp_path / "gone.blend", 4) == frame_png(4)


def test_blender_5_files_render_where_bpy_reads_them(renderer: BlenderRenderer) -> None:
    """The demo's default blend is a 5.0 file: bpy 4.x answers it with placeholders."""
    image = renderer(RANGE_50, 12)
    if renderer.version >= (5, 0):
        assert png_parts(image)[0] == (1920, 1080)
    else:
        assert image == render_frame(RANGE_50, 12)


@pytest.mark.rabbitmq
def test_simulated_users_store_blender_frames(
    rabbit_sim: Callable[..., Simulator],
    supervisor_for: Callable[[Simulator], Supervisor],
    tap: Tap,
    small: Path,
) -> None:
    sim = rabbit_sim(render="real", demo_blend=str(small), peer_mode="ideal")
    demo = sim.catalog.lookup(DEMO_CUSTOMER, DEMO_OBJECT)
    assert demo is not None
    sv = supervisor_for(sim)
    [user] = sv.get_users(tap, 1)
    frames = {"blend_file_hash": demo.blend_hash, "frame_list": [1, 2]}
    assert sv.send(user, "start-rendering", frames).status_code == 200
    messages = tap.until("user-rendering-completed", timeout=60)
    keys = [m.body["data"]["image-binary-path"] for m in messages[:-1]]
    assert len(keys) == 2
    for key in keys:
        image = requests.get(
            f"{sim.base_url}/api/blob-service/retrieve-temp", params={"key": key}, timeout=5
        ).content
        assert png_parts(image)[0] == SMALL
