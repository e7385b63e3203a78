"""transfer: one 1 GiB frame moved temp -> final by `BlobClient.transfer_temp_to_final`,
unchecked and validated (supervisor/frames/validation.py), and many 1920x1080 frames.

Two Blob Services, both in the harness process on the same disk: the simulator's (werkzeug,
multipart parsed into a spool file) and a minimal one (sendfile out, the image part copied
to a spool file with no parser in between), so a slow simulator shows up as the gap between
the two rows.
The frame is a valid PNG (16384 pixels wide, rows deflated at level 0, so any size is quick
to write); each round moves it through each server twice, with `check=None` and with a
FrameCheck expecting its format and size (too big for the content check), and the CPU the
check costs per GiB is the difference of the two in the same round.
Then frames of a render: ~2 MB 1920x1080 PNGs moved one after the other through the minimal
server, unchecked, checked without the content check, and checked with it (every frame's
pixels judged on the stream: the first rows inflated, until one is not flat); the check's
CPU per frame is again the difference.
Each run is a fresh child (`python -m bench.transfer --child ...`) whose RSS is sampled
every 10 ms. Baseline, same run: `cp` of the same bytes on the same disk, with the same
warm page cache.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from bench.harness import GiB, MiB, Options, Row, at_most, log, ratio_at_least, run_child

TEMP_KEY = "temp/bench/user/1-bench.png"
FINAL_KEY = "bench/transfer/001.png"
FRAME_TEMP_KEY = "temp/bench/user/2-frame.png"
RSS_GROWTH_LIMIT_MIB = 64
COPY_CHUNK = 256 * 1024
PNG_WIDTH = 16384
FRAME_SIZE = (1920, 1080)
# The supervisor's default frame_content_check_max_bytes: a ~2 MB frame's pixels are
# judged, the 1 GiB one's are not.
CONTENT_MAX_BYTES = 64 * MiB
# Per-frame runs: none, the stream checks alone, and the stream checks plus the content check.
FRAME_MODES = {"unchecked": None, "checked": 0, "checked + content": CONTENT_MAX_BYTES}


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


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png(path: Path, size: int, width: int = PNG_WIDTH) -> tuple[int, int]:
    """A valid RGB PNG of about `size` bytes (at least one row): rows of incompressible
    bytes (slices of one random MiB) deflated at level 0, so the file is as big as its
    pixels and quick to write. Returns its (width, height)."""
    row_bytes = 1 + 3 * width
    height = max(1, size // row_bytes)
    block = os.urandom(MiB)
    rows_per_write = max(1, MiB // row_bytes)
    deflate = zlib.compressobj(0)
    with path.open("wb") as out:
        out.write(b"\x89PNG\r\n\x1a\n")
        out.write(_png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)))
        for first in range(0, height, rows_per_write):
            rows = bytearray()
            for index in range(first, min(height, first + rows_per_write)):
                start = (index * 7919) % (MiB - 3 * width)
                rows += b"\x00" + block[start : start + 3 * width]
            data = deflate.compress(bytes(rows))
            if data:
                out.write(_png_chunk(b"IDAT", data))
        out.write(_png_chunk(b"IDAT", deflate.flush()))
        out.write(_png_chunk(b"IEND", b""))
    return width, height


def render_like_frame(width: int, height: int) -> bytes:
    """A PNG that compresses like a render (~2 MB at 1920x1080): gradients and noise."""
    from PIL import Image

    noise = Image.effect_noise((width, height), 4)
    ramp = Image.linear_gradient("L").resize((width, height))
    mirrored = ramp.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = Image.merge("RGB", (Image.blend(ramp, noise, 0.5), mirrored, noise))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(4 * MiB):
            digest.update(block)
    return digest.hexdigest()


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
    frames = 10 if opts.smoke else 100
    rounds = opts.rounds_or(3)
    figures: dict[tuple[str, bool], list[dict[str, Any]]] = {}
    per_frame: dict[str, list[dict[str, Any]]] = {mode: [] for mode in FRAME_MODES}
    copies: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-transfer-", dir=opts.workdir) as folder:
        tmp = Path(folder)
        source = tmp / "frame.png"
        width, height = write_png(source, size)
        size = source.stat().st_size
        digest = sha256_of(source)
        # Too big to decode, always: the 1 GiB frame is, and so is the smoke run's 32 MiB.
        content_max = min(CONTENT_MAX_BYTES, size - 1)
        expected = {"width": width, "height": height, "content_max_bytes": content_max}
        frame = render_like_frame(*FRAME_SIZE)
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
            minimal.temp_path(FRAME_TEMP_KEY).write_bytes(frame)
            servers: dict[str, tuple[str, Callable[[], Path]]] = {
                "simulator": (sim.base_url, lambda: sim.blobs.path(FRAMES_BUCKET, FINAL_KEY)),
                "minimal": (minimal.base_url, lambda: minimal.final_path(FINAL_KEY)),
            }
            cp_seconds(source, tmp / "warm.copy")
            for index in range(rounds):
                copies.append(cp_seconds(source, tmp / "cp.copy"))
                for name, (base_url, final) in servers.items():
                    for checked in (False, True):
                        args = {
                            "base_url": base_url,
                            "workdir": str(work),
                            "check": expected if checked else None,
                        }
                        served_from = time.process_time()
                        result = run_child("bench.transfer", args, timeout=600)
                        result["server_cpu"] = time.process_time() - served_from
                        stored = final()
                        if result["bytes"] != size or stored.stat().st_size != size:
                            raise RuntimeError(f"transfer via {name}: sizes differ")
                        if checked and result["sha256"] != digest:
                            raise RuntimeError(f"transfer via {name}: the check's digest differs")
                        stored.unlink()
                        figures.setdefault((name, checked), []).append(result)
                        log(
                            f"transfer round {index + 1}/{rounds} via {name}"
                            f"{', validated' if checked else ''}: "
                            f"{size / MiB / result['seconds']:.0f} MiB/s, cp "
                            f"{size / MiB / copies[-1]:.0f} MiB/s"
                        )
                for mode, content_max in FRAME_MODES.items():
                    args = {
                        "base_url": minimal.base_url,
                        "workdir": str(work),
                        "frames": frames,
                        "content_max_bytes": content_max,
                    }
                    result = run_child("bench.transfer", args, timeout=600)
                    per_frame[mode].append(result)
                    log(
                        f"transfer round {index + 1}/{rounds}, {frames} frames {mode}: "
                        f"{result['cpu'] * 1000 / frames:.1f} ms CPU a frame"
                    )
                minimal.final_path(FINAL_KEY).unlink()
            if any(work.iterdir()):
                raise RuntimeError("transfer left a temp file behind")
    return _rows(size, copies, figures) + _frame_rows(len(frame), frames, per_frame)


def _rows(
    size: int, copies: list[float], figures: dict[tuple[str, bool], list[dict[str, Any]]]
) -> list[Row]:
    cp_rate = [size / MiB / s for s in copies]
    rows = []
    label = f"{size / MiB:,.0f} MiB"
    for (name, checked), results in figures.items():
        how = f"{label} via {name} blob HTTP{', validated' if checked else ''}"
        rows.append(
            Row(
                "transfer",
                f"{how}: throughput",
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
                f"{how}: RSS growth",
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
                    f"{how}: CPU s per GiB, {side}",
                    "s",
                    [r[key] * GiB / size for r in results],
                    None,
                    [],
                    note + "; independent of how busy the machine is, unlike wall time",
                )
            )
    for name in dict.fromkeys(name for name, _ in figures):
        pairs = zip(figures[(name, False)], figures[(name, True)], strict=True)
        rows.append(
            Row(
                "transfer",
                f"{label} via {name} blob HTTP: validation CPU s per GiB",
                "s",
                [(on["cpu"] - off["cpu"]) * GiB / size for off, on in pairs],
                None,
                [],
                "the child's CPU validated minus unchecked, same round: magic, header, "
                "trailer, SHA-256 (the frame is above the content check's limit)",
            )
        )
    return rows


def _frame_rows(
    frame_bytes: int, frames: int, per_frame: dict[str, list[dict[str, Any]]]
) -> list[Row]:
    what = f"{FRAME_SIZE[0]}x{FRAME_SIZE[1]} PNG frames of {frame_bytes / 1e6:.1f} MB"
    rows = []
    for mode, results in per_frame.items():
        rows.append(
            Row(
                "transfer",
                f"{what} via minimal blob HTTP, {mode}: CPU ms per frame",
                "ms",
                [r["cpu"] * 1000 / frames for r in results],
                None,
                [],
                f"user + system CPU of the child over {frames} transfers of the frame",
            )
        )
    unchecked = per_frame["unchecked"]
    for mode in ("checked", "checked + content"):
        pairs = zip(unchecked, per_frame[mode], strict=True)
        rows.append(
            Row(
                "transfer",
                f"{what}: validation CPU ms per frame, {mode}",
                "ms",
                [(on["cpu"] - off["cpu"]) * 1000 / frames for off, on in pairs],
                None,
                [],
                "the child's CPU minus the unchecked one's, same round"
                + (
                    "; the content check judges each frame's pixels as they pass (it inflates "
                    "a PNG's first rows, until one is not flat, and checks its CRCs)"
                    if "content" in mode
                    else ""
                ),
            )
        )
    rows.append(
        Row(
            "transfer",
            f"{what}, checked + content: RSS growth",
            "MiB",
            [(r["rss_peak"] - r["rss_before"]) / MiB for r in per_frame["checked + content"]],
            None,
            [at_most(RSS_GROWTH_LIMIT_MIB, "<= 64 MiB")],
            "peak RSS of the child minus its RSS before: a few rows inflated and zlib's window",
        )
    )
    return rows


def child(args: dict[str, Any]) -> dict[str, Any]:
    from bench.harness import RssSampler
    from supervisor.frames.validation import Expectation, FrameCheck
    from supervisor.peers import BlobClient, RetryPolicy, make_session

    policy = RetryPolicy(retries=0)
    client = BlobClient(args["base_url"], make_session(policy), timeout=(10, 120), policy=policy)
    frames = args.get("frames")
    if frames is None:
        temp_key, count, expect = TEMP_KEY, 1, args["check"]
        if expect is not None:
            expect = Expectation(
                "PNG", expect["width"], expect["height"], expect["content_max_bytes"]
            )
    else:
        content_max = args["content_max_bytes"]
        temp_key, count = FRAME_TEMP_KEY, frames
        expect = None if content_max is None else Expectation("PNG", *FRAME_SIZE, content_max)
    make_check = None if expect is None else (lambda: FrameCheck(expect))
    sampler = RssSampler(every=0.01)
    sampler.start()
    time.sleep(0.05)
    before = sampler.current()
    sampler.reset()
    began = time.perf_counter()
    cpu_from = time.process_time()
    for _ in range(count):
        transferred = client.transfer_temp_to_final(
            temp_key=temp_key,
            final_key=FINAL_KEY,
            extension="png",
            max_bytes=8 * GiB,
            workdir=Path(args["workdir"]),
            check=make_check,
        )
    seconds = time.perf_counter() - began
    cpu = time.process_time() - cpu_from
    peak = sampler.stop()
    client.close()
    report = transferred.report
    if report is not None and report.problem is not None:
        raise RuntimeError(f"the bench's frame was refused: {report.problem}")
    decoded = report is not None and report.content_skipped is None
    if frames is not None and expect is not None and expect.content_max_bytes and not decoded:
        raise RuntimeError("the frames' content was not checked")
    return {
        "seconds": seconds,
        "cpu": cpu,
        "bytes": transferred.size,
        "sha256": None if report is None else report.sha256,
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
