"""docker/compose.yml and docker/Dockerfile pass scripts/check_docker.py, and the checker
catches the mistakes it is there for (so a green run means something)."""

from __future__ import annotations

import copy
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check_docker.py"


def load_checker() -> ModuleType:
    """scripts/ is not a package: load the script by path (registered, for dataclasses)."""
    spec = importlib.util.spec_from_file_location("check_docker", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


check = load_checker()


@pytest.fixture
def compose() -> object:
    return check.load_compose()


@pytest.fixture(scope="module")
def image() -> object:
    return check.stages(check.parse_dockerfile(check.DOCKERFILE.read_text()))[1][-1]


@pytest.fixture
def setup_with_flower(tmp_path: Path) -> Path:
    """setup.cfg with a `flower` extra, so Dockerfile tests do not hang on that one line."""
    config = check.setup_cfg()
    if not config.has_option("options.extras_require", "flower"):
        config.set("options.extras_require", "flower", "\nflower>=2.0")
    target = tmp_path / "setup.cfg"
    with target.open("w") as out:
        config.write(out)
    return target


# ----------------------------------------------------------------- the real files


def test_compose_structure(compose: object) -> None:
    assert check.check_compose(compose) == []


def test_compose_environment(compose: object) -> None:
    assert check.check_environment(compose, check.known_variables()) == []


def test_dockerfile() -> None:
    assert check.check_dockerfile() == []


def test_every_command_names_a_real_entry_point(compose: object) -> None:
    assert check.check_entry_points(compose) == []


def test_docker_compose_config_accepts_the_file() -> None:
    status, detail = check.compose_cli_config()
    if status == "skipped":
        pytest.skip(detail)
    assert status == "ok", detail


def test_the_script_passes() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout
    assert result.stdout.rstrip().endswith("ok, 0 problem(s)")


def test_the_dependency_layer_reads_setup_cfg(tmp_path: Path, setup_with_flower: Path) -> None:
    """The Dockerfile's own heredoc, run as the build runs it."""
    _, stages = check.stages(check.parse_dockerfile(check.DOCKERFILE.read_text()))
    script = next(i for i in stages[0].all("RUN") if i.heredocs).heredocs[0]
    (tmp_path / "setup.cfg").write_text(setup_with_flower.read_text())

    def run(extras: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "EXTRAS": extras}
        return subprocess.run(
            [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
        )

    assert run("flower").returncode == 0
    requirements = (tmp_path / "requirements.txt").read_text().split()
    assert "flask>=3.0" in requirements
    assert "flower>=2.0" in requirements
    assert not [r for r in requirements if r.startswith(("pytest", "ruff", "hypothesis"))]
    missing = run("flower,nope")
    assert missing.returncode != 0
    assert "nope" in missing.stderr


# ----------------------------------------------------------------- the checker bites


def test_interpolation_follows_compose() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert check.interpolate("${SET:-d} ${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} $$HOME $SET", env) == (
        "x d d  $HOME x"
    )
    with pytest.raises(ValueError, match="REQUIRED"):
        check.interpolate("${REQUIRED:?set it}", env)


def test_an_undefined_anchor_is_reported(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yml"
    broken.write_text("services:\n  web:\n    environment: *nowhere\n")
    with pytest.raises(ValueError, match="cannot parse"):
        check.load_compose(broken)


def test_structure_mistakes_are_reported(compose: object) -> None:
    services = compose.services
    services["web"]["depends_on"] = {"relase": {"condition": "service_healthy"}}
    del services["simulator"]["healthcheck"]
    services["worker"]["depends_on"]["beat"] = {"condition": "service_healthy"}
    services["release"]["restart"] = False
    services["beat"].pop("image")
    services["beat"].pop("build")
    compose.raw["version"] = "3.8"
    problems = "\n".join(check.check_compose(compose))
    assert "`relase`, which is not a service" in problems
    assert "`simulator`: needs a healthcheck" in problems
    assert "waits for `beat` healthy, it has no healthcheck" in problems
    assert 'restart: "no" (quoted)' in problems
    assert "`beat`: has neither image nor build" in problems
    assert "`version:`" in problems
    assert "must depend on `release` with service_completed_successfully" in problems


def test_a_dependency_cycle_is_reported(compose: object) -> None:
    compose.services["postgres"]["depends_on"] = ["web"]
    assert any("cycle" in p for p in check.check_compose(compose))


def test_environment_mistakes_are_reported(compose: object) -> None:
    env = compose.services["web"]["environment"] = copy.deepcopy(
        compose.services["web"]["environment"]
    )
    env["BLOB_SERVICE"] = "http://127.0.0.1:13000"
    env["USER_SERVICE"] = "http://simulatr:13000"
    env["DATABSE_URL"] = env.pop("DATABASE_URL")
    problems = "\n".join(check.check_environment(compose, check.known_variables()))
    assert "BLOB_SERVICE points at 127.0.0.1, the container itself" in problems
    assert "USER_SERVICE points at `simulatr`" in problems
    assert "DATABSE_URL is not a setting" in problems
    assert "DATABASE_URL is not set" in problems


BAD_COMMANDS = {
    "gunicorn-target": ["gunicorn", "--bind", "0.0.0.0:7500", "app:create_ap()"],
    "gunicorn-option": ["gunicorn", "--workerz", "3", "app:create_app()"],
    "celery-module": ["celery", "-A", "tasks.no_such_module", "worker"],
    "celery-queue": ["celery", "-A", "tasks.celery_app", "worker", "--queues", "supervisor.x"],
    "alembic-command": ["alembic", "upgrayed", "head"],
    "python-module": ["python", "-m", "no_such_module"],
    "simulator-flag": ["python", "-m", "simulator", "--demo-blend", "", "--no-such-flag"],
    "simulator-value": ["python", "-m", "simulator", "--demo-blend", "", "--fail-share", "2"],
}
EXPECTED = {
    "gunicorn-target": "create_ap",
    "gunicorn-option": "--workerz",
    "celery-module": "no_such_module",
    "celery-queue": "supervisor.x",
    "alembic-command": "upgrayed",
    "python-module": "no_such_module",
    "simulator-flag": "--no-such-flag",
    "simulator-value": "fail_share",
}


@pytest.fixture(scope="module")
def bad_command_problems(image: object) -> dict[str, str]:
    probes = []
    for name, argv in BAD_COMMANDS.items():
        found, wanted = check.entry_point_checks(name, argv, image)
        assert found == []
        probes += wanted
    problems = check.run_probes(probes, {})
    return {
        name: "\n".join(p for p in problems if p.startswith(name + ":")) for name in BAD_COMMANDS
    }


@pytest.mark.parametrize("name", sorted(BAD_COMMANDS))
def test_a_command_that_names_no_real_entry_point_is_reported(
    name: str, bad_command_problems: dict[str, str]
) -> None:
    assert EXPECTED[name] in bad_command_problems[name]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["uwsgi", "app.ini"], "is not gunicorn, celery, alembic or python -m"),
        (["celery", "-A", "tasks.celery_app", "purge"], "'purge' is not worker"),
        (["celery", "worker"], "without -A"),
        (["python", "-m", "simulator"], "pass --demo-blend"),
        (["python", "-m", "simulator", "--demo-blend", "/app/x.blend"], "not copied into"),
        (["alembic", "-c", "other.ini", "upgrade", "head"], "alembic needs other.ini"),
        ([], "no command"),
    ],
)
def test_static_command_mistakes_are_reported(image: object, argv: list[str], message: str) -> None:
    problems, _ = check.entry_point_checks("here", argv, image)
    assert any(message in p for p in problems), problems


def test_bad_settings_in_the_environment_are_reported() -> None:
    probe = check.Probe("env", "settings", {})
    [problem] = check.run_probes([probe], {"PRIVILEGED_IPS": "not-an-ip"})
    assert "PRIVILEGED_IPS" in problem


def test_the_image_command_matches_the_procfile_web(image: object) -> None:
    argv = check.unwrap_shell(check.image_command(image))
    assert argv[0] == "gunicorn"
    assert argv == check.procfile_commands()["web"]


def test_the_demo_blend_is_copied_into_the_image(image: object) -> None:
    path = "/app/fixtures/blend/blender-5.0/default_1_250.blend"
    assert check.image_source(path, image, ROOT) == (
        ROOT / "tests/fixtures/blend/blender-5.0/default_1_250.blend"
    )


def test_the_dockerfile_parser_joins_lines_and_reads_heredocs() -> None:
    text = (
        "# syntax=docker/dockerfile:1\n"
        "FROM python:3.11-slim AS build\n"
        "RUN apt-get update \\\n"
        "    # a comment inside the continuation\n"
        "    && true\n"
        "RUN python - <<'EOF'\n"
        "print('FROM is not an instruction here')\n"
        "EOF\n"
        'CMD ["gunicorn", "app:create_app()"]\n'
    )
    instructions = check.parse_dockerfile(text)
    assert [i.keyword for i in instructions] == ["FROM", "RUN", "RUN", "CMD"]
    assert instructions[1].value == "apt-get update && true"
    assert instructions[2].heredocs == ("print('FROM is not an instruction here')",)
    assert check.exec_form(instructions[3].value) == ["gunicorn", "app:create_app()"]


def test_dockerignore_exceptions_reinclude_fixtures() -> None:
    patterns = check.dockerignore_patterns(check.DOCKERFILE, ROOT)
    assert not check.is_ignored("tests/fixtures/blend/blender-5.0/range_10_20.blend", patterns)
    assert check.is_ignored("tests/fixtures/blend/bad/text.blend", patterns)
    assert check.is_ignored("tests/unit/test_docker_files.py", patterns)
    assert check.is_ignored(".venv/bin/python", patterns)
    assert check.is_ignored("app/__pycache__/api.cpython-311.pyc", patterns)
    assert not check.is_ignored("app/api.py", patterns)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("USER app\n", ""), "non-root USER"),
        (
            lambda t: t.replace(
                "ARG PYTHON_IMAGE=python:3.11-slim", "ARG PYTHON_IMAGE=python:3.12"
            ),
            "FROM python:3.12",
        ),
        (lambda t: t.replace("    PYTHONUNBUFFERED=1 \\\n", ""), "PYTHONUNBUFFERED"),
        (lambda t: t.replace("EXPOSE 7500", "EXPOSE 8000"), "EXPOSE 7500"),
        (lambda t: t.replace("ARG EXTRAS=flower", "ARG EXTRAS=flower,dev"), "dev tools"),
        (lambda t: t.replace("ARG EXTRAS=flower", "ARG EXTRAS="), "flower"),
        (lambda t: t.replace("COPY migrations", "COPY migrationz"), "COPY migrationz"),
        (
            lambda t: t.replace("RUN pip install -r", "COPY . .\nRUN pip install -r"),
            "before the code",
        ),
        (lambda t: t.replace("import os\n", "import os(\n", 1), "heredoc"),
    ],
    ids=["root", "base", "unbuffered", "expose", "dev", "no-flower", "copy", "layers", "heredoc"],
)
def test_dockerfile_mistakes_are_reported(
    tmp_path: Path, setup_with_flower: Path, edit: object, message: str
) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(edit(check.DOCKERFILE.read_text()))
    ignore = check.DOCKERFILE.with_name("Dockerfile.dockerignore")
    (tmp_path / ignore.name).write_text(ignore.read_text())
    problems = check.check_dockerfile(dockerfile, ROOT, setup_with_flower)
    assert any(message in p for p in problems), problems


def test_a_dockerignore_hiding_what_the_build_needs_is_reported(
    tmp_path: Path, setup_with_flower: Path
) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(check.DOCKERFILE.read_text())
    ignore = check.DOCKERFILE.with_name("Dockerfile.dockerignore").read_text()
    (tmp_path / "Dockerfile.dockerignore").write_text(ignore + "README.md\ntests\n")
    problems = "\n".join(check.check_dockerfile(dockerfile, ROOT, setup_with_flower))
    assert "needs README.md" in problems
    assert "COPY tests/fixtures/blend/blender-5.0: left out by .dockerignore" in problems


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
