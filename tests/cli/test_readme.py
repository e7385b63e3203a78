"""What the README promises a new user, checked against the code: every setting, every CLI
command, API URLs that are whole and real, and where each `make run` process listens."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from flask import Flask
from werkzeug.exceptions import MethodNotAllowed, NotFound

from app.api import api
from app.dashboard import dashboard
from app.openapi import PREFIX, openapi
from supervisor.config import Settings
from supervisor_cli.__main__ import build_parser
from tests.processes import procfile

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
API_ORIGIN = "http://127.0.0.1:7500"


def section(title: str) -> str:
    """The README's `## title` section, up to the next one."""
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def test_every_setting_is_in_the_configuration_table() -> None:
    table = section("Configuration")
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in table]
    assert missing == []


def test_every_cli_command_is_documented() -> None:
    commands = next(
        action.choices
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    documented = section("The command-line tool")
    missing = [name for name in commands if f"session-supervisor {name}" not in documented]
    assert missing == []


def test_api_urls_are_whole_and_name_real_routes() -> None:
    app = Flask(__name__)
    app.register_blueprint(api)
    app.register_blueprint(openapi)
    app.register_blueprint(dashboard)
    routes = app.url_map.bind("127.0.0.1:7500")
    paths = re.findall(rf"{re.escape(API_ORIGIN)}(/[^\s`)|,]*)", README)
    unknown = []
    for path in paths:
        if path == PREFIX:  # the base the examples add a route to (`API=...`)
            continue
        try:
            routes.match(path, method="GET")
        except MethodNotAllowed:
            pass
        except NotFound:
            unknown.append(path)
    assert unknown == []
    assert f"{API_ORIGIN}{PREFIX}/docs" in README
    assert f"{API_ORIGIN}{PREFIX}/openapi.json" in README
    assert not re.search(r"`/docs`|`/openapi\.json`", README), "give the whole URL"


def test_where_each_process_listens_is_stated() -> None:
    commands = procfile(ROOT / "Procfile")
    assert "--bind 0.0.0.0:" in commands["web"]
    assert "--address=${FLOWER_ADDRESS:-127.0.0.1}" in commands["flower"]
    assert "--host" not in commands["simulator"]  # its default, 127.0.0.1
    run = section("The two commands")
    assert "`0.0.0.0`" in run
    assert "`127.0.0.1`" in run
