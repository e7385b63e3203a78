"""`session-supervisor`: argument parsing, output and exit codes of the CLI.

Exit codes: 0 success, 1 the API answered with an error, 2 usage error, 3 the API cannot
be reached, 4 the watched workload ended without completing, 5 `watch --timeout` passed,
130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from supervisor_cli.client import (
    DEFAULT_API,
    DEFAULT_TIMEOUT,
    ApiError,
    ApiUnreachable,
    SupervisorClient,
    normalize_api_url,
)
from supervisor_cli.watch import COMPLETED, WatchTimeout, make_display, watch_workload

OK = 0
API_ERROR = 1
USAGE = 2
UNREACHABLE = 3
WORKLOAD_UNSUCCESSFUL = 4
WATCH_TIMEOUT = 5
INTERRUPTED = 130

API_ENV = "SESSION_SUPERVISOR_API"
TOKEN_ENV = "ADMIN_TOKEN"  # noqa: S105 - the name of a variable, not a secret
# The API reads at most six digits of a user count, whatever its MAX_USER_COUNT says.
MOST_USERS = 999_999
DEFAULT_MAX_USER_COUNT = 10_000

Handler = Callable[[SupervisorClient, argparse.Namespace, TextIO, TextIO], int]


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def _user_count(text: str) -> int:
    """Checked here because past six digits the API names the digits, not the range."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= MOST_USERS:
        raise argparse.ArgumentTypeError(
            f"must be a whole number from 1 to {MOST_USERS}, and the server's MAX_USER_COUNT "
            f"(default {DEFAULT_MAX_USER_COUNT}) may allow fewer: {text!r}"
        )
    return value


def _identifier(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _write(stream: TextIO, text: str) -> None:
    stream.write(text + "\n")
    stream.flush()


# --- commands ---------------------------------------------------------------------------


def cmd_ping(client: SupervisorClient, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Wait for the API to answer, so `make demo` can follow `make run` without a race."""
    deadline = time.monotonic() + (args.wait or 0.0)
    while True:
        try:
            body = client.alive()
            break
        except ApiUnreachable:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)
    _write(out, str(body.get("message", "ok")))
    return OK


def cmd_start(client: SupervisorClient, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    body = client.start_workload(args.customer_id, args.object_id)
    _write(out, str(body.get("message", "Workload started")))
    return OK


def cmd_stop(client: SupervisorClient, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    body = client.stop_workload(args.customer_id)
    _write(out, str(body.get("message", "Workload stopped and deleted")))
    return OK


def cmd_status(client: SupervisorClient, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    body = client.workload_status(args.customer_id)
    if args.json:
        _write(out, json.dumps(body, indent=2))
        return OK
    status = body.get("status")
    if not isinstance(status, dict):
        raise ApiError(200, "unexpected status answer", "no 'status' object")
    total = status.get("total_frames", "?")
    done = status.get("completed_frames", "?")
    percentage = status.get("completion_percentage")
    percent = f"{percentage:.1f}%" if isinstance(percentage, int | float) else "?%"
    state = status.get("workload_status", "unknown")
    _write(out, f"{args.customer_id}: {state}, {done}/{total} frames ({percent})")
    if status.get("failure_reason"):
        _write(out, f"failure reason: {status['failure_reason']}")
    return OK


def cmd_users(client: SupervisorClient, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.user_count is None:
        body = client.get_user_count(args.customer_id)
        line = f"{args.customer_id}: {body.get('user_count', '?')} users wanted"
        if "active_users" in body:
            line += f", {body['active_users']} active"
        if body.get("session_id"):
            line += f" (session {body['session_id']})"
        _write(out, line)
        return OK
    body = client.set_user_count(args.customer_id, args.user_count)
    message = str(body.get("message", "User count updated successfully"))
    _write(out, f"{message}: {body.get('new_user_count', args.user_count)}")
    return OK


def cmd_watch(client: SupervisorClient, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    display = make_display(out, plain=True if args.plain else None, every=args.log_every)
    try:
        snapshot = watch_workload(
            client,
            args.customer_id,
            display,
            interval=args.interval,
            timeout=args.watch_timeout,
        )
    except WatchTimeout as exc:
        _write(err, f"error: {exc}")
        return WATCH_TIMEOUT
    if snapshot.status == COMPLETED:
        return OK
    reason = snapshot.failure_reason or "no reason given"
    _write(err, f"error: workload {snapshot.status}: {reason}")
    return WORKLOAD_UNSUCCESSFUL


# --- parsing ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="session-supervisor",
        description="Command-line client of the Session Supervisor REST API.",
        epilog=(
            "exit codes: 0 success, 1 API error, 2 usage error, 3 API unreachable, "
            "4 workload failed or stopped (watch), 5 watch timeout"
        ),
    )
    parser.add_argument(
        "--api",
        metavar="URL",
        help=f"API base URL or full prefix (env {API_ENV}; default {DEFAULT_API})",
    )
    parser.add_argument(
        "--timeout",
        dest="http_timeout",
        type=_positive_float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"timeout of each HTTP request (default {DEFAULT_TIMEOUT:g})",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    ping = command("ping", cmd_ping, "check that the API answers")
    ping.add_argument(
        "--wait", type=_positive_float, metavar="SECONDS", help="keep trying this long"
    )

    start = command("start", cmd_start, "start a workload")
    start.add_argument("customer_id", metavar="CUSTOMER", type=_identifier)
    start.add_argument("object_id", metavar="OBJECT", type=_identifier)

    status = command("status", cmd_status, "show a customer's workload status")
    status.add_argument("customer_id", metavar="CUSTOMER", type=_identifier)
    status.add_argument("--json", action="store_true", help="print the API's JSON body")

    stop = command("stop", cmd_stop, "stop and delete a customer's workload")
    stop.add_argument("customer_id", metavar="CUSTOMER", type=_identifier)

    users = command("users", cmd_users, "show, or with N set, the user count (admin)")
    users.add_argument("customer_id", metavar="CUSTOMER", type=_identifier)
    users.add_argument("user_count", metavar="N", nargs="?", type=_user_count)
    users.add_argument(
        "--token",
        help=f"admin token, sent as a Bearer header (env {TOKEN_ENV}; prefer the env)",
    )

    watch = command("watch", cmd_watch, "show live progress until the workload ends")
    watch.add_argument("customer_id", metavar="CUSTOMER", type=_identifier)
    watch.add_argument(
        "--interval", type=_positive_float, default=1.0, metavar="SECONDS", help="poll interval"
    )
    watch.add_argument(
        "--timeout",
        dest="watch_timeout",
        type=_positive_float,
        metavar="SECONDS",
        help="give up (exit 5) after this long",
    )
    watch.add_argument(
        "--plain", action="store_true", help="plain lines even on a terminal (as when piped)"
    )
    watch.add_argument(
        "--log-every",
        type=_positive_float,
        default=5.0,
        metavar="SECONDS",
        help="in plain mode, at most one line this often unless the status changes",
    )
    return parser


def _api_url(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    given, source = args.api, "--api"
    if not given:
        given, source = os.environ.get(API_ENV) or DEFAULT_API, API_ENV
    try:
        return normalize_api_url(given)
    except ValueError as exc:
        parser.error(f"{source}: {exc}")


def _report(err: TextIO, exc: ApiError, args: argparse.Namespace) -> None:
    _write(err, f"error: {exc.message}" + (f" (HTTP {exc.status})" if exc.status else ""))
    if exc.details:
        _write(err, f"details: {exc.details}")
    if exc.status in (401, 403) and args.command == "users" and not args.token_given:
        _write(err, f"hint: pass --token or set {TOKEN_ENV}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code instead of raising, so callers and tests can too."""
    out, err = sys.stdout, sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        api_url = _api_url(parser, args)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else USAGE
    token = getattr(args, "token", None) or os.environ.get(TOKEN_ENV) or None
    args.token_given = token is not None
    handler: Handler = args.handler
    try:
        with SupervisorClient(api_url, timeout=args.http_timeout, admin_token=token) as client:
            return handler(client, args, out, err)
    except ApiError as exc:
        _report(err, exc, args)
        return API_ERROR
    except ApiUnreachable as exc:
        _write(err, f"error: {exc}")
        return UNREACHABLE
    except KeyboardInterrupt:
        _write(err, "interrupted")
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
