"""The system's processes, started from the real ``Procfile`` the way honcho does (``/bin/sh -c COMMAND``,
environment expanded by the shell) with extra arguments appended; a supervisor that restarts a process
that died (after a short random delay, like systemd/k8s would); a watch that records when each pid died.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parents[2]
PROCFILE = REPO_ROOT / "Procfile"
SHELLS = frozenset({"sh", "dash", "bash"})


def parse_procfile(path: Path = PROCFILE) -> dict[str, str]:
    """``name: command`` lines (comments and blank lines skipped), as honcho reads them."""
    entries: dict[str, str] = {}
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, command = line.partition(":")
        if not sep or not name.strip() or not command.strip():
            raise ValueError(f"{path}:{lineno}: not a 'name: command' line: {raw!r}")
        entries[name.strip()] = command.strip()
    return entries


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.Error:
        return False


def is_celery(proc: psutil.Process) -> bool:
    """The celery process itself, not a shell that did not ``exec`` it."""
    try:
        if proc.name() in SHELLS:
            return False
        return any("celery" in part for part in proc.cmdline())
    except psutil.Error:
        return False


@dataclass
class ManagedProcess:
    """One Procfile entry (one OS process tree per generation), logging to ``<workdir>/<name>.log``."""

    name: str
    role: str  # master | worker | beat
    command: str  # the Procfile command with our extra arguments
    ready_text: str
    env: Mapping[str, str]
    workdir: Path
    popen: subprocess.Popen[bytes] | None = None
    generation: int = 0
    pgids: list[int] = field(default_factory=list)
    _log_offset: int = 0
    ready_at: float | None = None
    died_at: float | None = None
    restart_at: float | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def spawn(self) -> None:
        self.generation += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== chaos: start #{self.generation} at {time.time():.3f}: {self.command}\n".encode())
            log.flush()
            self._log_offset = log.tell()
            self.popen = subprocess.Popen(
                ["/bin/sh", "-c", self.command], cwd=REPO_ROOT, env=dict(self.env), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.pgids.append(self.popen.pid)  # its own session: pgid == pid
        self.ready_at = self.died_at = self.restart_at = None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log(self, since_spawn: bool = False) -> str:
        try:
            with open(self.log_path, "rb") as f:
                if since_spawn:
                    f.seek(self._log_offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def check_ready(self) -> bool:
        if self.ready_at is None and self.alive() and self.ready_text in self.log(since_spawn=True):
            self.ready_at = time.time()
        return self.ready_at is not None

    def main(self) -> psutil.Process | None:
        """The celery process: the shell itself if it exec'd the command, else the shell's celery child."""
        if not self.alive() or self.popen is None:
            return None
        try:
            top = psutil.Process(self.popen.pid)
            if is_celery(top):
                return top
            return next((p for p in top.children(recursive=True) if is_celery(p) and _alive(p)), None)
        except psutil.Error:
            return None

    def pool_children(self) -> list[psutil.Process]:
        main = self.main()
        if main is None:
            return []
        with contextlib.suppress(psutil.Error):
            return [p for p in main.children() if _alive(p)]
        return []

    def all_pids(self) -> list[int]:
        main = self.main()
        return ([main.pid] + [p.pid for p in self.pool_children()]) if main is not None else []

    def kill_all(self) -> None:
        """SIGKILL every process group this entry ever had (pool children orphaned by a killed main included)."""
        for pgid in self.pgids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(10)


def build_processes(
    env: Mapping[str, str], workdir: Path, *, workers: int, concurrency: int, masters: int,
    master_env: Mapping[str, str] | None = None, procfile: Path = PROCFILE, master_concurrency: int | None = None,
) -> list[ManagedProcess]:
    """master(s), workers and beat from the Procfile. Extra arguments: a distinct node name, the pool size
    (the masters': the Procfile's unless ``master_concurrency``), and no mingle/gossip/heartbeat (they only slow
    start-up; Tideflow does not use them)."""
    entries = parse_procfile(procfile)
    quiet = "--without-mingle --without-gossip --without-heartbeat"
    out = []
    master_pool = f" -c {master_concurrency}" if master_concurrency else ""
    for i in range(1, masters + 1):
        out.append(ManagedProcess(
            f"master{i}", "master", f"{entries['master']} -n master{i}@%h {quiet}{master_pool}", "ready.",
            {**env, **(master_env or {})}, workdir))
    for i in range(1, workers + 1):
        out.append(ManagedProcess(
            f"worker{i}", "worker", f"{entries['worker']} -n worker{i}@%h -c {concurrency} {quiet}", "ready.",
            env, workdir))
    out.append(ManagedProcess("beat", "beat", entries["beat"], "beat: Starting", env, workdir))
    return out


class PidWatch:
    """Records, for every pid of interest (celery processes, pids that wrote the ledger and the children a shell
    body forked), the last time it was seen alive and the first time it was seen dead (so a body killed before
    its ``end`` line still has an end time, within one sampling interval)."""

    def __init__(self, ledger: Path) -> None:
        self.ledger = ledger
        #: pid -> the times each process with that pid was first seen dead (pids are reused in a long campaign)
        self.first_dead: dict[int, list[float]] = {}
        self.last_alive: dict[int, float] = {}
        self._procs: dict[int, psutil.Process] = {}
        self._lock = threading.Lock()
        self._offset = 0

    def _new_ledger_pids(self) -> list[int]:
        """Pids of ``start`` lines and children of ``proc`` lines appended since the last call (the ledger is
        read incrementally)."""
        try:
            with open(self.ledger, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        complete = chunk.rfind(b"\n") + 1
        self._offset += complete
        pids = []
        for raw in chunk[:complete].decode(errors="replace").splitlines():
            if '"ev":"start"' in raw:
                with contextlib.suppress(ValueError, KeyError):
                    pids.append(int(json.loads(raw)["pid"]))
            elif '"ev":"proc"' in raw:
                with contextlib.suppress(ValueError, KeyError):
                    pids.append(int(json.loads(raw)["child"]))
        return pids

    def watch(self, pids: Sequence[int]) -> None:
        for pid in pids:
            if pid in self._procs:
                continue
            deaths = self.first_dead.get(pid)
            try:
                proc = psutil.Process(pid)
                # a long campaign wraps the pid space: a pid seen dead may come back as another process
                if deaths and proc.create_time() <= deaths[-1]:
                    continue
                self._procs[pid] = proc
            except psutil.Error:
                if not deaths:
                    self.first_dead[pid] = [time.time()]

    def sample(self, extra: Sequence[int] = ()) -> None:
        with self._lock:
            self.watch(extra)
            self.watch(self._new_ledger_pids())
            now = time.time()
            for pid, proc in list(self._procs.items()):
                if _alive(proc):
                    self.last_alive[pid] = now
                else:
                    self.first_dead.setdefault(pid, []).append(now)
                    del self._procs[pid]

    def alive(self, pid: int) -> bool:
        proc = self._procs.get(pid)
        return proc is not None and _alive(proc)


class Supervisor(threading.Thread):
    """Restarts every process that exits, after ``restart_delay`` (random range) seconds; samples the pid
    watch. ``hold()`` stops it restarting (for the teardown)."""

    def __init__(self, procs: list[ManagedProcess], watch: PidWatch, restart_delay: tuple[float, float],
                 rng: random.Random, interval: float = 0.1) -> None:
        super().__init__(name="chaos-supervisor", daemon=True)
        self.procs = procs
        self.watch = watch
        self.restart_delay = restart_delay
        self.rng = rng
        self.interval = interval
        self.restarts: list[tuple[str, float, float]] = []  # (name, died_at, restarted_at)
        self.errors: list[str] = []
        self._halt = threading.Event()
        self._restarting = True
        self._lock = threading.Lock()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - keep supervising
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def tick(self) -> None:
        pids: list[int] = []
        with self._lock:
            now = time.time()
            for p in self.procs:
                if p.alive():
                    p.check_ready()
                    pids.extend(p.all_pids())
                    continue
                if p.died_at is None:
                    p.died_at = now
                    p.restart_at = now + self.rng.uniform(*self.restart_delay)
                if self._restarting and p.restart_at is not None and now >= p.restart_at:
                    died = p.died_at
                    p.spawn()
                    self.restarts.append((p.name, died, time.time()))
        self.watch.sample(pids)

    def all_ready(self) -> bool:
        with self._lock:
            return all(p.alive() and p.check_ready() for p in self.procs)

    def hold(self) -> None:
        with self._lock:
            self._restarting = False

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(10)
