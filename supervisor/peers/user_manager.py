"""The User Manager's HTTP side (CONTRACT.md §5): registering this supervisor and dropping
the registration. The rest of the User Manager contract is AMQP, not here."""

from __future__ import annotations

from supervisor.keys import check_int, check_text
from supervisor.peers.http import PeerClient


class UserManagerClient(PeerClient):
    """The User Manager's HTTP side: supervisor registration."""

    peer = "user-manager"
    idempotent_posts = ("/api/user-manager/session-supervisor/new-session",)

    def register_session(self, session_id: str, user_count: int) -> None:
        """Register this supervisor; the User Manager routes nothing to unknown ones, and
        forgets every registration when it restarts, so this is repeated (it is idempotent)."""
        form = [
            ("user_count", str(check_int("user_count", user_count, minimum=0))),
            ("session_supervisor_id", check_text("session_id", session_id)),
        ]
        operation = "new-session"
        path = "/api/user-manager/session-supervisor/new-session"
        with self._exchange(operation, "POST", path, data=form) as resp:
            if not 200 <= resp.status_code < 300:
                raise self._status_error(resp, operation)

    def cleanup_session(self, session_id: str) -> None:
        """Drop our registration and routing key; without it the User Manager's maps grow
        for ever. A repeat is harmless."""
        form = [("session_supervisor_id", check_text("session_id", session_id))]
        operation = "cleanup-session"
        path = "/api/user-manager/session-supervisor/cleanup-session"
        with self._exchange(operation, "DELETE", path, data=form) as resp:
            if not 200 <= resp.status_code < 300:
                raise self._status_error(resp, operation)
