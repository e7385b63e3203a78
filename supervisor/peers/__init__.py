"""Synchronous HTTP clients for the peers in CONTRACT.md sections 2-5.

- `http`: the shared session, the retry policy (why each call is or is not retried) and
  the base client that maps failures to `PeerError`;
- `multipart`: the streamed multipart/form-data body of uploads;
- `catalog`, `blob`, `user_service`, `user_manager`: one client per peer;
- here: `Peers`, the four clients on one shared session, built from the settings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from supervisor.config import Settings
from supervisor.errors import PeerError
from supervisor.peers.blob import BlobClient
from supervisor.peers.catalog import BlendFileRef, CatalogClient
from supervisor.peers.http import PeerClient, RetryPolicy, Timeout, make_session
from supervisor.peers.multipart import UPLOAD_CHUNK_BYTES
from supervisor.peers.user_manager import UserManagerClient
from supervisor.peers.user_service import UserServiceClient

__all__ = [
    "UPLOAD_CHUNK_BYTES",
    "BlendFileRef",
    "BlobClient",
    "CatalogClient",
    "PeerClient",
    "Peers",
    "RetryPolicy",
    "Timeout",
    "UserManagerClient",
    "UserServiceClient",
    "make_session",
]


@dataclass
class Peers:
    """The four clients on one shared session; build with `from_settings`, end with `close`."""

    catalog: CatalogClient
    blob: BlobClient
    users: UserServiceClient
    user_manager: UserManagerClient
    # The most one call can take, retries of its connection included: a message whose
    # send may still be under way is not handed to anyone else for this long.
    longest_call_seconds: float = 60.0

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        policy: RetryPolicy | None = None,
        on_failure: Callable[[PeerError], None] | None = None,
    ) -> Peers:
        """Clients for the configured peers: `peer_timeout_seconds` for connect and read,
        `peer_retries` retries unless `policy` says otherwise. `on_failure` hears of every
        transient failure (the status shows peers that are failing)."""
        policy = policy or RetryPolicy(retries=settings.peer_retries)
        session = make_session(policy)
        timeout = (settings.peer_timeout_seconds, settings.peer_timeout_seconds)
        options: dict[str, Any] = {"timeout": timeout, "policy": policy, "on_failure": on_failure}
        return cls(
            catalog=CatalogClient(settings.mongodb_service, session, **options),
            blob=BlobClient(settings.blob_service, session, **options),
            users=UserServiceClient(settings.user_service, session, **options),
            user_manager=UserManagerClient(settings.user_manager_service, session, **options),
            longest_call_seconds=(policy.retries + 2) * settings.peer_timeout_seconds
            + policy.retries * policy.backoff_max,
        )

    def close(self) -> None:
        """Close the shared session (and any session a client was given separately)."""
        for client in (self.catalog, self.blob, self.users, self.user_manager):
            client.close()

    def __enter__(self) -> Peers:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
