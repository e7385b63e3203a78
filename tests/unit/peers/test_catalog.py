"""The catalog (MongoDB service) client."""

from __future__ import annotations

from typing import Any

import pytest

from supervisor.errors import InvalidInput, ObjectNotRenderable, PeerError
from supervisor.peers import BlendFileRef, Peers
from tests.unit.peers.server import ADD_IMAGE, BLEND_NAME, PeerServer, Reply, json_reply


def test_get_blend_file_sends_exact_request(server: PeerServer, peers: Peers) -> None:
    object_id, customer_id = "obj 1+é", "cust&1=é"
    blend_path = f"{customer_id}/{object_id}/scene.blend"
    expected_path = BLEND_NAME + "obj%201%2B%C3%A9"
    server.route(
        "GET", expected_path, json_reply({"blendFilePath": blend_path, "blendFileHash": "h1"})
    )

    ref = peers.catalog.get_blend_file(object_id, customer_id)

    assert ref == BlendFileRef(path=blend_path, hash="h1")
    (seen,) = server.seen
    assert seen.path == expected_path
    assert seen.query == "customer_id=cust%261%3D%C3%A9"
    assert seen.params == {"customer_id": [customer_id]}


@pytest.mark.parametrize("status", [404, 400, 403, 410, 302])
def test_catalog_refusal_means_not_renderable(
    server: PeerServer, peers: Peers, status: int
) -> None:
    server.route("GET", BLEND_NAME + "obj", json_reply({"message": "Object not found"}, status))
    with pytest.raises(ObjectNotRenderable, match="obj"):
        peers.catalog.get_blend_file("obj", "cust")
    assert len(server.seen) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"blendFilePath": "cust/scene.blend", "blendFileHash": "h"},
        {"blendFilePath": "cust/obj/sub/scene.blend", "blendFileHash": "h"},
        {"blendFilePath": "cust/../scene.blend", "blendFileHash": "h"},
        {"blendFilePath": "cust/obj/..", "blendFileHash": "h"},
        {"blendFilePath": "/cust/obj/scene.blend", "blendFileHash": "h"},
        {"blendFilePath": "other/obj/scene.blend", "blendFileHash": "h"},
        {"blendFilePath": "cust/other/scene.blend", "blendFileHash": "h"},
        {"blendFilePath": "cust/obj/scene.txt", "blendFileHash": "h"},
        {"blendFilePath": "cust/obj/.blend", "blendFileHash": "h"},
        {"blendFilePath": "cust\\obj\\scene.blend", "blendFileHash": "h"},
        {"blendFilePath": "http://cust/obj/scene.blend", "blendFileHash": "h"},
        {"blendFilePath": "cust/obj/sc\x00ene.blend", "blendFileHash": "h"},
        {"blendFilePath": "", "blendFileHash": "h"},
        {"blendFilePath": None, "blendFileHash": "h"},
        {"blendFilePath": ["cust", "obj", "scene.blend"], "blendFileHash": "h"},
        {"blendFileHash": "h"},
        {"blendFilePath": "cust/obj/scene.blend"},
        {"blendFilePath": "cust/obj/scene.blend", "blendFileHash": 12},
        ["cust/obj/scene.blend"],
        "cust/obj/scene.blend",
    ],
)
def test_bad_blend_file_path_means_not_renderable(
    server: PeerServer, peers: Peers, body: Any
) -> None:
    server.route("GET", BLEND_NAME + "obj", json_reply(body))
    with pytest.raises(ObjectNotRenderable):
        peers.catalog.get_blend_file("obj", "cust")


def test_catalog_non_json_means_not_renderable(server: PeerServer, peers: Peers) -> None:
    server.route("GET", BLEND_NAME + "obj", Reply(200, b"<html>oops</html>"))
    with pytest.raises(ObjectNotRenderable):
        peers.catalog.get_blend_file("obj", "cust")


def test_blend_file_upper_case_extension_is_accepted(server: PeerServer, peers: Peers) -> None:
    body = {"blendFilePath": "cust/obj/Scene.BLEND", "blendFileHash": "h"}
    server.route("GET", BLEND_NAME + "obj", json_reply(body))
    assert peers.catalog.get_blend_file("obj", "cust").path == "cust/obj/Scene.BLEND"


@pytest.mark.parametrize(
    ("object_id", "customer_id"), [("", "c"), ("o", ""), ("..", "c"), ("a/b", "c")]
)
def test_catalog_refuses_bad_ids_before_sending(
    server: PeerServer, peers: Peers, object_id: str, customer_id: str
) -> None:
    with pytest.raises(InvalidInput):
        peers.catalog.get_blend_file(object_id, customer_id)
    assert server.seen == []


def test_catalog_503_then_200_is_retried(server: PeerServer, peers: Peers) -> None:
    good = json_reply({"blendFilePath": "cust/obj/scene.blend", "blendFileHash": "h"})
    server.route("GET", BLEND_NAME + "obj", Reply(503), good)
    assert peers.catalog.get_blend_file("obj", "cust").hash == "h"
    assert len(server.seen) == 2


def test_catalog_429_is_transient_not_unrenderable(server: PeerServer, peers: Peers) -> None:
    server.route("GET", BLEND_NAME + "obj", Reply(429))
    with pytest.raises(PeerError) as info:
        peers.catalog.get_blend_file("obj", "cust")
    assert (info.value.status, info.value.transient) == (429, True)


def test_add_rendered_image_sends_exact_json(server: PeerServer, peers: Peers) -> None:
    server.route("POST", ADD_IMAGE, json_reply({"message": "ok"}))
    peers.catalog.add_rendered_image(
        object_id="obj", customer_id="cust", frame_number=7, image_file_path="cust/obj/007.png"
    )
    (seen,) = server.seen
    assert seen.headers["Content-Type"] == "application/json"
    assert list(seen.json().items()) == [
        ("objectId", "obj"),
        ("customerId", "cust"),
        ("frameNumber", 7),
        ("imageFilePath", "cust/obj/007.png"),
    ]


def test_add_rendered_image_is_not_retried_after_sending(server: PeerServer, peers: Peers) -> None:
    server.route("POST", ADD_IMAGE, Reply(503), Reply(200))
    with pytest.raises(PeerError) as info:
        peers.catalog.add_rendered_image(
            object_id="obj", customer_id="cust", frame_number=7, image_file_path="c/o/007.png"
        )
    assert (info.value.status, info.value.transient) == (503, True)
    assert len(server.seen) == 1


def test_add_rendered_image_4xx_is_permanent(server: PeerServer, peers: Peers) -> None:
    server.route("POST", ADD_IMAGE, json_reply({"message": "bad frame"}, 422))
    with pytest.raises(PeerError) as info:
        peers.catalog.add_rendered_image(
            object_id="obj", customer_id="cust", frame_number=7, image_file_path="c/o/007.png"
        )
    assert (info.value.peer, info.value.status, info.value.transient) == ("catalog", 422, False)
