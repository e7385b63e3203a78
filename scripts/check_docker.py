"""Check docker/compose.yml and docker/Dockerfile without a Docker engine.

`python scripts/check_docker.py` prints every problem and exits 1 if there is one:

- compose.yml is valid against the Compose Specification's JSON Schema
  (docker/compose-spec.json; docker/README.md says where it comes from);
- `docker compose config` accepts it, where a Compose v2 client and an engine exist;
- the containers run the Procfile's commands, the Dockerfile's CMD is the Procfile's web
  process, and the modules those commands name import in a bare interpreter;
- what the schema cannot know: a service waited for healthy has a healthcheck, the
  containers' variables are settings of this code and their URLs name services of the
  file, the Python healthchecks compile.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker" / "compose.yml"
SCHEMA = ROOT / "docker" / "compose-spec.json"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
PROCFILE = ROOT / "Procfile"

# Roles whose container runs the Procfile line word for word; flower and the simulator
# differ in addresses and paths only, so for them the entry point must agree.
SAME_AS_PROCFILE = ("release", "web", "worker", "beat")
REQUIRED_ENV = (
    "DATABASE_URL",
    "REDIS_URL",
    "CELERY_BROKER_URL",
    "USER_MANAGER_BROKER_URL",
    "MONGODB_SERVICE",
    "BLOB_SERVICE",
    "USER_SERVICE",
    "USER_MANAGER_SERVICE",
)
NO_ENGINE = (
    "cannot connect to the docker daemon",
    "is the docker daemon running",
    "error during connect",
    "permission denied while trying to connect",
)


def load_compose(path: Path = COMPOSE) -> dict[str, Any]:
    """The file as YAML reads it (anchors and merge keys resolved, nothing interpolated)."""
    try:
        compose = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path.name}: cannot parse: {exc}") from None
    if not isinstance(compose, dict):
        raise ValueError(f"{path.name}: not a mapping")
    return compose


def schema_problems(compose: dict[str, Any], schema_path: Path = SCHEMA) -> list[str]:
    """Where the file breaks the Compose Specification (types, names, enums)."""
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    problems = []
    for error in validator.iter_errors(compose):
        best = jsonschema.exceptions.best_match([error])  # the branch of a oneOf that failed
        problems.append(f"compose.yml: {best.json_path}: {best.message}")
    return problems


def dependency_problems(compose: dict[str, Any]) -> list[str]:
    """depends_on names services, and those waited for healthy have a healthcheck."""
    services = compose.get("services") or {}
    problems = []
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            depends = {target: {} for target in depends}
        for target, spec in depends.items():
            if target not in services:
                problems.append(f"compose.yml: `{name}` depends on `{target}`: no such service")
            elif (spec or {}).get("condition") == "service_healthy" and (
                (services[target].get("healthcheck") or {"disable": True}).get("disable")
            ):
                problems.append(
                    f"compose.yml: `{name}` waits for `{target}` healthy: no healthcheck"
                )
    return problems


def environment_problems(compose: dict[str, Any]) -> list[str]:
    """The project's containers (those built here) get the settings they need, by name."""
    sys.path.insert(0, str(ROOT))
    try:
        from supervisor.config import Settings
    finally:
        sys.path.remove(str(ROOT))
    # LOG_LEVEL and prometheus-client's own variable are read outside the Settings.
    known = {name.upper() for name in Settings.model_fields} | {
        "LOG_LEVEL",
        "PROMETHEUS_MULTIPROC_DIR",
    }
    known |= set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", PROCFILE.read_text(encoding="utf-8")))
    services = compose.get("services") or {}
    problems = []
    for name, service in services.items():
        if "build" not in service:
            continue
        env = service.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.partition("=")[::2] for item in env)
        for key in REQUIRED_ENV:
            if key not in env:
                problems.append(f"compose.yml: `{name}`: {key} is not set")
        for key, value in env.items():
            if key not in known:
                problems.append(f"compose.yml: `{name}`: {key} is not a setting")
            host = urlsplit(str(value)).hostname if "://" in str(value) else None
            if host is not None and host not in services:
                problems.append(f"compose.yml: `{name}`: {key} names `{host}`, not a service")
    return problems


def procfile(path: Path = PROCFILE) -> dict[str, str]:
    lines = (line.partition(":") for line in path.read_text(encoding="utf-8").splitlines())
    return {
        role.strip(): command.strip()
        for role, sep, command in lines
        if sep and not role.startswith("#")
    }


def image_command(path: Path | None = None) -> str:
    """The shell command of the Dockerfile's `CMD ["sh", "-c", "exec ..."]`."""
    path = path or DOCKERFILE
    lines = [
        line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("CMD")
    ]
    if not lines:
        return ""
    argv = json.loads(lines[-1][len("CMD") :])
    return argv[2].removeprefix("exec ") if argv[:2] == ["sh", "-c"] else shlex.join(argv)


def compose_command(service: dict[str, Any]) -> str:
    command = service.get("command") or ""
    return command if isinstance(command, str) else shlex.join(command)


def entry_point(command: str) -> str | None:
    """The importable target of a command: `module:attribute` or `module`."""
    words = shlex.split(command.removeprefix("exec "))
    if not words:
        return None
    if words[0] == "gunicorn":
        return words[-1].removesuffix("()")
    if words[0] == "celery" and "-A" in words[:-1]:
        return words[words.index("-A") + 1]
    if words[0] in ("python", "python3") and words[1:2] == ["-m"] and len(words) > 2:
        return f"{words[2]}.__main__"
    if words[0] == "alembic":
        return "alembic.config:CommandLine"
    return None


def command_problems(compose: dict[str, Any]) -> tuple[list[str], set[str]]:
    """Disagreements between the Procfile, the compose commands and the CMD; the entry
    points they name."""
    services = compose.get("services") or {}
    roles = procfile()
    problems = []
    targets = set()
    for role, command in roles.items():
        service = services.get(role)
        if service is None:
            problems.append(f"compose.yml: no service for the Procfile's `{role}`")
            continue
        ours = compose_command(service)
        if role in SAME_AS_PROCFILE and ours != command:
            problems.append(f"compose.yml: `{role}` runs {ours!r}, the Procfile {command!r}")
        elif entry_point(ours) != entry_point(command):
            problems.append(f"compose.yml: `{role}` runs {entry_point(ours)}, not the Procfile's")
        targets |= {entry_point(ours), entry_point(command)}
    cmd = image_command()
    if cmd != roles.get("web"):
        problems.append(f"Dockerfile: CMD runs {cmd!r}, not the Procfile's web process")
    targets.add(entry_point(cmd))
    for name, service in services.items():
        test = (service.get("healthcheck") or {}).get("test") or []
        if test[:3] == ["CMD", "python", "-c"]:
            try:
                compile(test[3], f"{name} healthcheck", "exec")
            except SyntaxError as exc:
                problems.append(f"compose.yml: `{name}`: healthcheck is not Python: {exc}")
        elif test[:1] == ["CMD-SHELL"] and "celery" in test[1]:
            targets.add(entry_point(test[1]))
    return problems, {target for target in targets if target}


_IMPORT = """
import importlib, json, sys
problems = []
for target in json.loads(sys.argv[1]):
    module, _, attribute = target.partition(":")
    try:
        found = importlib.import_module(module)
        if attribute and not callable(getattr(found, attribute)):
            problems.append(f"{target}: not callable")
    except Exception as exc:
        problems.append(f"{target}: {type(exc).__name__}: {exc}")
print(json.dumps(problems))
"""


def import_problems(targets: set[str]) -> list[str]:
    """Import every target in one child interpreter with no environment but PATH and the
    project, from an empty folder (so no .env file is read)."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory(prefix="check-docker-") as folder:
        result = subprocess.run(
            [sys.executable, "-c", _IMPORT, json.dumps(sorted(targets))],
            capture_output=True,
            text=True,
            cwd=folder,
            env=env,
            timeout=180,
            check=False,
        )
    if result.returncode != 0:
        return [f"import check crashed: {result.stderr.strip()[-2000:]}"]
    return [f"entry point {problem}" for problem in json.loads(result.stdout)]


def compose_cli_config(path: Path = COMPOSE) -> tuple[str, str]:
    """("ok" | "skipped" | "failed", detail) of `docker compose config -q`."""
    if shutil.which("docker") is None:
        return "skipped", "no docker client installed"
    version = _run(["docker", "compose", "version", "--short"], path.parent)
    number = version.stdout.strip().lstrip("v")
    if version.returncode != 0:
        return "skipped", "docker has no compose plugin"
    if not number[:1].isdigit() or int(number.split(".")[0]) < 2:
        return "skipped", f"docker compose {number} predates the Compose specification"
    result = _run(["docker", "compose", "-f", str(path), "config", "-q"], path.parent)
    output = (result.stderr or result.stdout).strip()
    if result.returncode == 0:
        return "ok", f"docker compose {number}: config is valid"
    if any(marker in output.lower() for marker in NO_ENGINE):
        return "skipped", f"no Docker engine: {output.splitlines()[0]}"
    return "failed", output


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def run_all(path: Path = COMPOSE) -> list[str]:
    """Every check; the problems found (empty when all is well)."""
    try:
        compose = load_compose(path)
    except ValueError as exc:
        return [str(exc)]
    problems = schema_problems(compose)
    if problems:
        return problems
    problems += dependency_problems(compose)
    problems += environment_problems(compose)
    found, targets = command_problems(compose)
    problems += found + import_problems(targets)
    status, detail = compose_cli_config(path)
    print(f"check_docker: docker compose config: {status}: {detail.splitlines()[0]}")
    if status == "failed":
        problems.append(f"docker compose config: {detail}")
    return problems


def main() -> int:
    problems = run_all()
    for problem in problems:
        print(f"check_docker: {problem}")
    print(f"check_docker: {'FAILED' if problems else 'ok'}, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
