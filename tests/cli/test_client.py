"""URL normalization and the client's error mapping, against the canned API."""

from __future__ import annotations

import pytest

from supervisor_cli.client import PREFIX, ApiError, ApiUnreachable, SupervisorClient
from supervisor_cli.client import normalize_api_url as normalize
from tests.cli.helpers import FakeApi

FULL = f"http://host:7500{PREFIX}"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://host:7500", FULL),
        ("http://host:7500/", FULL),
        (FULL, FULL),
        (FULL + "/", FULL),
        ("host:7500", FULL),
        ("  http://host:7500  ", FULL),
        ("https://proxy.example/supervisor", f"https://proxy.example/supervisor{PREFIX}"),
        ("https://proxy.example/supervisor" + PREFIX, f"https://proxy.example/supervisor{PREFIX}"),
    ],
)
def test_normalize_accepts_a_base_or_the_full_prefix(given: str, expected: str) -> None:
    assert normalize(given) == expected


@pytest.mark.parametrize("given", ["ftp://host", "http://", "http://host:port", ""])
def test_normalize_refuses_what_is_not_an_http_url(given: str) -> None:
    with pytest.raises(ValueError, match="URL"):
        normalize(given)


def test_repr_never_shows_the_token() -> None:
    with SupervisorClient("http://host:7500", admin_token="s3cret") as client:
        assert "s3cret" not in repr(client)


def test_token_goes_only_to_admin_routes(api: FakeApi) -> None:
    api.reply("GET", "/get-workload-status", 200, {"message": "Workload status", "status": {}})
    api.reply("GET", "/get-user-count/c1", 200, {"user_count": 1})
    with SupervisorClient(api.url, admin_token="s3cret") as client:
        client.workload_status("c1")
        client.get_user_count("c1")
    assert "authorization" not in api.seen[0].headers
    assert api.seen[1].headers["authorization"] == "Bearer s3cret"


def test_customer_is_quoted_in_admin_paths(api: FakeApi) -> None:
    with SupervisorClient(api.url) as client, pytest.raises(ApiError):
        client.get_user_count("a b/c")
    assert api.only().full_path == f"{PREFIX}/get-user-count/a%20b%2Fc"


def test_success_with_a_body_that_is_not_json_is_an_api_error(api: FakeApi) -> None:
    api.reply("POST", "/", 200, "<html>hello</html>")
    with SupervisorClient(api.url) as client, pytest.raises(ApiError, match="not JSON"):
        client.alive()


def test_read_timeout_on_a_post_warns_that_it_may_have_happened(api: FakeApi) -> None:
    def slow(_seen: object) -> tuple[int, dict[str, str]]:
        import time

        time.sleep(0.5)
        return 200, {"message": "Workload started"}

    api.respond("POST", "/start-workload", slow)
    with SupervisorClient(api.url, timeout=0.1) as client, pytest.raises(ApiUnreachable) as caught:
        client.start_workload("c1", "o1")
    assert "no answer in time" in str(caught.value)
    assert "may still have been carried out" in str(caught.value)
    assert api.url in str(caught.value)
