"""Every subcommand's request and output, API errors, usage errors and an unreachable API."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from app.schemas import USER_COUNT_CEILING, USER_COUNT_DIGITS
from supervisor.config import Settings
from supervisor_cli.__main__ import DEFAULT_MAX_USER_COUNT, MOST_USERS, main
from supervisor_cli.client import PREFIX
from tests.cli.helpers import FakeApi, Result

Cli = Callable[..., Result]
ROOT = Path(__file__).resolve().parents[2]

STATUS = {
    "message": "Workload status",
    "status": {
        "workload_status": "running",
        "total_frames": 250,
        "completed_frames": 125,
        "completion_percentage": 50.0,
    },
}


def test_start_posts_the_form_and_prints_the_message(api: FakeApi, cli: Cli) -> None:
    api.reply("POST", "/start-workload", 200, {"message": "Workload started"})
    result = cli("start", "c1", "o1")
    assert (result.code, result.out, result.err) == (0, "Workload started\n", "")
    seen = api.only()
    assert seen.method == "POST"
    assert seen.form == {"customer_id": "c1", "object_id": "o1"}
    assert "authorization" not in seen.headers


def test_start_refused_prints_the_message_and_exits_1(api: FakeApi, cli: Cli) -> None:
    message = "One workload already running. Your Access Plan doesnt allow to run another workload"
    api.reply("POST", "/start-workload", 400, {"message": message})
    result = cli("start", "c1", "o1")
    assert result.code == 1
    assert result.out == ""
    assert result.err == f"error: {message} (HTTP 400)\n"


def test_internal_error_shows_message_and_details(api: FakeApi, cli: Cli) -> None:
    api.reply(
        "POST",
        "/start-workload",
        500,
        {"message": "Internal server error", "details": "catalog unreachable"},
    )
    result = cli("start", "c1", "o1")
    assert result.code == 1
    assert "error: Internal server error (HTTP 500)" in result.err
    assert "details: catalog unreachable" in result.err
    assert "Traceback" not in result.err


def test_stop_posts_the_customer(api: FakeApi, cli: Cli) -> None:
    api.reply("POST", "/stop-and-delete-workload", 200, {"message": "Workload stopped and deleted"})
    result = cli("stop", "c1")
    assert (result.code, result.out) == (0, "Workload stopped and deleted\n")
    assert api.only().form == {"customer_id": "c1"}


def test_stop_without_a_workload_exits_1(api: FakeApi, cli: Cli) -> None:
    api.reply("POST", "/stop-and-delete-workload", 404, {"message": "No active workload for c1"})
    result = cli("stop", "c1")
    assert result.code == 1
    assert "No active workload for c1 (HTTP 404)" in result.err


def test_status_prints_state_frames_and_percentage(api: FakeApi, cli: Cli) -> None:
    api.reply("GET", "/get-workload-status", 200, STATUS)
    result = cli("status", "c1")
    assert (result.code, result.out) == (0, "c1: running, 125/250 frames (50.0%)\n")
    seen = api.only()
    assert (seen.method, seen.query) == ("GET", {"customer_id": "c1"})


def test_status_shows_the_failure_reason(api: FakeApi, cli: Cli) -> None:
    body = {
        "message": "Workload status",
        "status": {
            "workload_status": "failed",
            "total_frames": 0,
            "completed_frames": 0,
            "completion_percentage": 0.0,
            "failure_reason": "not a .blend file",
        },
    }
    api.reply("GET", "/get-workload-status", 200, body)
    result = cli("status", "c1")
    assert result.code == 0
    assert result.out.splitlines() == [
        "c1: failed, 0/0 frames (0.0%)",
        "failure reason: not a .blend file",
    ]


def test_status_json_prints_the_body(api: FakeApi, cli: Cli) -> None:
    api.reply("GET", "/get-workload-status", 200, STATUS)
    result = cli("status", "c1", "--json")
    assert result.code == 0
    assert json.loads(result.out) == STATUS


def test_status_of_unknown_customer_exits_1(api: FakeApi, cli: Cli) -> None:
    api.reply("GET", "/get-workload-status", 404, {"message": "No workload for customer c9"})
    result = cli("status", "c9")
    assert result.code == 1
    assert "No workload for customer c9" in result.err


def test_users_get_sends_the_token_and_never_prints_it(api: FakeApi, cli: Cli) -> None:
    api.reply(
        "GET",
        "/get-user-count/c1",
        200,
        {"user_count": 3, "session_id": "s-1", "active_users": 2},
    )
    result = cli("users", "c1", "--token", "s3cret")
    assert (result.code, result.out) == (0, "c1: 3 users wanted, 2 active (session s-1)\n")
    seen = api.only()
    assert seen.method == "GET"
    assert seen.headers["authorization"] == "Bearer s3cret"
    assert "s3cret" not in result.out + result.err


def test_users_set_posts_the_count_with_the_env_token(
    api: FakeApi, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADMIN_TOKEN", "from-env")
    api.reply(
        "POST",
        "/set-user-count/c1/5",
        200,
        {"message": "User count updated successfully", "new_user_count": 5},
    )
    result = cli("users", "c1", "5")
    assert (result.code, result.out) == (0, "User count updated successfully: 5\n")
    seen = api.only()
    assert seen.method == "POST"
    assert seen.headers["authorization"] == "Bearer from-env"


@pytest.mark.parametrize(
    ("count", "api_details"),
    [
        # What the API answers: past six digits it names the digits, not the range.
        ("1000000", USER_COUNT_DIGITS),
        ("0", "user_count must be between 1 and 10000"),
    ],
)
def test_users_out_of_range_names_the_range_without_a_request(
    api: FakeApi, cli: Cli, count: str, api_details: str
) -> None:
    api.reply(
        "POST",
        f"/set-user-count/c1/{count}",
        400,
        {"message": "Invalid input", "details": api_details},
    )
    result = cli("users", "c1", count)
    assert result.code == 2
    assert f"from 1 to {USER_COUNT_CEILING}" in result.err
    assert "MAX_USER_COUNT" in result.err
    assert "digits" not in result.err
    assert api.seen == []


def test_the_cli_knows_the_apis_user_count_limits() -> None:
    assert MOST_USERS == USER_COUNT_CEILING
    assert Settings.model_fields["max_user_count"].default == DEFAULT_MAX_USER_COUNT


def test_users_accepts_the_most_the_api_can_take(api: FakeApi, cli: Cli) -> None:
    most = str(USER_COUNT_CEILING)
    api.reply(
        "POST",
        f"/set-user-count/c1/{most}",
        200,
        {"message": "User count updated successfully", "new_user_count": USER_COUNT_CEILING},
    )
    assert cli("users", "c1", most).code == 0
    assert api.only().path == f"/set-user-count/c1/{most}"


def test_users_without_a_token_sends_no_header(api: FakeApi, cli: Cli) -> None:
    api.reply("GET", "/get-user-count/c1", 200, {"user_count": 1, "session_id": "s"})
    assert cli("users", "c1").code == 0
    assert "authorization" not in api.only().headers


def test_users_forbidden_exits_1_with_a_hint(api: FakeApi, cli: Cli) -> None:
    api.reply(
        "POST",
        "/set-user-count/c1/5",
        403,
        {"message": "Forbidden", "details": "Admin routes are open only to privileged addresses"},
    )
    result = cli("users", "c1", "5")
    assert result.code == 1
    assert result.err.splitlines() == [
        "error: Forbidden (HTTP 403)",
        "details: Admin routes are open only to privileged addresses",
        "hint: pass --token or set ADMIN_TOKEN",
    ]


def test_users_with_no_session_exits_1(api: FakeApi, cli: Cli) -> None:
    api.reply(
        "GET", "/get-user-count/c1", 404, {"message": "No active session for customer_id: c1"}
    )
    result = cli("users", "c1", "--token", "t")
    assert result.code == 1
    assert "No active session for customer_id: c1" in result.err


def test_error_page_that_is_not_json_is_summarized(api: FakeApi, cli: Cli) -> None:
    api.reply("GET", "/get-workload-status", 502, "<html><h1>Bad Gateway</h1></html>")
    result = cli("status", "c1")
    assert result.code == 1
    assert "error: HTTP 502 Bad Gateway (HTTP 502)" in result.err
    assert "<h1>Bad Gateway</h1>" in result.err


def test_ping(api: FakeApi, cli: Cli) -> None:
    api.reply("POST", "/", 200, {"message": "Session Supervisor Service is active"})
    result = cli("ping")
    assert (result.code, result.out) == (0, "Session Supervisor Service is active\n")


@pytest.mark.parametrize(
    "args",
    [
        ["start", "c1"],
        ["users", "c1", "many"],
        ["users", "c1", "-3"],
        ["status", ""],
        ["watch", "c1", "--interval", "0"],
        ["frobnicate"],
        [],
    ],
)
def test_usage_errors_exit_2_without_a_request(
    api: FakeApi, cli: Cli, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    result = cli(*args)
    assert result.code == 2
    assert "usage:" in result.err
    assert api.seen == []


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "watch" in capsys.readouterr().out


def test_bad_api_url_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--api", "ftp://somewhere", "status", "c1"]) == 2
    assert "--api: not an http(s) URL" in capsys.readouterr().err


def test_env_api_url_is_used_and_normalized(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SESSION_SUPERVISOR_API", api.url + "/")
    api.reply("GET", "/get-workload-status", 200, STATUS)
    assert main(["status", "c1"]) == 0
    assert api.only().full_path == f"{PREFIX}/get-workload-status"


def test_api_option_beats_the_env(
    api: FakeApi, closed_port_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SESSION_SUPERVISOR_API", closed_port_url)
    api.reply("GET", "/get-workload-status", 200, STATUS)
    assert main(["--api", api.url + PREFIX, "status", "c1"]) == 0


def test_unreachable_api_exits_3_naming_the_url(
    closed_port_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--api", closed_port_url, "status", "c1"]) == 3
    err = capsys.readouterr().err
    assert err == (
        f"error: cannot reach the Session Supervisor API at {closed_port_url}{PREFIX}: "
        "Connection refused\n"
    )


def test_ping_wait_gives_up_with_exit_3(
    closed_port_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--api", closed_port_url, "ping", "--wait", "0.1"]) == 3
    assert "cannot reach" in capsys.readouterr().err


def test_module_runs_as_a_program_without_traceback(closed_port_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "supervisor_cli", "--api", closed_port_url, "stop", "c1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 3
    assert "cannot reach the Session Supervisor API" in done.stderr
    assert "Traceback" not in done.stderr
