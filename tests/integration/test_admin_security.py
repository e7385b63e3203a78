"""Admin Panel Controls: only privileged addresses or the admin token get in, a forged
X-Forwarded-For does not, and no secret reaches the logs."""

from __future__ import annotations

import logging

import pytest

from app import create_app
from supervisor.services import Services

PREFIX = "/api/session-supervisor-service"
ADMIN = f"{PREFIX}/get-user-count/nobody"


def app_with(sv: Services, **settings: object):  # type: ignore[no-untyped-def]
    for name, value in settings.items():
        setattr(sv.settings, name, value)
    return create_app(services=sv).test_client()


@pytest.mark.parametrize(
    ("remote", "forwarded", "proxies", "allowed"),
    [
        ("127.0.0.1", None, 0, True),
        ("203.0.113.9", "127.0.0.1", 0, False),
        ("127.0.0.1", "203.0.113.9", 1, False),
        ("127.0.0.1", "127.0.0.1, 203.0.113.9", 1, False),
        ("127.0.0.1", "203.0.113.9, 10.1.2.3", 1, True),
        ("127.0.0.1", "10.1.2.3, 203.0.113.9", 2, True),
    ],
    ids=[
        "direct-localhost",
        "forged-header-without-proxy",
        "stranger-behind-proxy",
        "forged-header-behind-proxy",
        "privileged-behind-proxy",
        "two-proxies",
    ],
)
def test_client_address_is_believed_only_as_far_as_trusted_proxies(
    sv: Services, remote: str, forwarded: str | None, proxies: int, allowed: bool
) -> None:
    from ipaddress import ip_network

    client = app_with(
        sv,
        trusted_proxy_count=proxies,
        privileged_ips=(ip_network("127.0.0.1/32"), ip_network("10.1.0.0/16")),
    )
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    response = client.get(ADMIN, environ_base={"REMOTE_ADDR": remote}, headers=headers)
    assert response.status_code == (404 if allowed else 403)


def test_no_secret_reaches_the_logs(sv: Services, caplog: pytest.LogCaptureFixture) -> None:
    token = "tok-5ecret-value-9"
    client = app_with(sv, admin_token=token)
    caplog.set_level(logging.DEBUG)
    stranger = {"REMOTE_ADDR": "203.0.113.9"}
    client.get(ADMIN, environ_base=stranger, headers={"Authorization": f"Bearer {token}x"})
    client.get(ADMIN, environ_base=stranger, headers={"Authorization": f"Bearer {token}"})
    client.post(f"{PREFIX}/set-user-count/nobody/3", headers={"Authorization": f"Bearer {token}"})

    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "admin access refused" in logged
    assert token not in logged
    assert token not in repr(sv.settings)
