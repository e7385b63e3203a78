"""Run every benchmark next to its baseline, print the table, write bench/results.json.

    .venv/bin/python -m bench                  # full: several rounds, ~10-15 minutes
    .venv/bin/python -m bench --smoke          # tiny sizes, 1 round, < 60 s (CI)
    .venv/bin/python -m bench --only status    # one benchmark (repeatable)
    .venv/bin/python -m bench --only intake --profile   # + py-spy of the worker
    .venv/bin/python -m bench --only stragglers         # opt-in only, ~7 minutes
    .venv/bin/python -m bench --only scaleout           # opt-in: 1, 2 and 4 workers

The exit status is non-zero only when a benchmark crashed; missed targets are reported
in the table and in results.json, never as a failure, so CI keeps the benchmarks working
without depending on the machine's speed.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.harness import (  # noqa: E402
    RESULTS,
    ForeignLoad,
    Options,
    Row,
    log,
    machine_facts,
    table,
    write_results,
)

BENCHMARKS = ("intake", "status", "scale", "transfer", "blend", "eta")
# Run only when named with --only: too long for the default set.
OPT_IN = ("stragglers", "scaleout")


def chosen(only: list[str] | None) -> list[str]:
    """The benchmarks to run, in their order: those named, else the default set."""
    return [name for name in BENCHMARKS + OPT_IN if name in (only or BENCHMARKS)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 1 round")
    parser.add_argument(
        "--only",
        action="append",
        choices=BENCHMARKS + OPT_IN,
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS + OPT_IN)}",
    )
    parser.add_argument("--rounds", type=int, help="rounds per benchmark (default: its own)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record py-spy profiles (intake: one extra, unmeasured round)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="scratch space on the disk to measure (default: the temp dir)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The in-process simulator warns about demand from other sessions on a shared broker.
    logging.getLogger("simulator").setLevel(logging.ERROR)
    opts = Options(smoke=args.smoke, rounds=args.rounds, profile=args.profile, workdir=args.workdir)
    names = chosen(args.only)
    began = time.perf_counter()
    payload: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "smoke" if args.smoke else "full",
        "machine": machine_facts(),
        "benchmarks": {},
    }
    rows: list[Row] = []
    crashed: list[str] = []
    noisy: list[str] = []
    for name in names:
        log(f"{name}: starting")
        started = time.perf_counter()
        entry: dict[str, Any] = {}
        foreign = ForeignLoad()
        foreign.sample()
        foreign.start()
        try:
            module = importlib.import_module(f"bench.{name}")
            found = module.run(opts)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 (pytest.skip from tests.services is one)
            crashed.append(name)
            entry.update(status="crashed", error=f"{type(exc).__name__}: {exc}"[:4000])
            log(f"{name}: CRASHED\n{traceback.format_exc()}")
        else:
            rows += found
            entry.update(status="ok", rows=[row.as_json() for row in found])
        entry["seconds"] = round(time.perf_counter() - started, 1)
        entry["foreign_load"] = foreign.stop()
        payload["benchmarks"][name] = entry
        log(f"{name}: done in {entry['seconds']}s")
        if entry["foreign_load"]["cores"] >= 0.1:
            noisy.append(f"{name} ({entry['foreign_load']['cores']} cores)")
    payload["seconds"] = round(time.perf_counter() - began, 1)
    write_results(args.output, payload)
    print(table(rows))
    print(
        f"\n{len(rows)} measures, {sum(r.met is False for r in rows)} targets missed, "
        f"{payload['seconds']}s; figures in {args.output}"
    )
    if noisy:
        print(
            "NOTE: other processes took CPU during " + ", ".join(noisy) + "; those figures are "
            "pessimistic (foreign_load in the JSON)."
        )
    if crashed:
        print(f"CRASHED: {', '.join(crashed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
