"""The Blob Service's retrieve-image, as the real one answers it: the final frames read back."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import requests

from simulator import Simulator
from simulator.blobs import FRAMES_BUCKET, TEMP_BUCKET
from simulator.png import frame_png

MakeSim = Callable[..., Simulator]
RETRIEVE_IMAGE = "/api/blob-service/retrieve-image"


@pytest.fixture
def sim(make_sim: MakeSim) -> Simulator:
    return make_sim(broker_url="memory://", journal=True)


def get(sim: Simulator, **params: str) -> requests.Response:
    return requests.get(sim.base_url + RETRIEVE_IMAGE, params=params, timeout=5)


def test_a_stored_frame_is_read_back_with_or_without_its_extension(sim: Simulator) -> None:
    image = frame_png(7)
    stored = requests.post(
        f"{sim.base_url}/api/blob-service/store-image",
        data={"bucket": FRAMES_BUCKET, "key": "cust/obj/007.png", "type": "png"},
        files={"image": ("007.png", image, "image/png")},
        timeout=5,
    )
    assert stored.status_code == 200

    for key in ("cust/obj/007", "cust/obj/007.png"):
        got = get(sim, bucket=FRAMES_BUCKET, key=key)
        assert (got.status_code, got.headers["Content-Type"], got.content) == (
            200,
            "image/png",
            image,
        )
        assert got.headers["Content-Length"] == str(len(image))
    explicit = get(sim, bucket=FRAMES_BUCKET, key="cust/obj/007", type="png")
    assert explicit.content == image


def test_the_type_is_appended_unless_the_key_ends_with_it(sim: Simulator) -> None:
    sim.write_blob(FRAMES_BUCKET, "c/o/001.jpg", b"jpeg-bytes")
    sim.write_blob(FRAMES_BUCKET, "c/o/002.png.jpg", b"doubled")

    jpg = get(sim, bucket=FRAMES_BUCKET, key="c/o/001", type="jpg")
    assert (jpg.status_code, jpg.headers["Content-Type"], jpg.content) == (
        200,
        "image/jpg",  # the real service's `image/<type>`, not image/jpeg
        b"jpeg-bytes",
    )
    assert get(sim, bucket=FRAMES_BUCKET, key="c/o/002.png", type="jpg").content == b"doubled"
    # The default type is png: a .jpg key is looked up as c/o/001.jpg.png.
    assert get(sim, bucket=FRAMES_BUCKET, key="c/o/001.jpg").status_code == 404


@pytest.mark.parametrize(
    "params",
    [
        {"bucket": FRAMES_BUCKET, "key": "c/o/404"},
        {"bucket": "no-such-bucket", "key": "c/o/001"},
        {"bucket": FRAMES_BUCKET, "key": "../x"},
        {"bucket": FRAMES_BUCKET, "key": "c/o/001", "type": "png\r\nX-Evil: 1"},
    ],
)
def test_anything_not_found_is_404_with_an_error(sim: Simulator, params: dict[str, str]) -> None:
    sim.write_blob(FRAMES_BUCKET, "c/o/001.png", b"png")
    missing = get(sim, **params)
    assert missing.status_code == 404
    assert missing.headers["Content-Type"] == "application/json"
    assert set(missing.json()) == {"error"}
    assert isinstance(missing.json()["error"], str)


def test_other_buckets_are_read_as_the_real_service_does(sim: Simulator) -> None:
    sim.write_blob(TEMP_BUCKET, "temp/s/u/3-ab.png", b"temp-png")
    got = get(sim, bucket=TEMP_BUCKET, key="temp/s/u/3-ab")
    assert (got.status_code, got.content) == (200, b"temp-png")


def test_missing_parameters_are_fastapis_422(sim: Simulator) -> None:
    answer = get(sim, key="c/o/001")
    assert answer.status_code == 422
    assert [d["loc"] for d in answer.json()["detail"]] == [["query", "bucket"]]


def test_requests_are_journalled_and_faults_apply(sim: Simulator) -> None:
    sim.write_blob(FRAMES_BUCKET, "c/o/001.png", b"png")
    get(sim, bucket=FRAMES_BUCKET, key="c/o/001")
    [call] = sim.requests("/retrieve-image")
    assert (call.method, call.query) == ("GET", {"bucket": [FRAMES_BUCKET], "key": ["c/o/001"]})

    sim.fail_next("/retrieve-image", 503)
    assert get(sim, bucket=FRAMES_BUCKET, key="c/o/001").status_code == 503
    assert get(sim, bucket=FRAMES_BUCKET, key="c/o/001").status_code == 200


def test_a_large_frame_is_streamed_whole(sim: Simulator) -> None:
    blob = bytes(range(256)) * (12 * 4096)  # 12 MiB
    sim.write_blob(FRAMES_BUCKET, "c/o/010.png", blob)
    with requests.get(
        sim.base_url + RETRIEVE_IMAGE,
        params={"bucket": FRAMES_BUCKET, "key": "c/o/010"},
        stream=True,
        timeout=10,
    ) as got:
        assert got.headers["Content-Length"] == str(len(blob))
        assert b"".join(got.iter_content(1024 * 1024)) == blob
