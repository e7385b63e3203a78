"""Fixtures shared by the integration tests of one module or more."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from supervisor.service import Supervisor


@dataclass
class PeerLog:
    """What reached the peers, in the order it was sent: the User Manager's messages
    (AMQP topics and the HTTP `new-session` / `cleanup-session` alike), the User Service's
    messages and the catalog's state changes. Only sends that succeeded are logged."""

    entries: list[tuple[str, str, Any]] = field(default_factory=list)

    def user_manager(self) -> list[tuple[str, Any]]:
        return [(topic, data) for peer, topic, data in self.entries if peer == "user-manager"]

    def user_manager_topics(self) -> list[str]:
        return [topic for topic, _data in self.user_manager()]

    def sequence(self) -> list[str]:
        """Every entry as one string: 'user-manager:<topic>', 'user:<id>:<topic>',
        'catalog:<topic>'."""
        out = []
        for peer, topic, data in self.entries:
            if peer == "user":
                out.append(f"user:{data['user_id']}:{topic}")
            else:
                out.append(f"{peer}:{topic}")
        return out


def _after(call: Callable[..., Any], log: Callable[..., None]) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = call(*args, **kwargs)
        log(*args, **kwargs)
        return result

    return wrapped


@pytest.fixture
def peer_log(supervisor: Supervisor) -> PeerLog:
    """Request it before any fixture that starts a workload, to see its first messages."""
    log = PeerLog()
    entries = log.entries
    publisher = supervisor.publisher
    publisher.publish = _after(  # type: ignore[method-assign]
        publisher.publish,
        lambda body: entries.append(("user-manager", body["topic"], body["data"])),
    )
    um = supervisor.peers.user_manager
    um.register_session = _after(  # type: ignore[method-assign]
        um.register_session,
        lambda _id, count: entries.append(("user-manager", "new-session", {"user_count": count})),
    )
    um.cleanup_session = _after(  # type: ignore[method-assign]
        um.cleanup_session, lambda _id: entries.append(("user-manager", "cleanup-session", {}))
    )
    users = supervisor.peers.users
    users.send = _after(  # type: ignore[method-assign]
        users.send,
        lambda user_id, topic, data: entries.append(
            ("user", topic, {"user_id": user_id, "data": data})
        ),
    )
    catalog = supervisor.peers.catalog
    catalog.change_state = _after(  # type: ignore[method-assign]
        catalog.change_state,
        lambda **body: entries.append(("catalog", "change-state", body)),
    )
    return log
