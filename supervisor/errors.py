"""Domain errors. The API maps them to status codes; tasks decide retry or give up."""

from __future__ import annotations


class SupervisorError(Exception):
    """Base of every error the domain raises on purpose."""


class InvalidInput(SupervisorError):
    """The caller sent something we refuse (bad id, absurd count)."""


class WorkloadAlreadyActive(SupervisorError):
    """The customer already has an active workload (enforced by the database)."""


class NoActiveWorkload(SupervisorError):
    """The customer has no workload the operation can act on."""


class BlendFileError(SupervisorError):
    """The .blend file cannot give a frame range; the message says why."""


class ObjectNotRenderable(SupervisorError):
    """The catalog does not know the object or gives no usable .blend path."""


class PeerError(SupervisorError):
    """A peer service failed. `transient` says whether a retry may help."""

    def __init__(
        self,
        peer: str,
        operation: str,
        detail: str,
        *,
        status: int | None = None,
        transient: bool = True,
    ) -> None:
        self.peer = peer
        self.operation = operation
        self.detail = detail
        self.status = status
        self.transient = transient
        where = f" (HTTP {status})" if status is not None else ""
        super().__init__(f"{peer} {operation} failed{where}: {detail}")


class ThumbnailUnavailable(SupervisorError):
    """A frame's thumbnail cannot be made now (the Blob Service failed, or another request
    is fetching it): ask again shortly."""
