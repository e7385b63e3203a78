"""Admin Panel Controls are for privileged callers: listed addresses or the admin token."""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Callable, Iterable
from functools import wraps
from typing import TypeVar

from flask import current_app, request

from app.errors import error_body

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., object])


def address_is_privileged(address: str | None, networks: Iterable[ipaddress._BaseNetwork]) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


def token_is_valid(header: str | None, expected: str | None) -> bool:
    """Constant-time comparison of a `Bearer <token>` header with the configured token."""
    if not expected or not header:
        return False
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    return hmac.compare_digest(token.strip().encode(), expected.encode())


def request_is_privileged() -> bool:
    """The current request bears the admin token or comes from a privileged address."""
    settings = current_app.extensions["session_supervisor"].settings
    if token_is_valid(request.headers.get("Authorization"), settings.admin_token):
        return True
    return address_is_privileged(request.remote_addr, settings.privileged_ips)


def privileged(view: F) -> F:
    @wraps(view)
    def guarded(*args: object, **kwargs: object) -> object:
        if request_is_privileged():
            return view(*args, **kwargs)
        logger.warning(
            "admin access refused",
            extra={"remote_addr": request.remote_addr, "path": request.path},
        )
        return error_body(
            403,
            "Forbidden",
            "Admin routes are open only to privileged addresses or holders of the admin token",
        )

    return guarded  # type: ignore[return-value]
