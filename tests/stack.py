"""The whole platform on one machine: Procfile processes of the supervisor, the simulator
playing every peer, real Postgres, Redis and RabbitMQ. Used by end-to-end tests and
benchmarks; each Stack has its own database, Redis database and queue names."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from kombu import Connection

from simulator import Simulator, SimulatorConfig
from tests import services
from tests.processes import ProcfileProcess, free_port, process_env, wait_until

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "/api/session-supervisor-service"


def worker_names(count: int) -> list[str]:
    """Names of `count` instances of the Procfile's `worker`: worker, worker-2, ..."""
    return ["worker", *(f"worker-{index}" for index in range(2, count + 1))]


@dataclass
class Stack:
    env: dict[str, str]
    simulator: Simulator
    processes: dict[str, ProcfileProcess] = field(default_factory=dict)
    log_dir: Path = Path()

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.env['PORT']}{PREFIX}"

    def start(self, *names: str) -> None:
        for name in names:
            process = self.processes.get(name) or ProcfileProcess(name, self.env, self.log_dir)
            self.processes[name] = process.start()
        if "web" in names:
            wait_until(self._web_up, 30, "web to answer")

    def restart(self, name: str) -> None:
        self.processes[name].start()

    def _web_up(self) -> bool:
        try:
            return requests.post(f"{self.api}/", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def status(self, customer_id: str) -> dict[str, Any]:
        response = requests.get(
            f"{self.api}/get-workload-status", params={"customer_id": customer_id}, timeout=5
        )
        return response.json()

    def start_workload(self, customer_id: str, blend: Path, object_id: str = "obj") -> None:
        """Put `blend` in the catalog as the customer's object and start its workload."""
        self.simulator.add_object(customer_id, object_id, blend)
        response = requests.post(
            f"{self.api}/start-workload",
            data={"customer_id": customer_id, "object_id": object_id},
            timeout=30,
        )
        if response.status_code != 200:
            raise RuntimeError(f"start-workload: {response.status_code} {response.text}")

    def wait_completed(self, customer_id: str, timeout: float) -> dict[str, Any]:
        def done() -> bool:
            try:
                body = self.status(customer_id)
            except (requests.RequestException, ValueError):
                return False
            return body.get("status", {}).get("workload_status") in {"completed", "failed"}

        wait_until(done, timeout, f"workload of {customer_id} to finish", step=0.5)
        return self.status(customer_id)["status"]

    def logs(self) -> str:
        return "\n".join(
            f"--- {name} ---\n{process.log_tail(60)}" for name, process in self.processes.items()
        )


@contextmanager
def platform(
    tmp_path: Path, *, embedded_broker: bool = False, **simulator_knobs: Any
) -> Iterator[Stack]:
    """Database migrated by the Procfile's `release`, simulator up; nothing else started.
    The User Manager exchanges live on RabbitMQ, or with `embedded_broker` on the private
    Redis (kombu's Redis transport, as in `make run`)."""
    run_id = uuid.uuid4().hex[:8]
    with ExitStack() as cleanup:
        server = cleanup.enter_context(services.postgres_server_url())
        database_url = cleanup.enter_context(services.throwaway_database(server))
        redis_url = cleanup.enter_context(services.private_redis())
        amqp_url = (
            redis_url.rsplit("/", 1)[0] + "/1" if embedded_broker else services.rabbitmq_url()
        )

        knobs = {"users": 5, "frame_time": 0.02, "demo_blend": None, "seed": 1, **simulator_knobs}
        simulator = Simulator(
            SimulatorConfig(
                broker_url=amqp_url,
                data_dir=tmp_path / "simulator",
                private_queue=True,
                **knobs,
            )
        )
        simulator.start()
        cleanup.callback(simulator.stop)

        log_dir = tmp_path / "logs"
        log_dir.mkdir()
        env = process_env(
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            USER_MANAGER_BROKER_URL=amqp_url,
            INTAKE_QUEUE=f"e2e-intake-{run_id}",
            DEAD_LETTER_QUEUE=f"e2e-dead-letter-{run_id}",
            MONGODB_SERVICE=simulator.base_url,
            BLOB_SERVICE=simulator.base_url,
            USER_SERVICE=simulator.base_url,
            USER_MANAGER_SERVICE=simulator.base_url,
            PORT=str(free_port()),
            FLOWER_PORT=str(free_port()),
            FLOWER_UNAUTHENTICATED_API="true",
            BEAT_SCHEDULE_FILE=str(tmp_path / "celerybeat-schedule"),
            COMPLETION_SETTLE_SECONDS="0.5",
            WEB_CONCURRENCY="2",
            LOG_LEVEL="INFO",
            PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
        )
        if not embedded_broker:
            cleanup.callback(_delete_queues, amqp_url, env)
        stack = Stack(env=env, simulator=simulator, log_dir=log_dir)
        cleanup.callback(_stop_all, stack)
        release = ProcfileProcess("release", env, log_dir)
        code = release.run_to_end(timeout=120)
        assert code == 0, f"release failed:\n{release.log_tail()}"
        yield stack


def _stop_all(stack: Stack) -> None:
    for process in stack.processes.values():
        process.stop()


def _delete_queues(amqp_url: str, env: dict[str, str]) -> None:
    with Connection(amqp_url) as connection:
        channel = connection.default_channel
        for name in (env["INTAKE_QUEUE"], env["DEAD_LETTER_QUEUE"]):
            channel.queue_delete(name)
