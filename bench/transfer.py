"""transfer: one 1 GiB frame moved temp -> final by `BlobClient.transfer_temp_to_final`.

Two Blob Services, both in the harness process on the same disk: the simulator's (werkzeug,
multipart parsed into a spool file) and a minimal one (sendfile out, the image part copied
to a spool file with no parser in between), so a slow simulator shows up as the gap between
the two rows.
The transfer runs in a fresh child (`python -m bench.transfer --child ...`) whose RSS is
sampled every 10 ms. Baseline, same run: `cp` of the same bytes on the same disk, with the
same warm page cache.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from bench.harness import GiB, MiB, Options, Row, at_most, log, ratio_at_least, run_child

TEMP_KEY = "temp/bench/user/1-bench.png"
FINAL_KEY = "bench/transfer/001.png"
RSS_GROWTH_LIMIT_MIB = 64
COPY_CHUNK = 256 * 1024


class MinimalBlobServer:
    """retrieve-temp and store-image over plain files, as little work as HTTP allows.

    The image part is read into one reused `COPY_CHUNK` buffer and written to a spool
    file renamed into place once the whole upload arrived (an interrupted upload stores
    nothing). The piece size is measured, not guessed: on this VM a GiB copied into the
    page cache through a 4 MiB buffer took 2-6x the kernel time it took through 256 KiB
    (likely cache and TLB misses once the buffer stops fitting between read and write).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "temp").mkdir(parents=True, exist_ok=True)
        (root / "final").mkdir(parents=True, exist_ok=True)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def temp_path(self, key: str) -> Path:
        return self.root / "temp" / key.replace("/", "_")

    def final_path(self, key: str) -> Path:
        return self.root / "final" / key.replace("/", "_")

    def __enter__(self) -> MinimalBlobServer:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        store = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: Any) -> None:
                pass

            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                key = parse_qs(parts.query).get("key", [""])[0]
                path = store.temp_path(key)
                if not parts.path.endswith("/retrieve-temp") or not path.is_file():
                    self._reply(404, b'{"message": "No such blob"}')
                    return
                with path.open("rb") as source:
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(path.stat().st_size))
                    self.end_headers()
                    self.connection.sendfile(source)

            def do_POST(self) -> None:
                if not self.path.endswith("/store-image"):
                    self._reply(404, b'{"message": "unknown path"}')
                    return
                length = int(self.headers["Content-Length"])
                match = re.search(r"boundary=([^;]+)", self.headers.get("Content-Type", ""))
                if match is None:
                    self._reply(400, b'{"message": "not multipart"}')
                    return
                trailer = b"\r\n--" + match.group(1).encode() + b"--\r\n"
                head = b""
                while (
                    b'name="image"' not in head
                    or b"\r\n\r\n" not in head.split(b'name="image"', 1)[1]
                ):
                    more = self.rfile.read1(64 * 1024)
                    if not more:
                        raise ConnectionError("upload ended before the image part")
                    head += more
                image_start = head.index(b"\r\n\r\n", head.index(b'name="image"')) + 4
                key = re.search(rb'name="key"\r\n\r\n([^\r]+)\r\n', head)
                if key is None:
                    self._reply(400, b'{"message": "no key"}')
                    return
                final = store.final_path(key.group(1).decode())
                spool = final.with_name(final.name + ".part")
                remaining = length - image_start - len(trailer)
                body = head[image_start:]
                try:
                    with spool.open("wb") as out:
                        first = body[:remaining]
                        out.write(first)
                        remaining -= len(first)
                        tail = body[len(first) :]
                        buffer = memoryview(bytearray(COPY_CHUNK))
                        while remaining > 0:
                            got = self.rfile.readinto(buffer[: min(COPY_CHUNK, remaining)])
                            if not got:
                                raise ConnectionError("upload ended early")
                            out.write(buffer[:got])
                            remaining -= got
                        tail += self.rfile.read(len(trailer) - len(tail))
                    if tail != trailer:
                        self._reply(400, b'{"message": "bad multipart trailer"}')
                        return
                    os.replace(spool, final)
                finally:
                    spool.unlink(missing_ok=True)
                self._reply(200, b'{"message": "Image stored"}')

        return Handler


def write_source(path: Path, size: int) -> None:
    """`size` bytes of incompressible data (one random MiB repeated)."""
    block = os.urandom(MiB)
    with path.open("wb") as out:
        for done in range(0, size, MiB):
            out.write(block[: min(MiB, size - done)])


def cp_seconds(source: Path, target: Path) -> float:
    began = time.perf_counter()
    subprocess.run(["cp", str(source), str(target)], check=True)
    seconds = time.perf_counter() - began
    target.unlink()
    return seconds


def run(opts: Options) -> list[Row]:
    from simulator import Simulator, SimulatorConfig
    from simulator.blobs import FRAMES_BUCKET, TEMP_BUCKET
    from tests import services

    size = 32 * MiB if opts.smoke else GiB
    rounds = opts.rounds_or(3)
    figures: dict[str, list[dict[str, Any]]] = {"simulator": [], "minimal": []}
    copies: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-transfer-", dir=opts.workdir) as folder:
        tmp = Path(folder)
        source = tmp / "frame.png"
        write_source(source, size)
        work = tmp / "work"
        work.mkdir()
        config = SimulatorConfig(
            broker_url=services.rabbitmq_url(),
            data_dir=tmp / "simulator",
            users=0,
            demo_blend=None,
            private_queue=True,
        )
        with Simulator(config) as sim, MinimalBlobServer(tmp / "minimal") as minimal:
            sim_temp = sim.blobs.path(TEMP_BUCKET, TEMP_KEY)
            sim_temp.parent.mkdir(parents=True, exist_ok=True)
            os.link(source, sim_temp)
            os.link(source, minimal.temp_path(TEMP_KEY))
            servers = {
                "simulator": (sim.base_url, lambda: sim.blobs.path(FRAMES_BUCKET, FINAL_KEY)),
                "minimal": (minimal.base_url, lambda: minimal.final_path(FINAL_KEY)),
            }
            cp_seconds(source, tmp / "warm.copy")
            for index in range(rounds):
                copies.append(cp_seconds(source, tmp / "cp.copy"))
                for name, (base_url, final) in servers.items():
                    args = {"base_url": base_url, "workdir": str(work)}
                    served_from = time.process_time()
                    result = run_child("bench.transfer", args, timeout=600)
                    result["server_cpu"] = time.process_time() - served_from
                    stored = final()
                    if result["bytes"] != size or stored.stat().st_size != size:
                        raise RuntimeError(f"transfer via {name}: sizes differ")
                    stored.unlink()
                    figures[name].append(result)
                    log(
                        f"transfer round {index + 1}/{rounds} via {name}: "
                        f"{size / MiB / result['seconds']:.0f} MiB/s, cp "
                        f"{size / MiB / copies[-1]:.0f} MiB/s"
                    )
            if any(work.iterdir()):
                raise RuntimeError("transfer left a temp file behind")
    cp_rate = [size / MiB / s for s in copies]
    rows = []
    label = f"{size // MiB:,} MiB"
    for name, results in figures.items():
        rows.append(
            Row(
                "transfer",
                f"{label} via {name} blob HTTP: throughput",
                "MiB/s",
                [size / MiB / r["seconds"] for r in results],
                cp_rate,
                [ratio_at_least(0.5)],
                "baseline: cp of the same bytes on the same disk",
            )
        )
        rows.append(
            Row(
                "transfer",
                f"{label} via {name} blob HTTP: RSS growth",
                "MiB",
                [(r["rss_peak"] - r["rss_before"]) / MiB for r in results],
                None,
                [at_most(RSS_GROWTH_LIMIT_MIB, "<= 64 MiB")],
                "peak RSS of the transferring process minus its RSS before",
            )
        )
        for side, key, note in (
            ("transferring process", "cpu", "user + system CPU of the child during the transfer"),
            ("Blob Service", "server_cpu", "user + system CPU of the harness process (servers)"),
        ):
            rows.append(
                Row(
                    "transfer",
                    f"{label} via {name} blob HTTP: CPU s per GiB, {side}",
                    "s",
                    [r[key] * GiB / size for r in results],
                    None,
                    [],
                    note + "; independent of how busy the machine is, unlike wall time",
                )
            )
    return rows


def child(args: dict[str, Any]) -> dict[str, Any]:
    from bench.harness import RssSampler
    from supervisor.peers import BlobClient, RetryPolicy, make_session

    policy = RetryPolicy(retries=0)
    client = BlobClient(args["base_url"], make_session(policy), timeout=(10, 120), policy=policy)
    sampler = RssSampler(every=0.01)
    sampler.start()
    time.sleep(0.05)
    before = sampler.current()
    sampler.reset()
    began = time.perf_counter()
    cpu_from = time.process_time()
    size = client.transfer_temp_to_final(
        temp_key=TEMP_KEY,
        final_key=FINAL_KEY,
        extension="png",
        max_bytes=8 * GiB,
        workdir=Path(args["workdir"]),
    )
    seconds = time.perf_counter() - began
    cpu = time.process_time() - cpu_from
    peak = sampler.stop()
    client.close()
    return {
        "seconds": seconds,
        "cpu": cpu,
        "bytes": size,
        "rss_before": before,
        "rss_peak": peak,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="the transfer benchmark's measured child")
    parser.add_argument("--child", required=True, help="JSON arguments from the harness")
    args = parser.parse_args()
    print(json.dumps(child(json.loads(args.child))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
