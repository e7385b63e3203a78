"""docker/compose.yml and docker/Dockerfile pass scripts/check_docker.py, and the checks
catch the mistakes they are there for (so a green run means something)."""

from __future__ import annotations

import copy
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check_docker.py"


def load_checker() -> ModuleType:
    """scripts/ is not a package: load the script by path."""
    spec = importlib.util.spec_from_file_location("check_docker", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check = load_checker()


@pytest.fixture
def compose() -> dict[str, Any]:
    return copy.deepcopy(check.load_compose())


def test_the_script_passes() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout
    assert result.stdout.rstrip().endswith("ok, 0 problem(s)")


def test_docker_compose_config_accepts_the_file() -> None:
    status, detail = check.compose_cli_config()
    if status == "skipped":
        pytest.skip(detail)
    assert status == "ok", detail


# ----------------------------------------------------------------- the checks bite


def test_the_schema_catches_what_compose_would_refuse(compose: dict[str, Any]) -> None:
    services = compose["services"]
    services["release"]["restart"] = False  # `restart: no` unquoted is a YAML boolean
    services["web"]["depends_on"] = {"release": {"condition": "service_finished"}}
    services["worker"]["helthcheck"] = services["worker"].pop("healthcheck")
    problems = "\n".join(check.schema_problems(compose))
    assert "$.services.release.restart: False is not of type 'string'" in problems
    assert "'service_finished' is not one of" in problems
    assert "'helthcheck' does not match any of the regexes" in problems


def test_dependency_mistakes_are_reported(compose: dict[str, Any]) -> None:
    services = compose["services"]
    services["web"]["depends_on"] = {"relase": {"condition": "service_completed_successfully"}}
    services["worker"]["depends_on"]["beat"] = {"condition": "service_healthy"}
    problems = "\n".join(check.dependency_problems(compose))
    assert "`web` depends on `relase`: no such service" in problems
    assert "`worker` waits for `beat` healthy: no healthcheck" in problems


def test_environment_mistakes_are_reported(compose: dict[str, Any]) -> None:
    env = compose["services"]["web"]["environment"] = dict(
        compose["services"]["web"]["environment"]
    )
    env["BLOB_SERVICE"] = "http://127.0.0.1:13000"
    env["USER_SERVICE"] = "http://simulatr:13000"
    env["DATABSE_URL"] = env.pop("DATABASE_URL")
    problems = "\n".join(check.environment_problems(compose))
    assert "BLOB_SERVICE names `127.0.0.1`, not a service" in problems
    assert "USER_SERVICE names `simulatr`, not a service" in problems
    assert "DATABSE_URL is not a setting" in problems
    assert "DATABASE_URL is not set" in problems


def test_the_containers_run_the_procfile(compose: dict[str, Any]) -> None:
    problems, targets = check.command_problems(compose)
    assert problems == []
    assert {"app:create_app", "tasks.celery_app", "simulator.__main__"} <= targets


def test_a_container_that_drifts_from_the_procfile_is_reported(compose: dict[str, Any]) -> None:
    services = compose["services"]
    services["worker"]["command"] += " --pool solo"
    services["flower"]["command"] = "celery -A tasks.other flower"
    del services["beat"]
    problems = "\n".join(check.command_problems(compose)[0])
    assert "`worker` runs" in problems
    assert "`flower` runs tasks.other, not the Procfile's" in problems
    assert "no service for the Procfile's `beat`" in problems


def test_an_image_cmd_other_than_the_procfile_web_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compose: dict[str, Any]
) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(check.DOCKERFILE.read_text().replace("--workers", "--workerz"))
    monkeypatch.setattr(check, "DOCKERFILE", dockerfile)
    problems = check.command_problems(compose)[0]
    assert any("CMD runs" in p and "--workerz" in p for p in problems), problems


def test_a_healthcheck_that_is_not_python_is_reported(compose: dict[str, Any]) -> None:
    compose["services"]["web"]["healthcheck"]["test"][3] = "import os,"
    problems = check.command_problems(compose)[0]
    assert any("`web`: healthcheck is not Python" in p for p in problems), problems


def test_an_entry_point_that_does_not_import_is_reported() -> None:
    problems = "\n".join(
        check.import_problems({"app:create_ap", "tasks.no_such_module", "app:create_app"})
    )
    assert "app:create_ap: AttributeError" in problems
    assert "tasks.no_such_module: ModuleNotFoundError" in problems
    assert "app:create_app:" not in problems


@pytest.mark.parametrize(
    ("command", "target"),
    [
        ("gunicorn --bind 0.0.0.0:7500 'app:create_app()'", "app:create_app"),
        ("exec celery -A tasks.celery_app worker --loglevel INFO", "tasks.celery_app"),
        ("python -m simulator --port 13000", "simulator.__main__"),
        ("alembic upgrade head", "alembic.config:CommandLine"),
        ("uwsgi app.ini", None),
    ],
)
def test_entry_points(command: str, target: str | None) -> None:
    assert check.entry_point(command) == target


# ----------------------------------------------------------------- docker compose config


def fake_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str, error: str) -> None:
    """A `docker` on PATH that reports `version` and fails `config` with `error`."""
    script = tmp_path / "docker"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$2" = version ]; then echo {version}; exit 0; fi\n'
        f"echo '{error}' >&2\nexit 1\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}/usr/bin{os.pathsep}/bin")


def test_compose_config_without_an_engine_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    error = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock"
    fake_client(tmp_path, monkeypatch, "2.29.7", error)
    assert check.compose_cli_config()[0] == "skipped"


def test_compose_config_syntax_errors_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_client(tmp_path, monkeypatch, "v2.29.7", "services.web.ports must be a list")
    assert check.compose_cli_config() == ("failed", "services.web.ports must be a list")


def test_compose_v1_is_not_trusted_with_the_compose_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_client(tmp_path, monkeypatch, "1.29.2", "'name' does not match any of the regexes")
    assert check.compose_cli_config()[0] == "skipped"
