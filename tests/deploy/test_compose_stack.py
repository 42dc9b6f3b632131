"""docker/Dockerfile and docker/compose.yaml, built and run: the image a user gets (uid 10001, no compiler, the
example workflows, ``tideflow --help`` by default), compose refusing to start without its secrets, and the whole
stack (PostgreSQL, Redis, migrate, web, master, worker, beat, flower) driven through its published port: a run
started through the API succeeds, ``compose stop`` in the middle of a run and ``up`` again lose nothing, and three
workers all take tasks, each under an identity of its own in the history.

The images are made here without any registry (tests/deploy/docker.py: debootstrap, ``docker import``, Debian's
PostgreSQL and Redis, the dependencies' wheels built on this host); they are cached between runs."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from tests.deploy import docker as d
from tests.deploy.conftest import Images, log, stack_variables

pytestmark = pytest.mark.timeout(1800)  # the first run makes the base image (debootstrap) and builds everything

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")
HEALTHCHECKED = ("postgres", "redis", "web", "flower")
LONG_RUNNING = ("postgres", "redis", "web", "master", "worker", "beat", "flower")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, project: d.Project | None = None,
             interval: float = 1.0) -> T:
    """Poll ``probe`` until it returns something truthy; at the deadline fail with ``what`` (and the project's
    logs)."""
    started = time.monotonic()
    deadline = started + timeout
    last: Any = None
    while True:
        try:
            last = probe()
        except (httpx.HTTPError, AssertionError) as exc:
            last = exc
        else:
            if last:
                log(f"{what}: {time.monotonic() - started:.1f} s")
                return last
        if time.monotonic() > deadline:
            logs = project.logs() if project else ""
            raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})\n{logs}")
        time.sleep(interval)


# -- the image ---------------------------------------------------------------------------------------------------


def in_image(images: Images, *command: str) -> str:
    return d.docker("run", "--rm", images.tideflow, *command, timeout=120).stdout


def test_image_runs_as_uid_10001_with_tideflow_help_by_default(images):
    config = json.loads(d.docker("image", "inspect", "--format", "{{json .Config}}", images.tideflow).stdout)
    assert config["Cmd"] == ["tideflow", "--help"]
    assert config["User"] == "tideflow:tideflow"
    assert in_image(images, "id", "-u").strip() == "10001"
    assert in_image(images, "id", "-g").strip() == "10001"
    shown = d.docker("run", "--rm", images.tideflow, timeout=120)  # the default command
    assert "Usage: tideflow" in shown.stdout and "workflow" in shown.stdout, shown.stdout


def test_image_has_no_compiler(images):
    """The build stage installs build-essential (docker/Dockerfile); none of it reaches the final image."""
    found = in_image(images, "sh", "-c", "for c in gcc cc c++ g++ clang x86_64-linux-gnu-gcc-12 make; do "
                                         "command -v $c; done; dpkg-query -W -f '${Package}\\n' | "
                                         "grep -E '^(gcc|g\\+\\+|cpp|build-essential|libc6-dev)(-[0-9]+)?$'; true")
    assert found.strip() == "", f"compilers in the final image: {found}"


def test_image_has_the_example_workflows(images):
    shipped = set(in_image(images, "ls", "/srv/tideflow/examples").split())
    assert shipped == {p.name for p in (REPO / "examples").glob("*.yaml")}
    # their Python code is installed with the package
    assert in_image(images, "python", "-c", "import examples.etl; print(examples.etl.__name__)").strip() \
        == "examples.etl"


# -- compose -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("secret", d.SECRETS)
def test_compose_refuses_to_start_without_each_secret(images, project_factory, secret):
    variables = stack_variables(images)
    del variables[secret]
    project = project_factory(variables)
    out = project.compose("up", "-d", "--no-build", check=False, timeout=120)
    assert out.returncode != 0, out.stdout
    assert secret in out.stderr, out.stderr
    assert project.containers() == []


def services_up(project: d.Project, scale: dict[str, int] | None = None) -> dict[str, list[str]] | None:
    """Each long-running service's containers when all of them run and every healthcheck says healthy (and
    migrate has exited 0); None until then."""
    migrate = project.containers("migrate")
    if not migrate or project.inspect(migrate[0], "{{.State.Status}} {{.State.ExitCode}}") != "exited 0":
        return None
    up: dict[str, list[str]] = {}
    for service in LONG_RUNNING:
        containers = project.containers(service, running=True)
        if len(containers) != (scale or {}).get(service, 1):
            return None
        if service in HEALTHCHECKED and any(project.inspect(c, "{{.State.Health.Status}}") != "healthy"
                                            for c in containers):
            return None
        up[service] = containers
    return up


def api(project: d.Project) -> httpx.Client:
    return httpx.Client(base_url=f"http://{project.env['TIDEFLOW_WEB_PUBLISH']}",
                        headers={"Authorization": f"Bearer {project.env['TIDEFLOW_API_TOKEN']}"}, timeout=10)


def register(client: httpx.Client, definition: dict[str, Any]) -> None:
    answer = client.post("/api/workflows", json=definition)
    assert answer.status_code in (200, 201), answer.text


def start(client: httpx.Client, workflow: str, params: dict[str, Any] | None = None) -> int:
    answer = client.post("/api/runs", json={"workflow": workflow, "params": params or {}})
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


def finished(client: httpx.Client, project: d.Project, run_id: int, timeout: float = 120) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        answer = client.get(f"/api/runs/{run_id}")
        run = answer.json() if answer.status_code == 200 else {}
        return run if run.get("state") in ("succeeded", "failed", "cancelled") else None

    return wait_for(f"run {run_id} finished", probe, timeout, project)


def example(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "examples" / f"{name}.yaml").read_text())
    return loaded


def test_stack_comes_up_healthy_and_runs_a_workflow_through_the_api(stack):
    stack.compose("up", "-d", "--no-build", timeout=600)
    up = wait_for("every service up and healthy", lambda: services_up(stack), 240, stack)
    assert set(up) == set(LONG_RUNNING)
    with api(stack) as client:
        assert client.get("/api/health").status_code == 200
        register(client, example("reporting"))
        register(client, example("nightly-etl"))
        run = finished(client, stack, start(client, "nightly-etl", {"day": "2026-12-01"}))
    assert run["state"] == "succeeded", run
    assert {t["name"]: t["state"] for t in run["tasks"]} == dict.fromkeys(
        ("extract", "transform", "load_a", "load_b", "report"), "succeeded")
    # Flower answers on its published port, behind its basic authentication
    user, password = stack.env["FLOWER_BASIC_AUTH"].split(":", 1)
    flower = f"http://{stack.env['TIDEFLOW_FLOWER_PUBLISH']}"
    assert httpx.get(f"{flower}/healthcheck", timeout=10).status_code == 200
    assert httpx.get(f"{flower}/workers", timeout=10).status_code == 401
    assert httpx.get(f"{flower}/workers", auth=(user, password), timeout=10).status_code == 200


SLOW = {
    "name": "deploy-stop",
    "tasks": [
        {"name": "slow", "type": "shell", "command": "sleep 8; echo slept"},
        {"name": "side", "type": "shell", "command": "echo side"},
        {"name": "after", "type": "shell", "command": "echo after {{ upstream.slow }}", "depends_on": ["slow", "side"]},
    ],
}


def test_compose_stop_in_the_middle_of_a_run_and_up_again_loses_nothing(stack):
    stack.compose("up", "-d", "--no-build", timeout=600)
    wait_for("every service up and healthy", lambda: services_up(stack), 240, stack)
    with api(stack) as client:
        register(client, SLOW)
        run_id = start(client, "deploy-stop")

        def slow_running() -> bool:
            tasks = {t["name"]: t["state"] for t in client.get(f"/api/runs/{run_id}").json()["tasks"]}
            return tasks.get("slow") == "running"

        wait_for("task slow running", slow_running, 60, stack, interval=0.2)
    started = time.monotonic()
    stack.compose("stop", timeout=400)  # the worker's warm shutdown lets `sleep 8` finish
    log(f"compose stop: {time.monotonic() - started:.1f} s")
    assert stack.containers(running=True) == [], "compose stop left containers running"
    stack.compose("up", "-d", "--no-build", timeout=600)
    with api(stack) as client:
        run = finished(client, stack, run_id, timeout=240)  # the API answers once web is up again
        assert run["state"] == "succeeded", run
        tasks = {t["name"]: t for t in run["tasks"]}
        assert {name: t["state"] for name, t in tasks.items()} == dict.fromkeys(("slow", "side", "after"), "succeeded")
        assert tasks["after"]["result"] == "after slept"
        # and the earlier run, from before the stop, is still there: the database's volume survived
        assert client.get("/api/runs", params={"workflow": "nightly-etl"}).json()["items"]


FANOUT = {
    "name": "deploy-fanout",
    "tasks": [{"name": f"t{i:02}", "type": "shell", "command": "sleep 1; echo done"} for i in range(24)],
}


def test_three_workers_all_take_tasks_under_identities_of_their_own(stack):
    stack.compose("up", "-d", "--no-build", "--scale", "worker=3", timeout=600)
    up = wait_for("three workers up", lambda: services_up(stack, {"worker": 3}), 240, stack)
    def all_ready() -> bool:
        logs = [d.docker("logs", c, check=False) for c in up["worker"]]
        return all("ready." in out.stdout + out.stderr for out in logs)

    wait_for("the three workers ready", all_ready, 120, stack)
    with api(stack) as client:
        register(client, FANOUT)
        run = finished(client, stack, start(client, "deploy-fanout"))
        assert run["state"] == "succeeded", run
        workers = {t["worker"] for t in run["tasks"]}
        history = client.get(f"/api/runs/{run['id']}/history").json()
    # NODE:BOOT:PID (app.runtime.worker_identity): a worker is its node and boot, its pool processes the pids
    started_by = {e["actor"].rsplit(":", 1)[0] for e in history if e["task"] and e["to"] == "running"}
    nodes = {w.rsplit(":", 1)[0] for w in workers}
    assert len(nodes) == 3, workers
    assert started_by == nodes
    hostnames = {stack.inspect(c, "{{.Config.Hostname}}") for c in up["worker"]}
    assert {n.split(":")[0] for n in nodes} == {f"worker@{h}" for h in hostnames}
