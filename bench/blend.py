"""blend: `parse_scene_range` and `read_scene_range` against reading the file's bytes once.

Files: the largest corpus file that parses (../shared/blend-corpus/public/meshcache-source.blend
when present, else the largest good file in tests/fixtures/blend), and a generated ~100 MB
file: a Blender 5 fixture with one big unreferenced DATA block before its first block,
which is what "must not read more than it needs" is about. A second generated file with
~1 KiB blocks all the way (the block-header walk at its worst) is reported without a target.
Times are medians with a warm page cache.
"""

from __future__ import annotations

import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.harness import MiB, Options, Row, at_most, log
from supervisor.blendfile import parse_scene_range, read_scene_range
from supervisor.errors import BlendFileError

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "tests/fixtures/blend/blender-5.0/two_scenes_active_second.blend"
CORPUS_FILE = ROOT.parent / "shared/blend-corpus/public/meshcache-source.blend"
FIXTURES = ROOT / "tests/fixtures/blend"
V1_HEADER = 17
V1_BHEAD = struct.Struct("<4siQqq")  # code, SDNAnr, old pointer, length, count
CHUNK = MiB
LIMIT_MS = 50.0


def read_bytes_once(path: Path) -> None:
    with path.open("rb") as fh:
        while fh.read(CHUNK):
            pass


def largest_good(candidates: list[Path]) -> Path | None:
    for path in sorted(candidates, key=lambda p: p.stat().st_size, reverse=True):
        try:
            parse_scene_range(path)
        except BlendFileError:
            continue
        return path
    return None


def corpus_file() -> Path | None:
    if CORPUS_FILE.is_file():
        return CORPUS_FILE
    return largest_good([p for p in FIXTURES.rglob("*.blend") if "bad" not in p.parts])


def write_big_block(out: Path, size: int) -> None:
    """The fixture with one `size`-byte unreferenced DATA block before its first block."""
    data = SOURCE.read_bytes()
    with out.open("wb") as fh:
        fh.write(data[:V1_HEADER] + V1_BHEAD.pack(b"DATA", 0, 0xDEAD0000, size, 1))
        filler = b"\x5a" * CHUNK
        for done in range(0, size, CHUNK):
            fh.write(filler[: min(CHUNK, size - done)])
        fh.write(data[V1_HEADER:])


def write_small_blocks(out: Path, size: int, block: int = 1024) -> int:
    """The fixture with ~`size` bytes of `block`-byte DATA blocks first; returns the count."""
    data = SOURCE.read_bytes()
    count = size // (V1_BHEAD.size + block)
    payload = b"\x5a" * block
    with out.open("wb") as fh:
        fh.write(data[:V1_HEADER])
        for first in range(0, count, 4096):
            fh.write(
                b"".join(
                    V1_BHEAD.pack(b"DATA", 0, 0x10000000 + i, block, 1) + payload
                    for i in range(first, min(first + 4096, count))
                )
            )
        fh.write(data[V1_HEADER:])
    return count


def samples_ms(func: Callable[[], object], rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        func()
        times.append((time.perf_counter() - started) * 1000)
    return times


def run(opts: Options) -> list[Row]:
    rounds = opts.rounds_or(5)
    size_mb = 8 if opts.smoke else 100
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-blend-", dir=opts.workdir) as folder:
        work = Path(folder)
        cases: list[tuple[str, Path, bool]] = []
        largest = corpus_file()
        if largest is not None:
            cases.append((f"corpus {largest.name}", largest, True))
        big = work / "big_block.blend"
        write_big_block(big, size_mb * MiB)
        cases.append((f"generated {size_mb} MB, one big block", big, True))
        if not opts.smoke:
            dense = work / "small_blocks.blend"
            count = write_small_blocks(dense, size_mb * MiB)
            cases.append((f"generated {size_mb} MB, {count:,} 1 KiB blocks", dense, False))
        for label, path, targeted in cases:
            expected = parse_scene_range(path)
            if read_scene_range(path) != expected:
                raise RuntimeError(f"read_scene_range and parse_scene_range differ on {path}")
            read_bytes_once(path)  # warm the page cache for every contender alike
            baseline = samples_ms(lambda p=path: read_bytes_once(p), rounds)
            parse = samples_ms(lambda p=path: parse_scene_range(p), rounds)
            isolated = samples_ms(lambda p=path: read_scene_range(p), rounds)
            file_mb = path.stat().st_size / MiB
            note = f"{file_mb:.1f} MB on disk; baseline: read the bytes once"
            target = [at_most(LIMIT_MS, "<= 50 ms")] if targeted else []
            rows.append(
                Row("blend", f"{label}: parse_scene_range", "ms", parse, baseline, target, note)
            )
            rows.append(
                Row(
                    "blend",
                    f"{label}: read_scene_range (child process)",
                    "ms",
                    isolated,
                    baseline,
                    target,
                    note,
                )
            )
            log(f"blend {label}: parse {sorted(parse)[len(parse) // 2]:.1f} ms")
    return rows
