"""Process and filesystem helpers shared by the test servers (:mod:`tests.support.postgres`,
:mod:`tests.support.redis_server`): free ports, private base dirs, log tails, SIGKILL-and-wait.

Servers left behind by a test session that died without cleaning up (SIGKILL) are reaped the next time
a server is started here (see :func:`reap_orphans`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import threading
import uuid
from pathlib import Path

import psutil

from tests.support.wait import wait_until

_DIR_PREFIX = "tideflow-test-"
_OWNER_FILE = "owner.json"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"<{path} does not exist>"
    return "\n".join(text.splitlines()[-lines:])


def _make_base_dir(kind: str) -> Path:
    base = Path(tempfile.mkdtemp(prefix=f"{_DIR_PREFIX}{kind}-"))
    owner = {"pid": os.getpid(), "create_time": psutil.Process().create_time()}
    (base / _OWNER_FILE).write_text(json.dumps(owner))
    return base


def _owner_alive(base: Path) -> bool:
    try:
        owner = json.loads((base / _OWNER_FILE).read_text())
        proc = psutil.Process(int(owner["pid"]))
        return abs(proc.create_time() - float(owner["create_time"])) < 1.0
    except (FileNotFoundError, ValueError, KeyError, psutil.NoSuchProcess):
        return False


def _processes_under(base: Path) -> list[psutil.Process]:
    """Processes whose working directory is inside ``base`` (postgres and redis chdir to their data dir)."""
    found = []
    resolved = str(base.resolve())
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            cwd = proc.cwd()
            if cwd == resolved or cwd.startswith(resolved + os.sep):
                found.append(proc)
    return found


def _gone(proc: psutil.Process) -> bool:
    try:
        # a zombie is dead too (in containers PID 1 does not always reap orphans promptly)
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _kill_and_wait(procs: list[psutil.Process], timeout: float = 10.0) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    wait_until(
        lambda: all(_gone(p) for p in procs),
        timeout=timeout,
        interval=0.02,
        message=f"processes {[p.pid for p in procs]} did not die after SIGKILL",
    )


_reaped = False
_reap_lock = threading.Lock()


def reap_orphans() -> None:
    """Kill servers (and delete dirs) left by test sessions that died without cleanup; once per process."""
    global _reaped
    with _reap_lock:
        if _reaped:
            return
        _reaped = True
    for base in Path(tempfile.gettempdir()).glob(f"{_DIR_PREFIX}*"):
        if not base.is_dir() or not (base / _OWNER_FILE).exists() or _owner_alive(base):
            continue
        _kill_and_wait(_processes_under(base))
        shutil.rmtree(base, ignore_errors=True)


def unique_name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


class LocalServer:
    """What our own PostgreSQL and Redis share: a private base dir (made on first use), a log file in it,
    and a port known once started."""

    kind = "server"  # base-dir prefix
    log_name = "server.log"
    _port: int | None = None
    _base_dir: Path | None = None

    @property
    def base_dir(self) -> Path:
        if self._base_dir is None:
            self._base_dir = _make_base_dir(self.kind)
        return self._base_dir

    @property
    def log_path(self) -> Path:
        return self.base_dir / self.log_name

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} has not been started")
        return self._port
