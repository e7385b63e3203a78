"""CI check of docker/compose.yml and docker/Dockerfile, for machines without a Docker engine.

`python scripts/check_docker.py` prints every problem and exits 1 if there is one. It reads
the files as Compose and BuildKit would (anchors, merge keys, `${VAR:-default}` with the
defaults, `.dockerignore`), then proves each container command names a real entry point by
importing it in a child interpreter under the compose environment. `docker compose config`
runs too when a Compose v2 client is installed; without one, or without an engine, it is
skipped. tests/unit/test_docker_files.py imports these functions by path.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker" / "compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
PROCFILE = ROOT / "Procfile"
SETUP_CFG = ROOT / "setup.cfg"

BASE_IMAGE = "python:3.11-slim"
WEB_PORT = 7500
REQUIRED_SERVICES = (
    "postgres",
    "redis",
    "rabbitmq",
    "release",
    "web",
    "worker",
    "beat",
    "flower",
    "simulator",
)
REQUIRED_HEALTHCHECKS = ("postgres", "redis", "rabbitmq", "web", "simulator")
REQUIRED_DEPENDENCIES = {
    "release": {"postgres": "service_healthy"},
    "web": {
        "release": "service_completed_successfully",
        "redis": "service_healthy",
        "rabbitmq": "service_healthy",
    },
    "worker": {
        "release": "service_completed_successfully",
        "redis": "service_healthy",
        "rabbitmq": "service_healthy",
    },
}
PUBLISHED_PORTS = {"web": WEB_PORT, "flower": 5555, "simulator": 13000, "rabbitmq": 15672}
REQUIRED_ENV = (
    "PORT",
    "DATABASE_URL",
    "REDIS_URL",
    "CELERY_BROKER_URL",
    "USER_MANAGER_BROKER_URL",
    "MONGODB_SERVICE",
    "BLOB_SERVICE",
    "USER_SERVICE",
    "USER_MANAGER_SERVICE",
)
EXTRA_ENV = ("LOG_LEVEL",)
CONDITIONS = ("service_started", "service_healthy", "service_completed_successfully")
URL_SCHEMES = ("http", "https", "postgresql", "postgres", "redis", "rediss", "amqp", "pyamqp")
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "0.0.0.0")
CELERY_COMMANDS = ("worker", "beat", "flower")
DEV_TOOLS = ("pytest", "ruff", "hypothesis", "freezegun", "fakeredis", ".[dev", ".[test")
SHELLS = ("sh", "/bin/sh", "bash", "/bin/bash")
NO_ENGINE = (
    "cannot connect to the docker daemon",
    "is the docker daemon running",
    "docker daemon is not running",
    "error during connect",
    "permission denied while trying to connect",
)


# --------------------------------------------------------------------------- interpolation

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's `$$`, `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:+alt}`;
    `${VAR:?message}` with VAR unset raises ValueError, as Compose refuses the file."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["named"]
        value, op, arg = env.get(name), match["op"] or "", match["arg"] or ""
        unset = value is None or (op.startswith(":") and value == "")
        if op.endswith("-"):
            return arg if unset else str(value)
        if op.endswith("+"):
            return "" if unset else arg
        if op.endswith("?") and unset:
            raise ValueError(f"${{{name}}} is required: {arg or 'unset'}")
        return "" if value is None else str(value)

    result = _VARIABLE.sub(replace, text)
    if "${" in result.replace("$$", ""):
        raise ValueError(f"unparsable variable in {text!r}")
    return result


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    """Interpolate every string value (not keys) of a loaded YAML tree."""
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    return node


def shell_defaults(text: str) -> str:
    """What a POSIX shell makes of `${VAR:-default}` with nothing set: the default."""
    return interpolate(text.replace("$$", "\0"), {}).replace("\0", "$")


# --------------------------------------------------------------------------- compose


@dataclass
class Compose:
    path: Path
    raw: dict[str, Any]
    services: dict[str, dict[str, Any]]

    @property
    def folder(self) -> Path:
        return self.path.parent

    def app_services(self) -> list[str]:
        """Services running the project's image: built here, or the image a build makes."""
        built = {s.get("image") for s in self.services.values() if "build" in s}
        return [
            name
            for name, service in self.services.items()
            if "build" in service or (service.get("image") in built - {None})
        ]


def load_compose(path: Path = COMPOSE, env: Mapping[str, str] | None = None) -> Compose:
    """Parse with anchors and merge keys resolved, then interpolate with `env` (default: none,
    so the file's own defaults are checked). Raises ValueError on unreadable files."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path.name}: cannot parse: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path.name}: not a mapping")
    tree = interpolate_tree(raw, env or {})
    services = tree.get("services")
    if not isinstance(services, dict) or not services:
        raise ValueError(f"{path.name}: no services")
    return Compose(path, tree, {str(k): v or {} for k, v in services.items()})


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's environment as strings, from either the mapping or the list form."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (str(item).partition("=") for item in env)
        return {key: value for key, _, value in pairs}
    return {str(k): "" if v is None else _scalar(v) for k, v in env.items()}


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def dependencies(service: Mapping[str, Any]) -> dict[str, str]:
    """depends_on as {service: condition}; the list form means service_started."""
    found = service.get("depends_on") or {}
    if isinstance(found, list):
        return {str(name): "service_started" for name in found}
    return {
        str(name): str((spec or {}).get("condition", "service_started"))
        for name, spec in found.items()
    }


def command_argv(command: Any) -> list[str]:
    """A compose `command` as argv; a string is split like a shell would, without one."""
    if command is None:
        return []
    if isinstance(command, list):
        return [str(part) for part in command]
    return shlex.split(str(command))


def unwrap_shell(argv: list[str]) -> list[str]:
    """`sh -c "exec prog args"` as `prog args` with shell defaults applied."""
    if len(argv) >= 3 and argv[0] in SHELLS and argv[1] == "-c":
        inner = shlex.split(shell_defaults(argv[2]))
        return inner[1:] if inner[:1] == ["exec"] else inner
    return argv


def published_ports(service: Mapping[str, Any]) -> set[int]:
    """Container ports of `ports:`, short ("[ip:]host:container[/proto]") or long form."""
    found = set()
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            target = entry.get("target")
        else:
            target = str(entry).split("/")[0].rsplit(":", 1)[-1]
        if str(target).isdigit():
            found.add(int(target))
    return found


def healthcheck_argv(service: Mapping[str, Any]) -> list[str] | None:
    """The healthcheck's command as argv, None when there is none or it is disabled."""
    check = service.get("healthcheck")
    if not isinstance(check, dict) or check.get("disable"):
        return None
    test = check.get("test")
    if isinstance(test, str):
        return ["sh", "-c", test]
    if not isinstance(test, list) or not test or test[0] == "NONE":
        return None
    if test[0] == "CMD-SHELL":
        return ["sh", "-c", " ".join(str(part) for part in test[1:])]
    if test[0] == "CMD":
        return [str(part) for part in test[1:]]
    return None


def check_compose(compose: Compose) -> list[str]:
    """Structure: services, images, healthchecks, dependencies, restart, ports."""
    problems = []
    if "version" in compose.raw:
        problems.append("compose.yml: drop the obsolete `version:` key (Compose spec)")
    services = compose.services
    for name in REQUIRED_SERVICES:
        if name not in services:
            problems.append(f"compose.yml: no `{name}` service")
    for name, service in services.items():
        where = f"compose.yml: service `{name}`"
        if "image" not in service and "build" not in service:
            problems.append(f"{where}: has neither image nor build")
        if "build" in service:
            problems += _check_build(compose, where, service["build"])
        if name in REQUIRED_HEALTHCHECKS and healthcheck_argv(service) is None:
            problems.append(f"{where}: needs a healthcheck")
        for target, condition in dependencies(service).items():
            if target not in services:
                problems.append(f"{where}: depends_on `{target}`, which is not a service")
                continue
            if condition not in CONDITIONS:
                problems.append(f"{where}: unknown depends_on condition {condition!r}")
            if condition == "service_healthy" and healthcheck_argv(services[target]) is None:
                problems.append(f"{where}: waits for `{target}` healthy, it has no healthcheck")
            if condition == "service_completed_successfully" and services[target].get(
                "restart", "no"
            ) not in ("no", None):
                problems.append(f"{where}: waits for `{target}` to complete; it must not restart")
        for target, condition in REQUIRED_DEPENDENCIES.get(name, {}).items():
            if dependencies(service).get(target) != condition:
                problems.append(f"{where}: must depend on `{target}` with {condition}")
        if name in PUBLISHED_PORTS and PUBLISHED_PORTS[name] not in published_ports(service):
            problems.append(f"{where}: must publish container port {PUBLISHED_PORTS[name]}")
    release = services.get("release", {})
    if release.get("restart") is False:
        problems.append('compose.yml: service `release`: write restart: "no" (quoted)')
    elif "release" in services and release.get("restart") != "no":
        problems.append('compose.yml: service `release`: needs restart: "no"')
    problems += _cycles(services)
    return problems


def _check_build(compose: Compose, where: str, build: Any) -> list[str]:
    spec = {"context": build} if isinstance(build, str) else dict(build)
    context = (compose.folder / str(spec.get("context", "."))).resolve()
    dockerfile = context / str(spec.get("dockerfile", "Dockerfile"))
    if not context.is_dir():
        return [f"{where}: build context {context} is not a folder"]
    if not dockerfile.is_file():
        return [f"{where}: no Dockerfile at {dockerfile}"]
    return []


def _cycles(services: Mapping[str, Mapping[str, Any]]) -> list[str]:
    state: dict[str, str] = {}

    def visit(name: str, path: tuple[str, ...]) -> str | None:
        if state.get(name) == "done" or name not in services:
            return None
        if state.get(name) == "open":
            return " -> ".join((*path, name))
        state[name] = "open"
        for target in dependencies(services[name]):
            cycle = visit(target, (*path, name))
            if cycle:
                return cycle
        state[name] = "done"
        return None

    for name in services:
        cycle = visit(name, ())
        if cycle:
            return [f"compose.yml: depends_on cycle {cycle}"]
    return []


def check_environment(compose: Compose, known: Iterable[str]) -> list[str]:
    """The project's services: the README's variables set, no unknown names, no URL that
    points a container at itself or at a host that is not a service of the file."""
    problems = []
    allowed = set(known)
    for name in compose.app_services():
        where = f"compose.yml: service `{name}`"
        env = environment(compose.services[name])
        for key in REQUIRED_ENV:
            if not env.get(key):
                problems.append(f"{where}: {key} is not set")
        for key, value in env.items():
            if key not in allowed:
                problems.append(f"{where}: {key} is not a setting nor a Procfile variable")
            problems += _check_url(compose, where, key, value)
    return problems


def _check_url(compose: Compose, where: str, key: str, value: str) -> list[str]:
    parts = urlsplit(value)
    if parts.scheme not in URL_SCHEMES or not parts.hostname:
        return []
    host = parts.hostname
    if host in LOCAL_HOSTS or host.startswith("127."):
        return [f"{where}: {key} points at {host}, the container itself"]
    if "." not in host and host not in compose.services:
        return [f"{where}: {key} points at `{host}`, which is not a service"]
    return []


def known_variables(procfile: Path = PROCFILE) -> set[str]:
    """Settings fields, the Procfile's `${VARS}` and the logging level."""
    sys.path.insert(0, str(ROOT))
    try:
        from supervisor.config import Settings
    finally:
        sys.path.remove(str(ROOT))
    names = {field.upper() for field in Settings.model_fields}
    names |= set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", procfile.read_text(encoding="utf-8")))
    return names | set(EXTRA_ENV)


def compose_cli_config(path: Path = COMPOSE) -> tuple[str, str]:
    """("ok" | "skipped" | "failed", detail) from `docker compose config -q`."""
    for client in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(client[0]) is None:
            continue
        try:
            version = _run([*client, "version", "--short"], path.parent)
        except (OSError, subprocess.SubprocessError) as exc:
            return "skipped", f"{' '.join(client)}: {exc}"
        if version.returncode != 0:
            continue
        number = version.stdout.strip().lstrip("v")
        if not number[:1].isdigit() or int(number.split(".")[0]) < 2:
            return "skipped", f"{' '.join(client)} {number} predates the Compose spec"
        result = _run([*client, "-f", str(path), "config", "-q"], path.parent)
        if result.returncode == 0:
            return "ok", f"{' '.join(client)} {number}: config is valid"
        output = (result.stderr or result.stdout).strip()
        if any(marker in output.lower() for marker in NO_ENGINE):
            return "skipped", f"no Docker engine: {output.splitlines()[0]}"
        return "failed", output
    return "skipped", "no Compose v2 client (docker compose / docker-compose) installed"


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


# --------------------------------------------------------------------------- Dockerfile


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str
    line: int
    heredocs: tuple[str, ...] = ()


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


_HEREDOC = re.compile(r"<<(-?)([\"']?)([A-Za-z_][A-Za-z0-9_]*)\2")


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with line continuations joined, comments dropped and heredoc bodies
    attached to the instruction that opens them."""
    lines = text.splitlines()
    found, index = [], 0
    while index < len(lines):
        stripped = lines[index].strip()
        if not stripped or stripped.startswith("#"):
            index += 1
            continue
        start, parts = index, []
        while True:
            current = lines[index].rstrip()
            index += 1
            if not current.endswith("\\"):
                parts.append(current.strip())
                break
            parts.append(current[:-1].strip())
            while index < len(lines) and lines[index].strip().startswith("#"):
                index += 1
            if index >= len(lines):
                break
        keyword, _, value = " ".join(p for p in parts if p).partition(" ")
        bodies = []
        for dash, _, word in _HEREDOC.findall(value):
            body = []
            while index < len(lines):
                line = lines[index].lstrip("\t") if dash else lines[index]
                index += 1
                if line == word:
                    break
                body.append(line)
            bodies.append("\n".join(body))
        found.append(Instruction(keyword.upper(), value.strip(), start + 1, tuple(bodies)))
    return found


def stages(instructions: list[Instruction]) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the build stages, FROM images resolved."""
    args: dict[str, str] = {}
    result: list[Stage] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            words = [w for w in instruction.value.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
            result.append(Stage(interpolate(words[0], args), name))
        elif result:
            result[-1].instructions.append(instruction)
        elif instruction.keyword == "ARG":
            key, _, default = instruction.value.partition("=")
            args[key.strip()] = default.strip().strip("\"'")
    return args, result


def env_values(stage: Stage) -> dict[str, str]:
    """ENV settings of a stage, `KEY=value ...` or the old `KEY value` form."""
    values = {}
    for instruction in stage.all("ENV"):
        words = shlex.split(instruction.value)
        if words and "=" not in words[0]:
            values[words[0]] = " ".join(words[1:])
            continue
        for word in words:
            key, _, value = word.partition("=")
            values[key] = value
    return values


def exec_form(value: str) -> list[str]:
    """CMD/ENTRYPOINT as argv: the JSON form, or the shell form run by /bin/sh -c."""
    if value.startswith("["):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return ["/bin/sh", "-c", value]
        return [str(part) for part in parsed]
    return ["/bin/sh", "-c", value]


def image_command(stage: Stage) -> list[str]:
    """The final image's default command: ENTRYPOINT + CMD."""
    entry = stage.all("ENTRYPOINT")
    cmd = stage.all("CMD")
    argv = exec_form(entry[-1].value) if entry else []
    return argv + (exec_form(cmd[-1].value) if cmd else [])


def workdir(stage: Stage) -> PurePosixPath:
    current = PurePosixPath("/")
    for instruction in stage.all("WORKDIR"):
        current = current / instruction.value
    return current


def copies(stage: Stage) -> list[tuple[list[str], str, str | None]]:
    """(sources, destination, --from stage) of every COPY/ADD of a stage."""
    found = []
    for instruction in stage.instructions:
        if instruction.keyword not in ("COPY", "ADD") or instruction.heredocs:
            continue
        words = shlex.split(instruction.value)
        origin = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")), None)
        paths = [w for w in words if not w.startswith("--")]
        if len(paths) >= 2:
            found.append((paths[:-1], paths[-1], origin))
    return found


def image_source(path: str, stage: Stage, context: Path) -> Path | None:
    """The build-context file a path inside the final image was copied from, if any."""
    target = PurePosixPath(path)
    base = workdir(stage)
    for sources, destination, origin in reversed(copies(stage)):
        if origin is not None or len(sources) != 1:
            continue
        dest = base / destination
        source = context / sources[0]
        if target == dest or (source.is_dir() and dest in target.parents):
            return source / target.relative_to(dest)
        if destination.endswith("/") and target == dest / Path(sources[0]).name:
            return source
    return None


def dockerignore_patterns(dockerfile: Path, context: Path) -> list[tuple[bool, str]]:
    """BuildKit's rule: `<Dockerfile>.dockerignore` beside it, else the context's."""
    candidate = dockerfile.with_name(dockerfile.name + ".dockerignore")
    if not candidate.is_file():
        candidate = context / ".dockerignore"
    if not candidate.is_file():
        return []
    patterns = []
    for line in candidate.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        negate = text.startswith("!")
        patterns.append((negate, text.lstrip("!").strip().strip("/")))
    return patterns


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out, index = [], 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            out.append("(?:.*/)?")
            index += 3
        elif pattern.startswith("**", index):
            out.append(".*")
            index += 2
        elif pattern[index] == "*":
            out.append("[^/]*")
            index += 1
        elif pattern[index] == "?":
            out.append("[^/]")
            index += 1
        else:
            out.append(re.escape(pattern[index]))
            index += 1
    return re.compile("".join(out) + r"\Z")


def is_ignored(relative: str, patterns: list[tuple[bool, str]]) -> bool:
    """Whether the context path is left out: the last pattern matching it or a parent wins."""
    parts = PurePosixPath(relative).parts
    ignored = False
    for negate, pattern in patterns:
        regex = _glob_regex(pattern)
        if any(regex.match("/".join(parts[:k])) for k in range(1, len(parts) + 1)):
            ignored = not negate
    return ignored


def setup_cfg(path: Path = SETUP_CFG) -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(path, encoding="utf-8")
    return config


def check_dockerfile(
    path: Path = DOCKERFILE, context: Path = ROOT, setup: Path = SETUP_CFG
) -> list[str]:
    """Base image, non-root user, deps layer before the code, no dev tools, extras that
    exist, EXPOSE, PYTHONUNBUFFERED, CMD, and COPY sources that reach the build."""
    where = f"{path.name}"
    try:
        instructions = parse_dockerfile(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return [f"{where}: cannot read: {exc}"]
    args, all_stages = stages(instructions)
    if not all_stages:
        return [f"{where}: no FROM"]
    problems = []
    for stage in all_stages:
        if not stage.base.startswith(BASE_IMAGE):
            problems.append(f"{where}: FROM {stage.base}, expected {BASE_IMAGE}")
    final = all_stages[-1]
    users = final.all("USER")
    if not users or users[-1].value.split(":")[0] in ("root", "0"):
        problems.append(f"{where}: the final image must run as a non-root USER")
    if env_values(final).get("PYTHONUNBUFFERED") != "1":
        problems.append(f"{where}: set ENV PYTHONUNBUFFERED=1 in the final image")
    exposed = {w.split("/")[0] for i in final.all("EXPOSE") for w in i.value.split()}
    if str(WEB_PORT) not in exposed:
        problems.append(f"{where}: EXPOSE {WEB_PORT}")
    if not image_command(final):
        problems.append(f"{where}: no CMD")
    for stage in all_stages:
        for instruction in stage.all("RUN"):
            if instruction.value.startswith("python"):
                for body in instruction.heredocs:
                    try:
                        compile(body, f"{where}:{instruction.line}", "exec")
                    except SyntaxError as exc:
                        problems.append(f"{where}:{instruction.line}: heredoc: {exc}")
    problems += _check_layers(where, all_stages)
    problems += _check_extras(where, args, setup)
    problems += _check_copies(where, path, context, all_stages, setup)
    return problems


def _check_layers(where: str, all_stages: list[Stage]) -> list[str]:
    problems = []
    installs = [
        (stage, index, instruction)
        for stage in all_stages
        for index, instruction in enumerate(stage.instructions)
        if instruction.keyword == "RUN" and "pip install" in instruction.value
    ]
    package = [(s, i) for s, i, ins in installs if "--no-deps" in ins.value]
    if not package:
        return [f"{where}: install the package with `pip install --no-deps` after its deps"]
    stage, package_at = package[0]
    deps_at = next((i for s, i, ins in installs if s is stage and i < package_at), None)
    first_code = next(
        (
            index
            for index, instruction in enumerate(stage.instructions)
            if instruction.keyword == "COPY"
            and any(
                src in (".", "./", "app", "supervisor", "tasks") for src in _sources(instruction)
            )
        ),
        None,
    )
    setup_at = next(
        (
            index
            for index, instruction in enumerate(stage.instructions)
            if instruction.keyword == "COPY" and "setup.cfg" in _sources(instruction)
        ),
        None,
    )
    if deps_at is None or setup_at is None or first_code is None:
        problems.append(f"{where}: copy setup.cfg, install the deps, then copy the code")
    elif not setup_at < deps_at < first_code < package_at:
        problems.append(f"{where}: the deps layer must come before the code is copied")
    for stage in all_stages:
        for instruction in stage.all("RUN"):
            if "pip install" in instruction.value and any(
                tool in instruction.value for tool in DEV_TOOLS
            ):
                problems.append(f"{where}:{instruction.line}: dev tools in the image")
    return problems


def _sources(instruction: Instruction) -> list[str]:
    words = [w for w in shlex.split(instruction.value) if not w.startswith("--")]
    return words[:-1]


def _extras(args: Mapping[str, str]) -> list[str]:
    return [name for name in args.get("EXTRAS", "").replace(" ", "").split(",") if name]


def _check_extras(where: str, args: Mapping[str, str], setup: Path) -> list[str]:
    problems = []
    available = setup_cfg(setup)["options.extras_require"]
    wanted = _extras(args)
    for name in wanted:
        if name not in available:
            problems.append(f"{where}: ARG EXTRAS names {name!r}, which setup.cfg lacks")
        elif name in ("dev", "test"):
            problems.append(f"{where}: ARG EXTRAS installs dev tools ({name!r})")
    requirements = " ".join(available.get(name, "") for name in wanted)
    if not problems and not re.search(r"(?m)^\s*flower\b", requirements.replace(" ", "\n")):
        problems.append(f"{where}: the flower service needs an extra with flower in EXTRAS")
    return problems


def _check_copies(
    where: str, path: Path, context: Path, all_stages: list[Stage], setup: Path
) -> list[str]:
    problems = []
    patterns = dockerignore_patterns(path, context)
    names = {stage.name for stage in all_stages if stage.name}
    config = setup_cfg(setup)
    for stage in all_stages:
        for sources, _, origin in copies(stage):
            if origin is not None:
                if origin not in names:
                    problems.append(f"{where}: COPY --from={origin}: no such stage")
                continue
            for source in sources:
                problems += _check_source(where, context, source, patterns, config)
    return problems


def _check_source(
    where: str,
    context: Path,
    source: str,
    patterns: list[tuple[bool, str]],
    config: configparser.ConfigParser,
) -> list[str]:
    if source in (".", "./"):
        needed = ["setup.cfg", "pyproject.toml", *_package_roots(config)]
        readme = config["metadata"].get("long_description", "")
        if readme.startswith("file:"):
            needed.append(readme.split(":", 1)[1].strip())
        return [
            f"{where}: the build needs {name}, which is missing or in .dockerignore"
            for name in needed
            if not (context / name).exists() or is_ignored(name, patterns)
        ]
    matches = sorted(context.glob(source))
    if not matches:
        return [f"{where}: COPY {source}: not in the build context"]
    problems = []
    for match in matches:
        relative = match.relative_to(context).as_posix()
        files = [p for p in match.rglob("*") if p.is_file()] if match.is_dir() else [match]
        kept = [f for f in files if not is_ignored(f.relative_to(context).as_posix(), patterns)]
        if is_ignored(relative, patterns) or not kept:
            problems.append(f"{where}: COPY {source}: left out by .dockerignore")
    return problems


def _package_roots(config: configparser.ConfigParser) -> list[str]:
    include = config.get("options.packages.find", "include", fallback="")
    return sorted({line.strip().split(".")[0] for line in include.split() if line.strip()})


# --------------------------------------------------------------------------- entry points


@dataclass
class Probe:
    """One thing to import in the child interpreter, and where the file asked for it."""

    where: str
    kind: str
    detail: dict[str, Any]


def entry_point_checks(
    where: str, argv: list[str], image: Stage | None, context: Path = ROOT
) -> tuple[list[str], list[Probe]]:
    """Problems seen statically, and probes to run, for one container command."""
    argv = unwrap_shell(argv)
    if not argv:
        return [f"{where}: no command (the image's CMD would be used)"], []
    program, rest = PurePosixPath(argv[0]).name, argv[1:]
    if program == "gunicorn":
        return [], [Probe(where, "gunicorn", {"args": rest})]
    if program == "celery":
        return _celery(where, rest)
    if program == "alembic":
        return _alembic(where, rest, image, context), [Probe(where, "alembic", {"args": rest})]
    if program in ("python", "python3") and rest[:1] == ["-m"] and len(rest) >= 2:
        probes = [Probe(where, "main", {"module": rest[1]})]
        problems: list[str] = []
        if rest[1] == "simulator":
            probes.append(Probe(where, "simulator", {"args": rest[2:]}))
            problems += _simulator_blend(where, rest[2:], image, context)
        return problems, probes
    return [f"{where}: {argv[0]!r} is not gunicorn, celery, alembic or python -m"], []


def _option(args: list[str], *names: str) -> str | None:
    for index, arg in enumerate(args):
        for name in names:
            if arg == name and index + 1 < len(args):
                return args[index + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def _celery(where: str, args: list[str]) -> tuple[list[str], list[Probe]]:
    module = _option(args, "-A", "--app")
    if module is None:
        return [f"{where}: celery without -A"], []
    words = [a for i, a in enumerate(args) if not a.startswith("-") and args[i - 1] != "-A"]
    words = [w for w in words if w != module]
    command = words[0] if words else None
    if command not in ("inspect", *CELERY_COMMANDS):
        return [f"{where}: celery {command!r} is not worker, beat, flower or inspect"], []
    queues = _option(args, "--queues", "-Q")
    detail = {"module": module, "queues": queues.split(",") if queues else []}
    return [], [Probe(where, "celery", detail)]


def _alembic(where: str, args: list[str], image: Stage | None, context: Path) -> list[str]:
    """alembic.ini in the working directory and its script_location's env.py, in the image."""
    ini = _option(args, "-c", "--config") or "alembic.ini"
    base = workdir(image) if image is not None else PurePosixPath(context.as_posix())
    ini_path = base / ini
    source = image_source(str(ini_path), image, context) if image else Path(str(ini_path))
    if source is None or not source.is_file():
        return [f"{where}: alembic needs {ini} in the working directory ({base})"]
    config = configparser.ConfigParser(interpolation=None)
    config.read(source, encoding="utf-8")
    location = config.get("alembic", "script_location", fallback="")
    env_py = base / location.replace("%(here)s", str(ini_path.parent)) / "env.py"
    found = image_source(str(env_py), image, context) if image else Path(str(env_py))
    if found is None or not found.is_file():
        return [f"{where}: alembic's script_location has no env.py ({env_py})"]
    return []


def _simulator_blend(where: str, args: list[str], image: Stage | None, context: Path) -> list[str]:
    """In the image the package is installed, so the default demo (a path beside the source
    tree) is absent: the command must name a .blend the Dockerfile copies."""
    if image is None:
        return []
    blend = _option(args, "--demo-blend")
    if blend is None:
        return [f"{where}: pass --demo-blend with a .blend copied into the image"]
    if blend == "":
        return []
    source = image_source(blend, image, context)
    if source is None or not source.is_file():
        return [f"{where}: --demo-blend {blend} is not copied into the image"]
    return []


_PROBE = r"""
import contextlib, importlib, importlib.util, io, json, sys

def attr(target):
    module, _, expr = target.partition(":")
    name = expr.split("(")[0].strip() or "application"
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    if expr.endswith(")") and not callable(obj):
        raise TypeError(f"{target}: {name} is not callable")

def argparse_ok(parser, args):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_args(args)
    except SystemExit:
        raise ValueError(err.getvalue().strip().splitlines()[-1]) from None

def gunicorn(detail):
    from gunicorn.config import Config
    parsed = argparse_ok(Config().parser(), detail["args"])
    if len(parsed.args) != 1:
        raise ValueError(f"expected one app target, got {parsed.args}")
    attr(parsed.args[0])

def celery(detail):
    from celery import Celery
    module = importlib.import_module(detail["module"])
    app = getattr(module, "app", None) or getattr(module, "celery", None)
    if not isinstance(app, Celery):
        raise TypeError(f"{detail['module']} has no Celery `app`")
    known = {q.name for q in app.conf.task_queues or ()}
    unknown = sorted(set(detail["queues"]) - known)
    if unknown:
        raise ValueError(f"queues {unknown} are not among the app's {sorted(known)}")

def alembic(detail):
    from alembic.config import CommandLine
    argparse_ok(CommandLine(prog="alembic").parser, detail["args"])

def main(detail):
    module = detail["module"]
    spec = importlib.util.find_spec(module)
    if spec is None:
        raise ImportError(f"no module {module}")
    if spec.submodule_search_locations is not None:
        if importlib.util.find_spec(module + ".__main__") is None:
            raise ImportError(f"{module} has no __main__")

def simulator(detail):
    from simulator.__main__ import config_from, parse_args
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            config_from(parse_args(detail["args"]))
    except SystemExit:
        raise ValueError(err.getvalue().strip().splitlines()[-1]) from None

def settings(detail):
    from supervisor.config import load_settings
    load_settings()

results = []
for kind, detail in json.load(sys.stdin):
    try:
        globals()[kind](detail)
        results.append(None)
    except Exception as exc:
        results.append(f"{type(exc).__name__}: {exc}")
json.dump(results, sys.stdout)
"""


def run_probes(probes: list[Probe], env: Mapping[str, str], root: Path = ROOT) -> list[str]:
    """Import every probed entry point in one child interpreter, under `env` only (plus PATH
    and the project on PYTHONPATH), from an empty folder so no `.env` file leaks in."""
    if not probes:
        return []
    child_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(root),
        "PYTHONDONTWRITEBYTECODE": "1",
        **env,
    }
    payload = json.dumps([[probe.kind, probe.detail] for probe in probes])
    with tempfile.TemporaryDirectory(prefix="check-docker-") as folder:
        result = subprocess.run(
            [sys.executable, "-c", _PROBE],
            input=payload,
            capture_output=True,
            text=True,
            cwd=folder,
            env=child_env,
            timeout=180,
            check=False,
        )
    if result.returncode != 0:
        return [f"entry point probe crashed: {result.stderr.strip()[-2000:]}"]
    outcomes = json.loads(result.stdout)
    return [
        f"{probe.where}: {probe.kind}: {outcome}"
        for probe, outcome in zip(probes, outcomes, strict=True)
        if outcome
    ]


def procfile_commands(path: Path = PROCFILE) -> dict[str, list[str]]:
    """Each Procfile role's argv, `${VAR:-default}` at its default."""
    commands = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        role, sep, command = line.partition(":")
        if sep and role.strip() and not line.startswith("#"):
            commands[role.strip()] = shlex.split(shell_defaults(command.strip()))
    return commands


def _signature(argv: list[str]) -> tuple[str, ...]:
    """What must agree between a Procfile line and its container: program, app, subcommand."""
    argv = unwrap_shell(argv)
    if not argv:
        return ()
    program = PurePosixPath(argv[0]).name
    if program == "celery":
        module = _option(argv, "-A", "--app") or ""
        words = [w for w in argv[1:] if not w.startswith("-") and w != module]
        return program, module, words[0] if words else ""
    if program == "gunicorn":
        return program, argv[-1]
    return (program, *argv[1:3])


def check_entry_points(
    compose: Compose, dockerfile: Path = DOCKERFILE, context: Path = ROOT
) -> list[str]:
    """Every container command and the image's CMD name a real entry point; each Procfile
    role's container runs the same program on the same target; healthchecks compile."""
    _, all_stages = stages(parse_dockerfile(dockerfile.read_text(encoding="utf-8")))
    image = all_stages[-1] if all_stages else None
    problems: list[str] = []
    probes: list[Probe] = []
    env: dict[str, str] = {}
    procfile = procfile_commands()
    for role in procfile:
        if role not in compose.services:
            problems.append(f"compose.yml: no service for the Procfile's `{role}`")
    for name in compose.app_services():
        service = compose.services[name]
        where = f"compose.yml: service `{name}`"
        env = environment(service) or env
        argv = command_argv(service.get("command"))
        if not argv and image is not None:
            argv = image_command(image)
        found, wanted = entry_point_checks(where, argv, image, context)
        problems += found
        probes += wanted
        if name in procfile and _signature(procfile[name]) != _signature(argv):
            problems.append(
                f"{where}: runs {' '.join(_signature(argv))}, "
                f"the Procfile's {name} runs {' '.join(_signature(procfile[name]))}"
            )
        problems += _check_healthcheck(where, service, image, context, probes)
    if image is not None:
        found, wanted = entry_point_checks("Dockerfile: CMD", image_command(image), image, context)
        problems += found
        probes += wanted
        if _signature(image_command(image)) != _signature(procfile.get("web", [])):
            problems.append("Dockerfile: CMD should run the Procfile's web process")
    probes.append(Probe("compose.yml: supervisor environment", "settings", {}))
    return problems + run_probes(probes, env)


def _check_healthcheck(
    where: str, service: Mapping[str, Any], image: Stage | None, context: Path, probes: list
) -> list[str]:
    argv = healthcheck_argv(service)
    if argv is None:
        return []
    argv = unwrap_shell(argv)
    if argv[:2] in (["python", "-c"], ["python3", "-c"]) and len(argv) >= 3:
        try:
            compile(argv[2], f"{where} healthcheck", "exec")
        except SyntaxError as exc:
            return [f"{where}: healthcheck is not valid Python: {exc}"]
        return []
    found, wanted = entry_point_checks(f"{where} healthcheck", argv, image, context)
    probes += wanted
    return found


# --------------------------------------------------------------------------- main


def run_all(compose_path: Path = COMPOSE, dockerfile: Path = DOCKERFILE) -> list[str]:
    """Every check; the list of problems (empty when all is well)."""
    try:
        compose = load_compose(compose_path)
    except ValueError as exc:
        return [str(exc)]
    problems = check_compose(compose)
    problems += check_environment(compose, known_variables())
    problems += check_dockerfile(dockerfile)
    problems += check_entry_points(compose, dockerfile)
    status, detail = compose_cli_config(compose_path)
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
