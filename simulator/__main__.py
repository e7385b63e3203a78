"""`python -m simulator`: run every peer of the supervisor until SIGTERM or SIGINT, logging
one JSON object per line."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from pythonjsonlogger.json import JsonFormatter

from simulator.config import (
    DEFAULT_BROKER_URL,
    DEFAULT_DEMO_BLEND,
    DEFAULT_QUEUE,
    FRAME_TIME_DISTS,
    PEER_MODES,
    RENDER_MODES,
    SimulatorConfig,
)
from simulator.core import Simulator, SimulatorError

logger = logging.getLogger("simulator")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m simulator",
        description="Play the catalog, Blob Service, User Service and User Manager.",
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    add("--port", type=int, default=13000, help="HTTP port, 0 for any (default 13000)")
    add("--data-dir", type=Path, default=Path("var/simulator"), help="buckets and records")
    add("--broker-url", default=DEFAULT_BROKER_URL, help="amqp://... or redis://...")
    add("--users", type=int, default=5, help="size of the idle-user pool")
    add("--frame-time", type=float, default=0.5, help="seconds to render one frame")
    add("--jitter", type=float, default=0.0, help="± seconds, uniform, on each frame")
    add(
        "--frame-time-dist",
        choices=FRAME_TIME_DISTS,
        default="fixed",
        help="fixed: frame time ± jitter; lognormal or pareto: heavy-tailed, mean frame time",
    )
    add(
        "--tail",
        type=float,
        default=None,
        help="lognormal's sigma (> 0, default 0.5) or pareto's alpha (> 1, default 2.5)",
    )
    add("--slow-share", type=float, default=0.0, help="share of users slow from the start")
    add("--slow-factor", type=float, default=1.0, help="how many times slower they are")
    add("--slowdown-share", type=float, default=0.0, help="share of users that slow down")
    add("--slowdown-factor", type=float, default=1.0, help="how many times slower they get")
    add(
        "--slowdown-after",
        type=float,
        default=0.0,
        help="seconds of rendering before they slow down",
    )
    add("--stall-share", type=float, default=0.0, help="share of users that hang")
    add("--stall-after", type=float, default=0.0, help="seconds of rendering before they hang")
    add(
        "--bad-users",
        default="",
        help="users uploading bad images, e.g. black=1,truncated=1,wrong-resolution=1,text=1",
    )
    add(
        "--join-delay",
        type=float,
        default=0.0,
        help="seconds between waves (ideal) or arrivals (real) of users",
    )
    add(
        "--join-batch",
        type=int,
        default=0,
        help="users per wave (ideal) or arrival (real; connected at start too), 0 for all",
    )
    add("--disconnect-share", type=float, default=0.0, help="share of users that disconnect")
    add("--fail-share", type=float, default=0.0, help="share of frames that fail to send")
    add("--early-complete-share", type=float, default=0.0, help="share of users done too early")
    add("--duplicate", type=float, default=0.0, help="probability an event is sent twice")
    add("--reorder", type=float, default=0.0, help="most seconds an event is held back")
    add("--quirks", action="store_true", help="use the contract's tolerated variants at random")
    add(
        "--peer-mode",
        choices=PEER_MODES,
        default="real",
        help="real: the peers as they really behave (CONTRACT.md section 7); ideal: as written",
    )
    add("--seed", type=int, default=None, help="random seed for a reproducible run")
    add("--demo-blend", default=DEFAULT_DEMO_BLEND, help="fixture name or path, '' for none")
    add("--render", choices=RENDER_MODES, default="placeholder", help="placeholder PNG or bpy")
    add("--queue", default=DEFAULT_QUEUE, help="queue bound to USER_MANAGER_EXCHANGE")
    add("--private-queue", action="store_true", help="an exclusive queue of our own instead")
    add("--workers", type=int, default=4, help="threads running the users' timers")
    add("--log-level", default="INFO")
    return parser.parse_args(argv)


def config_from(args: argparse.Namespace) -> SimulatorConfig:
    return SimulatorConfig(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        broker_url=args.broker_url,
        users=args.users,
        frame_time=args.frame_time,
        jitter=args.jitter,
        frame_time_dist=args.frame_time_dist,
        tail=args.tail,
        slow_share=args.slow_share,
        slow_factor=args.slow_factor,
        slowdown_share=args.slowdown_share,
        slowdown_factor=args.slowdown_factor,
        slowdown_after=args.slowdown_after,
        stall_share=args.stall_share,
        stall_after=args.stall_after,
        bad_users=args.bad_users,
        join_delay=args.join_delay,
        join_batch=args.join_batch,
        disconnect_share=args.disconnect_share,
        fail_share=args.fail_share,
        early_complete_share=args.early_complete_share,
        duplicate=args.duplicate,
        reorder=args.reorder,
        quirks=args.quirks,
        peer_mode=args.peer_mode,
        seed=args.seed,
        demo_blend=args.demo_blend or None,
        render=args.render,
        user_manager_queue=args.queue,
        private_queue=args.private_queue,
        workers=args.workers,
    )


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(LOG_FORMAT, rename_fields={"asctime": "time", "levelname": "level"})
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.log_level)
    try:
        config = config_from(args)
    except ValueError as exc:
        logger.error("bad arguments: %s", exc, extra={"event": "bad-arguments"})
        return 2
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        logger.info("signal received", extra={"event": "signal", "signal": signum})
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        with Simulator(config) as sim:
            logger.info("serving", extra={"event": "serving", "base_url": sim.base_url})
            stop.wait()
    except SimulatorError as exc:
        logger.error("cannot start: %s", exc, extra={"event": "start-failed"})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
