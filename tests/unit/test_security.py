from __future__ import annotations

import ipaddress

import pytest

from app.security import address_is_privileged, token_is_valid
from supervisor.errors import InvalidInput
from supervisor.keys import validate_id

NETWORKS = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.1.0.0/16"))


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("127.0.0.1", True),
        ("10.1.200.3", True),
        ("::ffff:127.0.0.1", True),
        ("10.2.0.1", False),
        ("127.0.0.2", False),
        ("", False),
        (None, False),
        ("garbage", False),
    ],
)
def test_address_is_privileged(address: str | None, allowed: bool) -> None:
    assert address_is_privileged(address, NETWORKS) is allowed


@pytest.mark.parametrize(
    ("header", "expected", "valid"),
    [
        ("Bearer tok", "tok", True),
        ("bearer tok", "tok", True),
        ("Bearer tok2", "tok", False),
        ("Basic tok", "tok", False),
        ("Bearer ", "tok", False),
        ("tok", "tok", False),
        (None, "tok", False),
        ("Bearer tok", None, False),
        ("Bearer ", "", False),
    ],
)
def test_token_is_valid(header: str | None, expected: str | None, valid: bool) -> None:
    assert token_is_valid(header, expected) is valid


@pytest.mark.parametrize("value", ["a", "A-z_0.9", "x" * 128])
def test_valid_ids(value: str) -> None:
    assert validate_id("customer_id", value) == value


@pytest.mark.parametrize("value", [None, "", "x" * 129, "a/b", "a b", "é", "a\x00", 7, "..%2f"])
def test_invalid_ids(value: object) -> None:
    with pytest.raises(InvalidInput, match="customer_id"):
        validate_id("customer_id", value)
