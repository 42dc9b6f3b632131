"""Fixtures of tests/deploy: the Docker engine and compose command, the images (tests/deploy/docker.py) and one
running compose project for the module. Where no engine can run, every test here skips, saying why."""

from __future__ import annotations

import secrets
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy import docker as d


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.deploy)
            item.add_marker(pytest.mark.slow)


def log(message: str) -> None:
    print(f"[deploy {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Images:
    python: str
    postgres: str
    redis: str
    tideflow: str


@pytest.fixture(scope="session")
def compose_command() -> list[str]:
    problem = d.engine_problem()
    if problem:
        pytest.skip(f"tests/deploy need a Docker engine: {problem}")
    try:
        return d.compose_command()
    except d.Unavailable as exc:
        pytest.skip(f"tests/deploy: {exc}")


@pytest.fixture(scope="session")
def images(compose_command: list[str]) -> Images:
    started = time.monotonic()
    try:
        base = d.python_base(log)
    except d.Unavailable as exc:
        pytest.skip(f"tests/deploy: {exc}")
    made = Images(python=base, postgres=d.standin("postgres", base, log), redis=d.standin("redis", base, log),
                  tideflow=d.tideflow_image(base, d.wheelhouse(base, log), log))
    log(f"images ready in {time.monotonic() - started:.0f} s: {made}")
    return made


def stack_variables(images: Images) -> dict[str, str]:
    """What the project gets from the environment: the images, free ports, the three secrets."""
    return {
        "TIDEFLOW_IMAGE": images.tideflow,
        "TIDEFLOW_PYTHON_IMAGE": images.python,
        "TIDEFLOW_POSTGRES_IMAGE": images.postgres,
        "TIDEFLOW_REDIS_IMAGE": images.redis,
        "TIDEFLOW_WEB_PUBLISH": f"127.0.0.1:{d.free_port()}",
        "TIDEFLOW_FLOWER_PUBLISH": f"127.0.0.1:{d.free_port()}",
        "TIDEFLOW_API_TOKEN": secrets.token_hex(16),
        "FLOWER_BASIC_AUTH": f"admin:{secrets.token_hex(8)}",
        "POSTGRES_PASSWORD": secrets.token_hex(12),
    }


@pytest.fixture
def project_factory(compose_command: list[str], tmp_path: Path) -> Iterator[type[d.Project]]:
    """Projects made in a test come down (``down -v``, then by label) when it ends, passed or not."""
    made: list[d.Project] = []

    class Tracked(d.Project):
        def __init__(self, variables: dict[str, str]) -> None:  # type: ignore[override]
            super().__init__(compose_command, f"tideflow-test-{uuid.uuid4().hex[:10]}", variables,
                             Path(tmp_path))
            made.append(self)

    yield Tracked  # type: ignore[misc]
    for project in made:
        project.down()


@pytest.fixture(scope="module")
def stack(compose_command: list[str], images: Images, tmp_path_factory: pytest.TempPathFactory) -> Iterator[d.Project]:
    """The whole compose project, up and healthy; taken down with its volumes at the end of the module."""
    project = d.Project(compose_command, f"tideflow-test-{uuid.uuid4().hex[:10]}", stack_variables(images),
                        tmp_path_factory.mktemp("compose"))
    try:
        yield project
    finally:
        project.down()
