"""Real Celery worker / beat processes and CLI runs against a test database and a test Redis.

Every process runs from the repo root with ``PYTHONPATH`` including it (so workers can import
``tests.support.*``), in its own process group, logging to ``<workdir>/<name>.log``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

import psutil

from tests.support.cli import REPO_ROOT, tideflow
from tests.support.wait import read_lines, wait_until

DEFAULT_QUEUES = ("tideflow.default", "tideflow.master")

#: fast timings so failure-recovery tests finish in seconds
TEST_TIMINGS: dict[str, str] = {
    "TIDEFLOW_LEASE_SECONDS": "3",
    "TIDEFLOW_HEARTBEAT_SECONDS": "0.5",
    "TIDEFLOW_ORPHAN_TIMEOUT_SECONDS": "2",
    "TIDEFLOW_ADVANCE_TIMEOUT_SECONDS": "2",
    "TIDEFLOW_RECONCILE_INTERVAL_SECONDS": "0.5",
    "TIDEFLOW_MISSING_ROW_INITIAL_BACKOFF_SECONDS": "0.2",
    "TIDEFLOW_STOP_GRACE_SECONDS": "2",
}


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


class Proc:
    """One process (and its process group) started by a :class:`Cluster`."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log_path: Path, log_offset: int = 0) -> None:
        self.name = name
        self.popen = popen
        self.log_path = log_path
        #: size of the log file when this process started: a process restarted under the same name appends to
        #: the same log, and only what this one wrote says that it is ready
        self.log_offset = log_offset

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def is_alive(self) -> bool:
        return self.popen.poll() is None

    def children(self) -> list[int]:
        """Pids of the live direct children (for a prefork worker: its pool processes)."""
        try:
            kids = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        return [kid.pid for kid in kids if _alive(kid)]

    def descendants(self) -> list[psutil.Process]:
        try:
            return [p for p in psutil.Process(self.pid).children(recursive=True) if _alive(p)]
        except psutil.NoSuchProcess:
            return []

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def own_log(self) -> str:
        """What this process wrote to its log (not an earlier process of the same name)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_lines(self) -> list[str]:
        return read_lines(self.log_path)

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        """Wait until ``text`` appears in the log; fail early (with the log tail) if the process exits."""

        def seen() -> bool:
            if text in self.own_log():
                return True
            if self.popen.poll() is not None:
                code = self.popen.returncode
                raise AssertionError(
                    f"{self.name} exited with {code} before logging {text!r}:\n{tail(self.log())}"
                )
            return False

        try:
            wait_until(seen, timeout=timeout, interval=0.05, message=f"{self.name} never logged {text!r}")
        except AssertionError as exc:
            if self.popen.poll() is not None:
                raise
            raise AssertionError(f"{exc}\n--- {self.log_path} ---\n{tail(self.log())}") from None

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def terminate(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the group (Celery warm shutdown), wait up to ``timeout``, then SIGKILL whatever is left."""
        if self.popen.poll() is None:
            self.signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        self.kill()
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL the whole process group (and any descendant that left it); wait until all are dead."""
        procs = self.descendants()
        if self.popen.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                procs.append(psutil.Process(self.pid))
        self.signal_group(signal.SIGKILL)
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)
        wait_until(
            lambda: not any(_alive(p) for p in procs),
            timeout=10,
            interval=0.02,
            message=f"{self.name}: processes survived SIGKILL",
        )

    def __repr__(self) -> str:
        return f"Proc({self.name!r}, pid={self.pid}, returncode={self.popen.poll()})"


class Cluster:
    """Worker / beat processes and CLI runs sharing one database, one broker and one work dir."""

    def __init__(
        self,
        database_url: str,
        broker_url: str,
        key_prefix: str,
        workdir: Path,
        overrides: Mapping[str, str] | None = None,
        *,
        celery_app: str = "tasks",
        extra_pythonpath: Sequence[Path | str] = (),
    ) -> None:
        self.database_url = database_url
        self.broker_url = broker_url
        self.key_prefix = key_prefix
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.celery_app = celery_app
        self.procs: list[Proc] = []
        self.workers: dict[str, Proc] = {}
        self.beat: Proc | None = None

        env = dict(os.environ)
        env.update(
            {
                "TIDEFLOW_DATABASE_URL": database_url,
                "TIDEFLOW_BROKER_URL": broker_url,
                "TIDEFLOW_BROKER_KEY_PREFIX": key_prefix,
                **TEST_TIMINGS,
                "TIDEFLOW_TEST_LEDGER": str(self.ledger),
                "PYTHONUNBUFFERED": "1",
            }
        )
        paths = [str(p) for p in extra_pythonpath] + [str(REPO_ROOT)]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env.update(overrides or {})
        self.env = env

    # -- files
    @property
    def ledger(self) -> Path:
        return self.workdir / "ledger.txt"

    def ledger_lines(self) -> list[str]:
        return read_lines(self.ledger)

    # -- processes
    def _spawn(self, name: str, args: list[str]) -> Proc:
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "ab") as log:
            offset = log.tell()
            popen = subprocess.Popen(
                args,
                cwd=REPO_ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name, popen, log_path, offset)
        self.procs.append(proc)
        return proc

    def start_worker(
        self,
        name: str = "w1",
        queues: Iterable[str] = DEFAULT_QUEUES,
        concurrency: int = 2,
        extra_args: Sequence[str] = (),
        timeout: float = 30.0,
    ) -> Proc:
        """Start ``celery worker`` and wait until it logs ``ready.``."""
        if name in self.workers and self.workers[name].is_alive():
            raise RuntimeError(f"worker {name!r} is already running")
        args = [
            sys.executable, "-m", "celery", "-A", self.celery_app, "worker",
            "-Q", ",".join(queues),
            "-c", str(concurrency),
            "-n", f"{name}@%h",
            "--loglevel", "INFO",
            "--without-mingle", "--without-gossip", "--without-heartbeat",
            "-P", "prefork",
            *extra_args,
        ]  # fmt: skip
        proc = self._spawn(name, args)
        self.workers[name] = proc
        try:
            proc.wait_for_log("ready.", timeout=timeout)
        except AssertionError:
            proc.kill()
            raise
        return proc

    def start_beat(self, timeout: float = 30.0, name: str = "beat") -> Proc:
        """Start ``celery beat`` (schedule file in the work dir) and wait until it is running. Another ``name``
        starts one more beat (its own schedule file), as when several run by mistake."""
        if name == "beat" and self.beat is not None and self.beat.is_alive():
            raise RuntimeError("beat is already running")
        args = [
            sys.executable, "-m", "celery", "-A", self.celery_app, "beat",
            "-s", str(self.workdir / f"{name}-schedule"),
            "--loglevel", "INFO",
        ]  # fmt: skip
        proc = self._spawn(name, args)
        if name == "beat":
            self.beat = proc
        try:
            proc.wait_for_log("beat: Starting", timeout=timeout)
        except AssertionError:
            proc.kill()
            raise
        return proc

    def start_web(self, token: str | None = "test-token", timeout: float = 30.0) -> tuple[Proc, str]:
        """Start ``tideflow web`` (REST API, UI, /metrics) on a free port; returns it and its base URL.
        ``token=None`` runs it with authentication off."""
        from tests.support.procs import free_port

        port = free_port()
        auth = {"TIDEFLOW_API_TOKEN": token} if token else {"TIDEFLOW_API_AUTH": "off"}
        self.env.update({**auth, "TIDEFLOW_WEB_PORT": str(port)})
        proc = self._spawn("web", [sys.executable, "-m", "app.cli", "web"])
        try:
            proc.wait_for_log("Uvicorn running on", timeout=timeout)
        except AssertionError:
            proc.kill()
            raise
        return proc, f"http://127.0.0.1:{port}"

    def run_cli(
        self, *args: str, check: bool = False, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``python -m app.cli ARGS`` with the cluster environment; output captured as text."""
        started = time.monotonic()
        result = tideflow(self.env, *args, timeout=timeout, input=input)
        with open(self.workdir / "cli.log", "a", encoding="utf-8") as log:
            log.write(
                f"$ tideflow {' '.join(args)}  -> exit {result.returncode} "
                f"({time.monotonic() - started:.2f}s)\n{result.stdout}{result.stderr}\n"
            )
        if check and result.returncode != 0:
            raise AssertionError(
                f"tideflow {' '.join(args)} exited {result.returncode}\n"
                f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
            )
        return result

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate every process still running (latest first)."""
        errors: list[BaseException] = []
        for proc in reversed(self.procs):
            try:
                proc.terminate(timeout)
            except Exception as exc:  # keep stopping the others
                errors.append(exc)
        if errors:
            raise errors[0]

    def dump_logs(self, lines: int = 80, file: TextIO | None = None) -> str:
        """The tail of every log in the work dir (printed to stdout, or ``file``); also returned."""
        chunks = []
        for path in sorted(self.workdir.glob("*.log")):
            text = path.read_text(errors="replace")
            chunks.append(f"===== {path.name} (last {lines} lines) =====\n{tail(text, lines)}")
        out = "\n".join(chunks)
        print(out, file=file or sys.stdout)
        return out

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
