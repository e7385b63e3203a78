"""Refusals: the one exception for a message or event we will not act on, and what becomes
of it (logged once with the reason, counted in Redis, kept on the dead-letter queue for
inspection). `refuse` never raises: a refusal must not take the consumer down."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from supervisor import metrics

if TYPE_CHECKING:
    from supervisor.services import Services

logger = logging.getLogger(__name__)

REFUSED_COUNTER = "supervisor:refused-messages"


class Refused(Exception):
    """A message that makes no sense, or an event that does not fit our state (not our
    user, frame or session). `reason` is a short machine-friendly code, counted per code;
    `detail` says what was wrong with this one."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def refuse(
    sv: Services,
    *,
    reason: str,
    detail: str,
    routing_key: str | None,
    body: bytes | str,
    workload_id: str | None = None,
    user_id: str | None = None,
) -> None:
    logger.warning(
        "message refused",
        extra={
            "reason": reason,
            "detail": detail[:200],
            "routing_key": (routing_key or "")[:200],
            "workload_id": workload_id,
            "user_id": user_id,
        },
    )
    metrics.REFUSED.labels(reason).inc()
    try:
        sv.redis.hincrby(REFUSED_COUNTER, reason, 1)
    except Exception:
        logger.warning("could not count a refused message", exc_info=True)
    try:
        sv.dead_letters.keep(reason=f"{reason}: {detail}"[:500], routing_key=routing_key, body=body)
    except Exception:
        logger.warning("could not dead-letter a refused message", exc_info=True)
