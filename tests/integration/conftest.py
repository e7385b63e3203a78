"""Fixtures and hooks shared by the integration tests of one module or more."""

from __future__ import annotations

import pytest

from supervisor.services import Services
from tests.integration.helpers import PeerLog, after
from tests.integration.rendering import start_running_workload
from tests.peers import Peers


@pytest.fixture
def peer_log(sv: Services) -> PeerLog:
    """Request it before any fixture that starts a workload, to see its first messages."""
    log = PeerLog()
    entries = log.entries
    publisher = sv.publisher
    publisher.publish = after(  # type: ignore[method-assign]
        publisher.publish,
        lambda body: entries.append(("user-manager", body["topic"], body["data"])),
    )
    um = sv.peers.user_manager
    um.register_session = after(  # type: ignore[method-assign]
        um.register_session,
        lambda _id, count: entries.append(("user-manager", "new-session", {"user_count": count})),
    )
    um.cleanup_session = after(  # type: ignore[method-assign]
        um.cleanup_session, lambda _id: entries.append(("user-manager", "cleanup-session", {}))
    )
    users = sv.peers.users
    users.send = after(  # type: ignore[method-assign]
        users.send,
        lambda user_id, topic, data: entries.append(
            ("user", topic, {"user_id": user_id, "data": data})
        ),
    )
    catalog = sv.peers.catalog
    catalog.change_state = after(  # type: ignore[method-assign]
        catalog.change_state,
        lambda **body: entries.append(("catalog", "change-state", body)),
    )
    return log


@pytest.fixture
def session_id(sv: Services, peers: Peers) -> str:
    """A running workload of frames 10..20 (11 frames), no users yet."""
    return start_running_workload(sv, peers)
