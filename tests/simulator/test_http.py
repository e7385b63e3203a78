"""Every HTTP endpoint of the simulator, with the contract's exact paths and bodies."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import requests
from requests_toolbelt import MultipartEncoder
from werkzeug.serving import make_server

from simulator import Simulator
from simulator.blobs import TEMP_BUCKET
from simulator.config import FIXTURES
from simulator.web import FORM_READ_BYTES, _KeepAliveHandler
from tests.simulator.helpers import NEW_SESSION, SEND, SEND_ACK

CATALOG = "/api/mongodb-service/blender-objects"
BLOB = "/api/blob-service"
DEMO_BLEND = FIXTURES / "range_10_20.blend"
DEMO_KEY = "demo-customer/demo-object/range_10_20.blend"
ESCAPING_KEYS = ["../x", "a/../../x", "/etc/passwd", "a\\b", "a\x00b", "", "a//b", "./a"]
MIB = 1024 * 1024


def test_catalog_knows_the_demo_object(http_sim: Simulator) -> None:
    response = requests.get(
        f"{http_sim.base_url}{CATALOG}/get-blend-file-name/demo-object",
        params={"customer_id": "demo-customer"},
        timeout=5,
    )
    assert response.status_code == 200
    assert response.json() == {
        "blendFilePath": DEMO_KEY,
        "blendFileHash": hashlib.sha256(DEMO_BLEND.read_bytes()).hexdigest(),
    }


@pytest.mark.parametrize(
    ("object_id", "customer_id"),
    [("nope", "demo-customer"), ("demo-object", "someone-else"), ("demo-object", None)],
)
def test_catalog_unknown_object_is_404(
    http_sim: Simulator, object_id: str, customer_id: str | None
) -> None:
    params = {"customer_id": customer_id} if customer_id else {}
    response = requests.get(
        f"{http_sim.base_url}{CATALOG}/get-blend-file-name/{object_id}", params=params, timeout=5
    )
    assert response.status_code == 404


def test_add_object_serves_another_blend(http_sim: Simulator) -> None:
    blend = FIXTURES / "default_1_250.blend"
    key = http_sim.add_object("cust-2", "obj-2", blend)
    assert key == "cust-2/obj-2/default_1_250.blend"
    found = requests.get(
        f"{http_sim.base_url}{CATALOG}/get-blend-file-name/obj-2",
        params={"customer_id": "cust-2"},
        timeout=5,
    ).json()
    assert found["blendFilePath"] == key
    body = requests.get(
        f"{http_sim.base_url}{BLOB}/retrieve-blend",
        params={"bucket": "blend-files", "key": key},
        timeout=5,
    ).content
    assert body == blend.read_bytes()


def test_add_object_refuses_ids_that_are_not_one_segment(http_sim: Simulator) -> None:
    with pytest.raises(ValueError, match="customer_id"):
        http_sim.add_object("../evil", "obj", DEMO_BLEND)


def test_add_rendered_image_is_recorded_in_memory_and_on_disk(http_sim: Simulator) -> None:
    body = {
        "objectId": "demo-object",
        "customerId": "demo-customer",
        "frameNumber": 7,
        "imageFilePath": "demo-customer/demo-object/007.png",
    }
    url = f"{http_sim.base_url}{CATALOG}/add-rendered-image"
    assert requests.post(url, json=body, timeout=5).status_code == 200
    assert http_sim.catalog_records() == [body]
    lines = (http_sim.data_dir / "catalog-records.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [body]
    assert http_sim.state()["catalog"]["records_count"] == 1
    assert (http_sim.catalog_count("demo-customer"), http_sim.catalog_count("other")) == (1, 0)


@pytest.mark.parametrize(
    "body", [{}, {"objectId": "o", "customerId": "c", "frameNumber": 1}, [1], "text"]
)
def test_add_rendered_image_refuses_incomplete_bodies(http_sim: Simulator, body: object) -> None:
    url = f"{http_sim.base_url}{CATALOG}/add-rendered-image"
    assert requests.post(url, json=body, timeout=5).status_code == 400
    assert http_sim.catalog_records() == []


def test_retrieve_blend_streams_the_file(http_sim: Simulator) -> None:
    with requests.get(
        f"{http_sim.base_url}{BLOB}/retrieve-blend",
        params={"bucket": "blend-files", "key": DEMO_KEY},
        stream=True,
        timeout=5,
    ) as response:
        assert response.status_code == 200
        assert int(response.headers["Content-Length"]) == DEMO_BLEND.stat().st_size
        assert b"".join(response.iter_content(65536)) == DEMO_BLEND.read_bytes()


def test_retrieve_blend_needs_the_blend_files_bucket(http_sim: Simulator) -> None:
    for params in ({"bucket": "temp", "key": DEMO_KEY}, {"key": DEMO_KEY}):
        response = requests.get(f"{http_sim.base_url}{BLOB}/retrieve-blend", params=params)
        assert response.status_code == 400


def test_missing_blobs_are_404(http_sim: Simulator) -> None:
    base = http_sim.base_url + BLOB
    assert (
        requests.get(
            f"{base}/retrieve-blend", params={"bucket": "blend-files", "key": "a/b/c.blend"}
        ).status_code
        == 404
    )
    assert requests.get(f"{base}/retrieve-temp", params={"key": "temp/x.png"}).status_code == 404
    assert requests.delete(f"{base}/delete-temp", params={"key": "temp/x.png"}).status_code == 404


@pytest.mark.parametrize("key", ESCAPING_KEYS)
def test_keys_that_escape_their_bucket_are_refused(
    http_sim: Simulator, key: str, tmp_path: Path
) -> None:
    (http_sim.data_dir / "buckets" / "x").write_text("outside")
    base = http_sim.base_url + BLOB
    blend = requests.get(
        f"{base}/retrieve-blend", params={"bucket": "blend-files", "key": key}, timeout=5
    )
    temp = requests.get(f"{base}/retrieve-temp", params={"key": key}, timeout=5)
    delete = requests.delete(f"{base}/delete-temp", params={"key": key}, timeout=5)
    store = requests.post(
        f"{base}/store-image",
        data={"bucket": "rendered-frames", "key": key, "type": "png"},
        files={"image": ("x.png", b"png")},
        timeout=5,
    )
    assert [r.status_code for r in (blend, temp, delete, store)] == [400, 400, 400, 400]
    assert (http_sim.data_dir / "buckets" / "x").read_text() == "outside"


def test_a_symlink_out_of_a_bucket_is_refused(http_sim: Simulator, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    link = http_sim.data_dir / "buckets" / TEMP_BUCKET / "link"
    link.symlink_to(tmp_path)
    response = requests.get(
        f"{http_sim.base_url}{BLOB}/retrieve-temp", params={"key": "link/secret.txt"}, timeout=5
    )
    assert response.status_code == 400


def test_temp_blobs_are_served_and_deleted(http_sim: Simulator) -> None:
    key = "temp/s1/u1/7-abc.png"
    http_sim.blobs.write(TEMP_BUCKET, key, b"\x89PNG-ish")
    base = http_sim.base_url + BLOB
    got = requests.get(f"{base}/retrieve-temp", params={"key": key}, timeout=5)
    assert (got.status_code, got.content) == (200, b"\x89PNG-ish")
    assert got.headers["Content-Type"] == "image/png"
    assert http_sim.temp_keys() == [key]
    assert requests.delete(f"{base}/delete-temp", params={"key": key}).status_code in (200, 204)
    assert http_sim.temp_keys() == []
    assert requests.delete(f"{base}/delete-temp", params={"key": key}).status_code == 404
    assert requests.get(f"{base}/retrieve-temp", params={"key": key}).status_code == 404


@pytest.mark.parametrize(("key", "frame"), [("c/o/1234.png", 1234), ("c/o/-07.png", -7)])
def test_store_image_takes_long_and_negative_frames(
    http_sim: Simulator, key: str, frame: int
) -> None:
    response = requests.post(
        f"{http_sim.base_url}{BLOB}/store-image",
        data={"bucket": "rendered-frames", "key": key, "type": "png"},
        files={"image": ("f.png", b"img", "image/png")},
        timeout=5,
    )
    assert response.status_code == 200
    assert http_sim.stored_frames("c", "o") == {frame: b"img"}


def test_store_image_keeps_the_frame(http_sim: Simulator) -> None:
    image = b"\x89PNG\r\n\x1a\nframe-7"
    response = requests.post(
        f"{http_sim.base_url}{BLOB}/store-image",
        data={"bucket": "rendered-frames", "key": "cust/obj/007.png", "type": "png"},
        files={"image": ("007.png", image, "image/png")},
        timeout=5,
    )
    assert response.status_code == 200
    assert http_sim.stored_frames("cust", "obj") == {7: image}
    assert http_sim.state()["rendered_frames"] == ["cust/obj/007.png"]
    shown = requests.get(f"{http_sim.base_url}/simulator/frames/cust/obj/007.png", timeout=5)
    assert (shown.status_code, shown.headers["Content-Type"], shown.content) == (
        200,
        "image/png",
        image,
    )
    assert "cust/obj/007.png" in requests.get(f"{http_sim.base_url}/simulator/", timeout=5).text
    assert list(http_sim.blobs.spool.iterdir()) == []


@pytest.mark.parametrize(
    ("fields", "files"),
    [
        ({"bucket": "temp", "key": "c/o/001.png", "type": "png"}, {"image": b"x"}),
        ({"key": "c/o/001.png", "type": "png"}, {"image": b"x"}),
        ({"bucket": "rendered-frames", "key": "c/o/001.png", "type": "png"}, {"other": b"x"}),
        ({"bucket": "rendered-frames", "key": "c/o/001.png"}, {"image": b"x"}),
        ({"bucket": "rendered-frames", "key": "c/o/7.png", "type": "png"}, {"image": b"x"}),
        ({"bucket": "rendered-frames", "key": "c/o/0007.png", "type": "png"}, {"image": b"x"}),
        ({"bucket": "rendered-frames", "key": "c/o/007.png", "type": "jpg"}, {"image": b"x"}),
        ({"bucket": "rendered-frames", "key": "c/o/x/007.png", "type": "png"}, {"image": b"x"}),
        ({"bucket": "rendered-frames", "key": "c/o/frame.png", "type": "png"}, {"image": b"x"}),
    ],
)
def test_store_image_refuses_off_contract_forms(
    http_sim: Simulator, fields: dict[str, str], files: dict[str, bytes]
) -> None:
    response = requests.post(
        f"{http_sim.base_url}{BLOB}/store-image", data=fields, files=files, timeout=5
    )
    assert response.status_code == 400
    assert http_sim.state()["rendered_frames"] == []
    assert list(http_sim.blobs.spool.iterdir()) == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            b'--b0undary\r\nContent-Disposition: form-data; name="image"; filename="x"\r\n\r\nimg',
            "the body ends before its closing delimiter",
        ),
        (
            b"--b0undary\r\nContent-Type: image/png\r\n\r\nimg\r\n--b0undary--\r\n",
            "a part has no Content-Disposition header",
        ),
    ],
)
def test_store_image_refuses_malformed_bodies(
    http_sim: Simulator, body: bytes, reason: str
) -> None:
    response = requests.post(
        f"{http_sim.base_url}{BLOB}/store-image",
        data=body,
        headers={"Content-Type": "multipart/form-data; boundary=b0undary"},
        timeout=5,
    )
    assert response.status_code == 400
    assert response.json() == {"message": f"malformed multipart/form-data body: {reason}"}
    assert http_sim.state()["rendered_frames"] == []
    assert list(http_sim.blobs.spool.iterdir()) == []


def post_form(sim: Simulator, encoder: MultipartEncoder) -> requests.Response:
    """A store-image upload streamed from `encoder`."""
    return requests.post(
        f"{sim.base_url}{BLOB}/store-image",
        data=encoder,
        headers={"Content-Type": encoder.content_type},
        timeout=30,
    )


def test_multi_megabyte_blobs_stream_both_ways_without_being_held_in_memory(
    http_sim: Simulator, tmp_path: Path
) -> None:
    size = 40 * MIB
    big = tmp_path / "big.blend"
    with big.open("wb") as out:
        for _ in range(size // MIB):
            out.write(os.urandom(MIB))
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    key = http_sim.add_object("cust", "big", big)

    tracemalloc.start()
    try:
        with big.open("rb") as source:
            encoder = MultipartEncoder(
                fields={
                    "bucket": "rendered-frames",
                    "key": "cust/big/001.png",
                    "type": "png",
                    "image": ("001.png", source, "image/png"),
                }
            )
            stored = post_form(http_sim, encoder)
        assert stored.status_code == 200
        fetched = hashlib.sha256()
        with requests.get(
            f"{http_sim.base_url}{BLOB}/retrieve-blend",
            params={"bucket": "blend-files", "key": key},
            stream=True,
            timeout=30,
        ) as response:
            for chunk in response.iter_content(256 * 1024):
                fetched.update(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert fetched.hexdigest() == digest
    frame = http_sim.blobs.path("rendered-frames", "cust/big/001.png")
    assert frame.stat().st_size == size
    # reads of the form parser are 1 MiB; a body held whole would need 40 MiB on its own.
    assert peak < 16 * MIB, f"peak {peak / MIB:.1f} MiB for a {size // MIB} MiB blob"


def test_store_image_keeps_an_image_read_in_many_pieces(http_sim: Simulator) -> None:
    """Boundary look-alikes every 997 bytes, so some straddle each read of the form parser,
    are kept as image bytes."""
    boundary = "b0undary"
    near_miss = b"\r\n--" + boundary.encode()[:-1] + b"X\r\n"
    image = bytearray(os.urandom(5 * FORM_READ_BYTES + 11))
    for start in range(0, len(image) - len(near_miss), 997):
        image[start : start + len(near_miss)] = near_miss
    encoder = MultipartEncoder(
        fields={
            "bucket": "rendered-frames",
            "key": "cust/obj/007.png",
            "type": "png",
            "image": ("007.png", bytes(image), "image/png"),
        },
        boundary=boundary,
    )
    response = post_form(http_sim, encoder)
    assert response.status_code == 200
    assert http_sim.stored_frames("cust", "obj") == {7: bytes(image)}
    assert list(http_sim.blobs.spool.iterdir()) == []


def test_new_session_registers(http_sim: Simulator) -> None:
    response = requests.post(
        http_sim.base_url + NEW_SESSION,
        data={"user_count": "3", "session_supervisor_id": "session-a"},
        timeout=5,
    )
    assert response.status_code == 200
    session = http_sim.state()["sessions"]["session-a"]
    assert (session["registered_user_count"], session["demand"], session["users"]) == (3, 0, [])


@pytest.mark.parametrize(
    "form", [{"user_count": "3"}, {"session_supervisor_id": "s"}, {"user_count": "x", "s": "s"}]
)
def test_new_session_refuses_missing_fields(http_sim: Simulator, form: dict[str, str]) -> None:
    assert requests.post(http_sim.base_url + NEW_SESSION, data=form).status_code == 400
    assert http_sim.state()["sessions"] == {}


@pytest.mark.parametrize(("path", "status"), [(SEND, 200), (SEND_ACK, 500)])
def test_user_service_unknown_user_as_the_real_one(
    http_sim: Simulator, path: str, status: int
) -> None:
    """The real User Service emits to a socket id whether or not anyone holds it (200), and
    its acknowledged call to nobody times out (500)."""
    body = {"user_id": "nobody", "topic": "stop-work", "data": {}}
    assert requests.post(http_sim.base_url + path, json=body, timeout=5).status_code == status


@pytest.mark.parametrize(
    "body",
    [
        {"user_id": "sim-user-001", "topic": "dance", "data": {}},
        {"user_id": "sim-user-001", "topic": "start-rendering"},
        {"user_id": "sim-user-001", "topic": "start-rendering", "data": {"frame_list": "1-3"}},
        {"topic": "stop-work", "data": {}},
        ["not", "an", "object"],
    ],
)
def test_user_service_refuses_bad_messages(http_sim: Simulator, body: object) -> None:
    assert requests.post(http_sim.base_url + SEND, json=body, timeout=5).status_code == 400


def test_a_message_to_an_idle_user_is_dropped_and_shown(http_sim: Simulator) -> None:
    body = {
        "user_id": "sim-user-001",
        "topic": "start-rendering",
        "data": {"blend_file_hash": "h", "frame_list": [1]},
    }
    assert requests.post(http_sim.base_url + SEND, json=body, timeout=5).status_code == 200
    state = http_sim.state()
    assert state["dropped_user_messages"]["count"] == 1
    assert state["users"]["sim-user-001"]["status"] == "idle"
    stop = {"user_id": "sim-user-001", "topic": "stop-work", "data": {}}
    assert requests.post(http_sim.base_url + SEND, json=stop, timeout=5).status_code == 200


def test_state_endpoint_has_every_section(http_sim: Simulator) -> None:
    state = requests.get(f"{http_sim.base_url}/simulator/state", timeout=5).json()
    assert state == json.loads(json.dumps(http_sim.state()))
    assert {
        "sessions",
        "idle_users",
        "users",
        "catalog",
        "rendered_frames",
        "temp_keys",
        "published",
        "ignored_messages",
        "dropped_user_messages",
        "config",
    } <= set(state)
    assert state["idle_users"] == ["sim-user-001", "sim-user-002", "sim-user-003"]
    assert state["config"]["broker_url"] == "memory://"
    assert state["catalog"]["objects"][0]["customer_id"] == "demo-customer"


def test_unknown_paths_and_methods_answer_json(http_sim: Simulator) -> None:
    missing = requests.get(f"{http_sim.base_url}/api/nothing", timeout=5)
    wrong = requests.get(f"{http_sim.base_url}{BLOB}/delete-temp", timeout=5)
    assert (missing.status_code, wrong.status_code) == (404, 405)
    assert "message" in missing.json()


def _exchange(connection: http.client.HTTPConnection, method: str, path: str, **kw: Any):  # type: ignore[no-untyped-def]
    connection.request(method, path, **kw)
    response = connection.getresponse()
    return response.status, response.read(), response.getheader("Connection")


def test_one_connection_carries_many_requests(http_sim: Simulator) -> None:
    """Real peers keep connections alive; the simulator must too, or every supervisor call
    pays a TCP connection (and the benchmarks measure that instead)."""
    key = "temp/s1/u1/8-abc.png"
    http_sim.blobs.write(TEMP_BUCKET, key, b"\x89PNG-kept")
    host, port = http_sim.base_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        path = f"{BLOB}/retrieve-temp?key={key}"
        first = _exchange(connection, "GET", path)
        sock = connection.sock
        # a body the application never reads (an unknown path) must not be taken for the
        # next request line
        unread = _exchange(connection, "POST", "/api/nothing", body=b"GET / HTTP/1.1\r\n\r\n")
        state = _exchange(connection, "GET", "/simulator/state")
        again = _exchange(connection, "GET", path)
        assert connection.sock is sock
    finally:
        connection.close()
    assert first == (200, b"\x89PNG-kept", None)
    assert unread[0] == 404
    assert state[0] == 200
    assert json.loads(state[1])["config"]
    assert again == first


def test_a_chunked_request_is_answered_then_its_connection_closed(http_sim: Simulator) -> None:
    host, port = http_sim.base_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        body = json.dumps({"user_id": "nobody", "topic": "stop-work", "data": {}}).encode()
        connection.request(
            "POST",
            SEND,
            body=iter([body]),
            headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
            encode_chunked=True,
        )
        response = connection.getresponse()
        response.read()
        assert response.getheader("Connection") == "close"
    finally:
        connection.close()
    assert response.status == 200  # the real User Service emits to any socket id


def test_a_down_fault_drops_a_kept_connection_without_an_answer(http_sim: Simulator) -> None:
    session = requests.Session()
    base = http_sim.base_url + CATALOG
    assert session.get(f"{base}/get-blend-file-name/nothing", timeout=5).status_code in (400, 404)
    http_sim.faults.inject("catalog", "down", seconds=30)
    with pytest.raises(requests.ConnectionError):
        session.post(f"{base}/add-rendered-image", json={}, timeout=5)
    http_sim.faults.clear()
    assert session.get(f"{base}/get-blend-file-name/nothing", timeout=5).status_code in (400, 404)


def test_a_body_of_unknown_length_goes_chunked_on_a_kept_connection() -> None:
    def app(environ, start_response):  # type: ignore[no-untyped-def]
        if environ["PATH_INFO"] == "/broken":
            raise RuntimeError("the application failed")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter([b"one ", b"", b"two"])

    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_KeepAliveHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    connection = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=5)
    try:
        first = _exchange(connection, "GET", "/")
        sock = connection.sock
        broken = _exchange(connection, "GET", "/broken")
        second = _exchange(connection, "GET", "/")
        assert connection.sock is sock
    finally:
        connection.close()
        server.shutdown()
        thread.join(5)
        server.server_close()
    assert first == second == (200, b"one two", None)
    assert broken == (500, b"Internal server error", None)


def test_a_client_gone_mid_body_closes_quietly(
    http_sim: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    host, port = http_sim.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(
            b"POST /api/nothing HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10
        )
        raw.shutdown(socket.SHUT_WR)
        answer = raw.recv(65536)
    assert answer.startswith(b"HTTP/1.1 404")
    time.sleep(0.2)  # the server thread finishes with the connection
    assert "Traceback" not in capsys.readouterr().err
    assert requests.get(f"{http_sim.base_url}/simulator/state", timeout=5).status_code == 200
