"""The Docker side of tests/deploy: the engine and compose commands, the stand-in images (built without any image
registry, cached between runs by a hash of their inputs) and a compose project that always comes down.

No registry is reachable on the machines the suite runs on, so every image is made here:

* ``tideflow-test/python:HASH``: a Debian bookworm root filesystem made by ``debootstrap`` (minbase, with
  python3, python3-venv, python3-pip and python-is-python3), turned into an image by ``docker import``. It stands in
  for ``python:3.11-slim`` (same Debian release, same Python minor version) as docker/Dockerfile's
  ``PYTHON_IMAGE``.
* ``tideflow-test/postgres:HASH`` and ``tideflow-test/redis:HASH``: Debian's PostgreSQL and Redis on that base
  (images/*.Dockerfile), standing in for ``postgres:16`` and ``redis:7`` through ``TIDEFLOW_POSTGRES_IMAGE`` and
  ``TIDEFLOW_REDIS_IMAGE``, which docker/compose.yaml reads.
* the dependencies' wheels, built on this host by the python stand-in's pip (a container on the host's network)
  into ``CACHE/wheels-HASH``, put in the build context's docker/wheels.
* ``tideflow-test/tideflow:HASH``: docker/Dockerfile built FROM the python stand-in with those wheels and
  ``PIP_NO_INDEX=1`` (no PyPI: the air-gapped build of README.md, "Deploying"); HASH covers the build context.

Each HASH covers everything the image is made from; an image whose tag exists is not built again, and a newer
one replaces the older tags of its repository. ``TIDEFLOW_TEST_CACHE`` (default ``~/.cache/tideflow-tests``)
holds the wheels.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parents[2]
IMAGES = Path(__file__).resolve().parent / "images"
CACHE = Path(os.environ.get("TIDEFLOW_TEST_CACHE") or Path.home() / ".cache" / "tideflow-tests")
PREFIX = "tideflow-test"

SUITE = "bookworm"  # python:3.11-slim's Debian release; its python3 is 3.11 as well
BASE_PACKAGES = ("ca-certificates", "python3", "python3-venv", "python3-pip", "python-is-python3")
#: what `docker import` gives the root filesystem (an imported image has no configuration)
IMPORT_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
)
#: packages' maintainer scripts start no service while an image is built (as in Debian's official images)
POLICY_RC_D = "#!/bin/sh\nexit 101\n"
#: files of the build context that docker/Dockerfile copies (and the .dockerignore that filters them)
CONTEXT = ("pyproject.toml", "README.md", "app", "tasks", "examples", ".dockerignore", "docker/Dockerfile")
SECRETS = ("TIDEFLOW_API_TOKEN", "FLOWER_BASIC_AUTH", "POSTGRES_PASSWORD")

T = TypeVar("T")


class Unavailable(Exception):
    """Docker (or what it needs here) cannot run on this machine: the deploy tests skip with this reason."""


# -- commands ----------------------------------------------------------------------------------------------------


def run(args: Sequence[str | Path], *, timeout: float = 300, check: bool = True, input: bytes | None = None,
        env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure (with ``check``) raise with its output."""
    argv = [str(a) for a in args]
    done = subprocess.run(argv, capture_output=True, timeout=timeout, input=input, env=env, cwd=cwd)
    out = subprocess.CompletedProcess(argv, done.returncode, done.stdout.decode(errors="replace"),
                                      done.stderr.decode(errors="replace"))
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {out.returncode}:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out


def docker(*args: str | Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return run(["docker", *args], **kwargs)  # type: ignore[arg-type]


def engine_problem() -> str | None:
    """Why no Docker engine answers here (None: one does)."""
    if shutil.which("docker") is None:
        return "no docker command (Debian: apt-get install docker.io; scripts/test does it as root)"
    try:
        out = run(["docker", "version", "--format", "{{.Server.Version}}"], timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return "the Docker engine does not answer `docker version` within 30 s"
    if out.returncode != 0:
        return f"no Docker engine answers ({out.stderr.strip()[-300:]}); start dockerd (scripts/test does as root)"
    return None


def compose_command() -> list[str]:
    """``docker compose`` (v2) if the plugin is there, else Debian's ``docker-compose`` (v1)."""
    if run(["docker", "compose", "version"], check=False, timeout=30).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise Unavailable("neither `docker compose` nor `docker-compose` (Debian: apt-get install docker-compose)")


def debian_mirror() -> str:
    """The Debian mirror apt uses on this host (``TIDEFLOW_TEST_DEBIAN_MIRROR`` overrides it)."""
    if os.environ.get("TIDEFLOW_TEST_DEBIAN_MIRROR"):
        return os.environ["TIDEFLOW_TEST_DEBIAN_MIRROR"]
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        for url in re.findall(r"(?:^deb\s+(?:\[[^]]*\]\s+)?|^URIs:\s*)(\S+)", text, flags=re.M):
            if re.search(r"/debian/?$", url):
                return url.rstrip("/")
    return "http://deb.debian.org/debian"


def digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def tree_digest(root: Path, names: Iterable[str]) -> str:
    """A hash of these files and directories under ``root`` (paths and contents; caches and bytecode left out)."""
    parts: list[str | bytes] = []
    for name in names:
        path = root / name
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            if "__pycache__" in f.parts or f.suffix == ".pyc":
                continue
            parts += [str(f.relative_to(root)), f.read_bytes()]
    return digest(*parts)


def image_exists(tag: str) -> bool:
    return docker("image", "inspect", tag, check=False, timeout=60).returncode == 0


def replace_older(tag: str) -> None:
    """Remove the other tags of ``tag``'s repository (a newer build replaced them; in-use ones stay)."""
    repository = tag.rsplit(":", 1)[0]
    listed = docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", repository, check=False).stdout.split()
    for old in listed:
        if old != tag:
            docker("rmi", old, check=False, timeout=120)


# -- images ------------------------------------------------------------------------------------------------------


def python_base(log: Callable[[str], None]) -> str:
    """The debootstrapped bookworm base with Python (see the module's docstring)."""
    mirror = debian_mirror()
    tag = f"{PREFIX}/python:{digest('base 1', SUITE, 'minbase', *BASE_PACKAGES, mirror, *IMPORT_CHANGES, POLICY_RC_D)}"
    if image_exists(tag):
        return tag
    if shutil.which("debootstrap") is None:
        raise Unavailable("no debootstrap to make the base image (Debian: apt-get install debootstrap)")
    if os.geteuid() != 0:
        raise Unavailable(f"debootstrap needs root to make the base image {tag} (run the suite as root once)")
    log(f"making {tag}: debootstrap {SUITE} from {mirror}")
    with tempfile.TemporaryDirectory(prefix="tideflow-rootfs-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, rootfs, mirror],
            timeout=1200)
        policy = rootfs / "usr/sbin/policy-rc.d"
        policy.write_text(POLICY_RC_D)
        policy.chmod(0o755)
        for junk in (rootfs / "var/cache/apt/archives").glob("*.deb"):
            junk.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        changes = [arg for change in IMPORT_CHANGES for arg in ("--change", change)]
        imported = subprocess.run(["docker", "import", *changes, "-", tag], stdin=tar.stdout, capture_output=True,
                                  timeout=600)
        assert tar.stdout is not None
        tar.stdout.close()
        assert tar.wait() == 0 and imported.returncode == 0, imported.stderr.decode(errors="replace")
    replace_older(tag)
    return tag


def standin(name: str, base: str, log: Callable[[str], None]) -> str:
    """``tideflow-test/NAME:HASH`` from images/NAME.Dockerfile (and its entrypoint) on ``base``."""
    files = sorted(p for p in IMAGES.iterdir() if p.name.startswith(f"{name}."))
    tag = f"{PREFIX}/{name}:{digest(base, *(p.name for p in files), *(p.read_bytes() for p in files))}"
    if not image_exists(tag):
        log(f"building {tag} (Debian's {name}) FROM {base}")
        docker("build", "--force-rm", "-q", "-f", IMAGES / f"{name}.Dockerfile", "--build-arg", f"BASE={base}",
               "-t", tag, IMAGES, timeout=900)
        replace_older(tag)
    return tag


def wheelhouse(base: str, log: Callable[[str], None]) -> Path:
    """The dependencies' wheels (and setuptools, to build Tideflow's own) for ``base``'s Python, cached by
    pyproject.toml and ``base``. pip runs in a container of ``base`` on the host's network (requirements' markers
    are evaluated by the Python that installs them: redis needs async-timeout below 3.11.3), trusting the host's
    CA bundle (the network may intercept TLS); PIP_INDEX_URL, when set, names the index."""
    pyproject = (REPO / "pyproject.toml").read_text()
    project = tomllib.loads(pyproject)["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["flower"], "setuptools>=68", "wheel"]
    target = CACHE / f"wheels-{digest(pyproject, base)}"
    if target.is_dir():
        return target
    log(f"building the dependencies' wheels with {base}'s pip into {target}")
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix="wheels-", dir=CACHE))
    options = ["--rm", "--network", "host", "--user", f"{os.getuid()}:{os.getgid()}", "-v", f"{partial}:/wheels",
               "-e", "HOME=/tmp", "-e", "PIP_DISABLE_PIP_VERSION_CHECK=1"]
    cafile = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE") or ssl.get_default_verify_paths().cafile
    if cafile and Path(cafile).is_file():
        options += ["-v", f"{Path(cafile).resolve()}:/etc/host-ca.crt:ro", "-e", "PIP_CERT=/etc/host-ca.crt"]
    if os.environ.get("PIP_INDEX_URL"):
        options += ["-e", f"PIP_INDEX_URL={os.environ['PIP_INDEX_URL']}"]
    try:
        docker("run", *options, base, "python3", "-m", "pip", "wheel", "-q", "--wheel-dir", "/wheels", *requirements,
               timeout=900)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    partial.rename(target)
    for old in CACHE.glob("wheels-*"):
        if old != target and re.fullmatch(r"wheels-[0-9a-f]{16}", old.name):
            shutil.rmtree(old, ignore_errors=True)  # an older pyproject.toml's or base's
    return target


def tideflow_image(base: str, wheels: Path, log: Callable[[str], None]) -> str:
    """docker/Dockerfile built FROM ``base`` with ``wheels`` and no package index, in a copy of the build context
    (the checkout's docker/wheels is left alone)."""
    tag = f"{PREFIX}/tideflow:{digest(base, tree_digest(REPO, CONTEXT), tree_digest(wheels.parent, [wheels.name]))}"
    if image_exists(tag):
        return tag
    with tempfile.TemporaryDirectory(prefix="tideflow-context-") as tmp:
        context = Path(tmp)
        for name in CONTEXT:
            source, dest = REPO / name, context / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(source, dest)
        shutil.copytree(wheels, context / "docker" / "wheels")
        log(f"building {tag} FROM {base} (docker/Dockerfile, wheels from {wheels}, no package index)")
        started = time.monotonic()
        docker("build", "--force-rm", "-f", context / "docker" / "Dockerfile", "--build-arg", f"PYTHON_IMAGE={base}",
               "--build-arg", "PIP_NO_INDEX=1", "-t", tag, context, timeout=1200)
        log(f"built {tag} in {time.monotonic() - started:.0f} s")
    replace_older(tag)
    return tag


# -- a compose project -------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Project:
    """docker/compose.yaml run as project ``name`` with ``variables`` (and nothing from docker/.env or this
    process's TIDEFLOW_* variables). Debian's docker-compose v1 does not know the top-level ``name:`` (``-p``
    names the project anyway): it gets a copy of the file without that line, read from docker/ as the original."""

    def __init__(self, command: list[str], name: str, variables: dict[str, str], workdir: Path) -> None:
        self.command, self.name, self.workdir = command, name, workdir
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("TIDEFLOW_", "COMPOSE_", "FLOWER_", "POSTGRES_"))}
        self.env.update(variables)
        env_file = workdir / "empty.env"
        env_file.write_text("")
        compose_file = REPO / "docker" / "compose.yaml"
        args = ["-p", name, "--env-file", str(env_file)]
        if command == ["docker-compose"]:
            copy = workdir / "compose.yaml"
            copy.write_text(re.sub(r"(?m)^name:.*\n", "", compose_file.read_text()))
            args += ["--project-directory", str(REPO / "docker"), "-f", str(copy)]
        else:
            args += ["-f", str(compose_file)]
        self.args = args

    def compose(self, *args: str, check: bool = True, timeout: float = 300,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return run([*self.command, *self.args, *args], check=check, timeout=timeout, env=env or self.env)

    def containers(self, service: str | None = None, running: bool = False) -> list[str]:
        filters = ["--filter", f"label=com.docker.compose.project={self.name}"]
        if service:
            filters += ["--filter", f"label=com.docker.compose.service={service}"]
        listed = docker("ps", "-q", *([] if running else ["-a"]), *filters, "--no-trunc").stdout.split()
        return sorted(listed)

    def inspect(self, container: str, template: str) -> str:
        return docker("inspect", "--format", template, container).stdout.strip()

    def logs(self, tail: int = 60) -> str:
        return self.compose("logs", "--no-color", "--tail", str(tail), check=False, timeout=120).stdout

    def down(self) -> None:
        """``compose down -v``; then whatever of the project is left (containers, volumes, networks) by label."""
        try:
            self.compose("down", "-v", "--remove-orphans", "-t", "5", check=False, timeout=300)
        finally:
            label = f"label=com.docker.compose.project={self.name}"
            left = docker("ps", "-aq", "--filter", label, check=False).stdout.split()
            if left:
                docker("rm", "-f", "-v", *left, check=False, timeout=120)
            for kind in ("volume", "network"):
                names = docker(kind, "ls", "-q", "--filter", label, check=False).stdout.split()
                if names:
                    docker(kind, "rm", *names, check=False, timeout=120)
