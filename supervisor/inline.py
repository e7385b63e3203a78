"""Handed-off work run at once, in the caller's process: for tests and one-off scripts,
where no worker takes the tasks."""

from __future__ import annotations

import time

from supervisor.config import Settings
from supervisor.outbox import drain
from supervisor.services import Services
from supervisor.workloads import complete_workloads, prepare_workload

INLINE_DRAIN_WAIT_SECONDS = 10.0


class InlineJobs:
    """`Jobs` that run in the calling process against the services they were built with
    (`inline_services`)."""

    def __init__(self) -> None:
        self.services: Services | None = None

    def _sv(self) -> Services:
        if self.services is None:
            raise RuntimeError("InlineJobs used before inline_services attached it")
        return self.services

    def prepare_workload(self, workload_id: str) -> None:
        prepare_workload(self._sv(), workload_id)

    def unbind_later(self, workload_id: str) -> None:
        """Inline there is no later: the grace period is ended when it is over (end_grace),
        by whoever calls it; here nothing is scheduled."""

    def drain_outbox(self) -> None:
        """Drain until nothing is due, waiting (up to INLINE_DRAIN_WAIT_SECONDS) for lanes
        another drainer holds: inline there is no beat to send what is left later."""
        sv = self._sv()
        deadline = time.monotonic() + INLINE_DRAIN_WAIT_SECONDS
        while True:
            result = drain(
                sv.db,
                sv.publisher,
                sv.peers,
                on_all_recorded=lambda ids: complete_workloads(sv, ids),
            )
            if result.failed or (result.sent == 0 and not result.lanes_busy):
                return
            if result.sent == 0:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.01)


def inline_services(settings: Settings) -> Services:
    """A `Services` whose handed-off work runs at once, in this process."""
    jobs = InlineJobs()
    sv = Services.from_settings(settings, jobs=jobs)
    jobs.services = sv
    return sv
