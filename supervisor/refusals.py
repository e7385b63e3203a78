"""Refused messages: logged once with the reason, counted in Redis, kept on the dead-letter
queue for inspection. Never raises: a refusal must not take the consumer down."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from supervisor.service import Supervisor

logger = logging.getLogger(__name__)

REFUSED_COUNTER = "supervisor:refused-messages"


def refuse(
    sv: Supervisor,
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
    try:
        sv.redis.hincrby(REFUSED_COUNTER, reason, 1)
    except Exception:
        logger.warning("could not count a refused message", exc_info=True)
    try:
        sv.dead_letters.keep(reason=f"{reason}: {detail}"[:500], routing_key=routing_key, body=body)
    except Exception:
        logger.warning("could not dead-letter a refused message", exc_info=True)


def refused_counts(sv: Supervisor) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in sv.redis.hgetall(REFUSED_COUNTER).items()}
