"""Fake peers over real HTTP on 127.0.0.1: the catalog, Blob Service, User Service and the
User Manager's registration endpoint, recording every request they get."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body.decode()).items()}

    def multipart(self) -> dict[str, bytes]:
        message = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + self.headers["content-type"].encode() + b"\r\n\r\n" + self.body
        )
        return {
            part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
            for part in message.iter_parts()
        }


@dataclass
class FakePeers:
    """State of the fake platform. Tests set `objects`, `blobs`, `failures` and read `requests`."""

    objects: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    blend_files: dict[str, bytes] = field(default_factory=dict)
    temp_blobs: dict[str, bytes] = field(default_factory=dict)
    stored: dict[str, bytes] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    acknowledge: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)
    base_url: str = ""

    def add_object(self, customer_id: str, object_id: str, blend: bytes, name: str = "s.blend"):
        path = f"{customer_id}/{object_id}/{name}"
        self.objects[(customer_id, object_id)] = {
            "blendFilePath": path,
            "blendFileHash": f"hash-{object_id}",
        }
        self.blend_files[path] = blend
        return path

    def calls(self, path_suffix: str) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.path.endswith(path_suffix)]

    def fail_next(self, path_suffix: str, status: int = 503, times: int = 1) -> None:
        self.failures[path_suffix] = times
        self.failures[path_suffix + "#status"] = status


def _handler(server: FakePeerServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *_args: Any) -> None:
            pass

        def _reply(self, status: int, body: bytes = b"", content_type: str = "application/json"):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, payload: Any) -> None:
            self._reply(status, json.dumps(payload).encode())

        def _handle(self) -> None:
            peers = server.peers
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            record = Recorded(
                method=self.command,
                path=parts.path,
                query=parse_qs(parts.query),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
            )
            with peers.lock:
                peers.requests.append(record)
                for suffix, remaining in list(peers.failures.items()):
                    if suffix.endswith("#status") or remaining <= 0:
                        continue
                    if parts.path.endswith(suffix):
                        peers.failures[suffix] = remaining - 1
                        status = peers.failures.get(suffix + "#status", 503)
                        self._json(status, {"message": "injected failure"})
                        return
            self._route(peers, record)

        def _route(self, peers: FakePeers, r: Recorded) -> None:
            q = {k: v[0] for k, v in r.query.items()}
            path = r.path
            if "/blender-objects/get-blend-file-name/" in path:
                object_id = path.rsplit("/", 1)[1]
                found = peers.objects.get((q.get("customer_id", ""), object_id))
                if found is None:
                    self._json(404, {"message": "object not found"})
                else:
                    self._json(200, found)
            elif path.endswith("/blender-objects/add-rendered-image"):
                self._json(200, {"message": "recorded"})
            elif path.endswith("/blob-service/retrieve-blend"):
                data = peers.blend_files.get(q.get("key", ""))
                if data is None:
                    self._json(404, {"message": "no such blob"})
                else:
                    self._reply(200, data, "application/octet-stream")
            elif path.endswith("/blob-service/retrieve-temp"):
                data = peers.temp_blobs.get(q.get("key", ""))
                if data is None:
                    self._json(404, {"message": "no such blob"})
                else:
                    self._reply(200, data, "application/octet-stream")
            elif path.endswith("/blob-service/delete-temp"):
                peers.temp_blobs.pop(q.get("key", ""), None)
                self._reply(204)
            elif path.endswith("/blob-service/store-image"):
                fields = r.multipart()
                peers.stored[fields["key"].decode()] = fields["image"]
                self._json(200, {"message": "stored"})
            elif path.endswith("/send-msg-to-user-with-acknowledgement"):
                self._json(200, peers.acknowledge)
            elif path.endswith("/send-msg-to-user"):
                self._json(200, {"message": "sent"})
            elif path.endswith("/session-supervisor/new-session"):
                self._reply(200, b"null")
            elif path.endswith("/session-supervisor/cleanup-session"):
                self._json(200, {"message": "cleaned up"})
            elif path.endswith("/blender-objects/change-state"):
                self._json(200, {"message": "state changed"})
            else:
                self._json(404, {"message": "unknown path"})

        do_GET = do_POST = do_PUT = do_DELETE = _handle

    return Handler


class FakePeerServer:
    """One server for many tests: `reset` gives each a fresh FakePeers at the same URL."""

    def __init__(self) -> None:
        self.peers = FakePeers()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.peers.base_url = self.base_url
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def reset(self) -> FakePeers:
        self.peers = FakePeers(base_url=self.base_url)
        return self.peers

    def __enter__(self) -> FakePeers:
        self.thread.start()
        return self.peers

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
