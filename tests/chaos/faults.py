"""One class per fault. ``inject()`` does it (and blocks for its duration: a lock held, a pause, a server
restart) and returns a :class:`FaultRecord` of when it happened and what it hit, or ``None`` if there was
nothing to hit yet (the injector then tries again shortly). ``lift()`` undoes whatever may still be in
effect when the campaign stops injecting. An :class:`Injector` thread runs one fault at random intervals.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import psutil
import psycopg
import redis
from celery import Celery
from sqlalchemy import Engine, text

from tests.chaos.procs import ManagedProcess, _alive, is_celery
from tests.support.postgres import PostgresServer, psycopg_conninfo
from tests.support.redis_server import RedisServer
from tests.support.wait import poll

#: seconds between two injections of each fault in a full campaign (the issue's numbers where it gives them)
FULL_INTERVALS: dict[str, tuple[float, float]] = {
    "worker-kill": (2.0, 6.0),
    "master-kill": (4.0, 12.0),
    "redis-flush": (8.0, 25.0),
    "redis-restart": (15.0, 40.0),
    "pg-restart": (10.0, 40.0),
    "pg-terminate": (10.0, 40.0),
    "table-lock": (60.0, 120.0),
    "duplicates": (0.5, 2.0),
    "pause": (8.0, 20.0),
    "procfile-stop": (10.0, 30.0),
}
#: the issue's faults (``mixed`` and ``all-each`` use these)
FAULT_KINDS = tuple(FULL_INTERVALS)
#: extra faults, only when named (see PgPartition)
EXTRA_INTERVALS: dict[str, tuple[float, float]] = {"pg-partition": (20.0, 40.0)}


@dataclass
class FaultRecord:
    kind: str
    started: float  # time.time() when the fault began
    ended: float  # ... and when it was lifted (== started for an instantaneous fault)
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class FaultContext:
    """What the faults act on (built by the campaign)."""

    procs: list[ManagedProcess]
    pg: PostgresServer
    redis: RedisServer
    database_url: str
    engine: Engine  # the campaign's own engine, for looking things up
    celery: Celery  # a client app on the campaign's broker, for duplicate messages
    start_runs: Callable[[int], list[str]]  # start k runs now, each from its own thread; returns their keys
    rng: random.Random
    lease_seconds: float
    reconcile_seconds: float
    stop_bound_seconds: float = 6.0  # lease + heartbeat + stop grace (+ slack): how long a lost body may run on
    lock_seconds: float = 40.0
    pause_extra_seconds: float = 0.5
    lock_runs: int = 3
    procfile_grace: float = 1.0  # procfile-stop: SIGTERM -> SIGKILL (honcho: 5 s; shorter than the shell body)
    procfile_max_age: float = 0.5  # procfile-stop hits a shell body at most this old, so it outlasts the grace
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def dbname(self) -> str:
        return self.database_url.rsplit("/", 1)[1]

    def query(self, sql: str, **params: Any) -> list[Any]:
        """Rows of ``sql`` on the campaign database; [] while it is unreachable."""
        try:
            with self.engine.connect() as conn:
                return list(conn.execute(text(sql), params))
        except Exception:  # noqa: BLE001 - the database may be down: that is one of the faults
            return []

    def role(self, role: str) -> list[ManagedProcess]:
        return [p for p in self.procs if p.role == role]


def sigkill(proc: psutil.Process) -> bool:
    """SIGKILL ``proc`` after checking it is a celery process (never the shell, never anything else)."""
    if not is_celery(proc):
        return False
    try:
        proc.send_signal(signal.SIGKILL)
        return True
    except psutil.Error:
        return False


class Fault:
    kind: ClassVar[str]

    def __init__(self, ctx: FaultContext) -> None:
        self.ctx = ctx

    def inject(self) -> FaultRecord | None:
        raise NotImplementedError

    def lift(self) -> None:
        """Undo anything still in effect (default: nothing lasts)."""

    def _record(self, started: float, detail: str, ended: float | None = None, **data: Any) -> FaultRecord:
        return FaultRecord(self.kind, started, ended if ended is not None else started, detail, data)


class _KillFault(Fault):
    role = "worker"
    _hit_busy = False

    def _busy_pids(self) -> set[int]:
        rows = self.ctx.query("SELECT pid FROM task_attempts WHERE outcome = 'running' AND pid IS NOT NULL")
        return {int(r.pid) for r in rows}

    def inject(self) -> FaultRecord | None:
        rng = self.ctx.rng
        candidates = [p for p in self.ctx.role(self.role) if p.main() is not None]
        if not candidates:
            return None
        target = rng.choice(candidates)
        main = target.main()
        children = target.pool_children()
        if main is None:
            return None
        busy_pids = self._busy_pids()
        busy = [c for c in children if c.pid in busy_pids]
        if self.role == "worker" and not self._hit_busy and not busy:
            return None  # wait for a pool process running a body (tried again shortly)
        # the first kill hits a pool process running a body, so every campaign loses at least one attempt
        mode = rng.choice(["child", "child", "main", "group"]) if self._hit_busy or not busy else "child"
        victims: list[psutil.Process]
        if mode == "child" and children:
            victims = [rng.choice(busy) if busy and (not self._hit_busy or rng.random() < 0.7)
                       else rng.choice(children)]
        elif mode == "group":
            victims = [main, *children]
        else:
            mode, victims = "main", [main]
        t = time.time()
        killed = [v.pid for v in victims if sigkill(v)]
        if not killed:
            return None
        self._hit_busy = self._hit_busy or any(v in busy for v in victims)
        return self._record(t, f"SIGKILL {target.name} {mode} {killed}", target=target.name, mode=mode,
                            pids=killed, busy=[v.pid for v in victims if v in busy])


class WorkerKill(_KillFault):
    kind = "worker-kill"
    role = "worker"


class MasterKill(_KillFault):
    """SIGKILL the master's main process or a pool child from outside. The master processes also run with
    ``TIDEFLOW_FAULT_CRASH_BEFORE_PUBLISH`` (set by the campaign): they kill themselves between a commit and
    the publish of its messages."""

    kind = "master-kill"
    role = "master"
    _kills = 0

    def inject(self) -> FaultRecord | None:
        """Every other kill also SIGKILLs beat (the scheduler's clock: its ``tideflow.schedule`` passes stop until
        the supervisor restarts it, and the fire times of the outage must be caught up, none twice)."""
        record = super().inject()
        if record is None:
            return None
        self._kills += 1
        if self._kills % 2 == 1:
            beats = [m for p in self.ctx.role("beat") if (m := p.main()) is not None]
            record.data["beat"] = [m.pid for m in beats if sigkill(m)]
        return record


def queued_messages(client: redis.Redis) -> dict[str, int]:
    """Messages waiting in queue lists (``queued``; ``execute``: those of ``tideflow.execute``) and messages
    reserved by workers, not yet acknowledged (``unacked``)."""
    out = {"queued": 0, "execute": 0, "unacked": 0}
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind in (b"list", "list"):
            for raw in client.lrange(key, 0, -1):  # type: ignore[union-attr]
                out["queued"] += 1
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    out["execute"] += json.loads(raw)["headers"]["task"] == "tideflow.execute"
        elif kind in (b"hash", "hash") and key in (b"unacked", "unacked"):
            out["unacked"] += int(client.hlen(key))  # type: ignore[arg-type]
    return out


class _BrokerLoss(Fault):
    """Waits for a moment when at least one execute message is queued (so the loss provably hits work that
    must be re-published), then loses every message."""

    def _lose(self) -> None:
        raise NotImplementedError

    def inject(self) -> FaultRecord | None:
        client = redis.Redis.from_url(self.ctx.redis.url(0), socket_timeout=5)
        try:
            counts = queued_messages(client)
            if counts["execute"] == 0:
                return None
            t = time.time()
            self._lose()
        finally:
            client.close()
        return self._record(t, f"{self.kind}: {counts['queued']} queued ({counts['execute']} execute) and "
                               f"{counts['unacked']} unacked messages lost", ended=time.time(), **counts)


class RedisFlush(_BrokerLoss):
    kind = "redis-flush"

    def _lose(self) -> None:
        client = redis.Redis.from_url(self.ctx.redis.url(0), socket_timeout=5)
        try:
            client.flushall()
        finally:
            client.close()


class RedisRestart(_BrokerLoss):
    kind = "redis-restart"

    def _lose(self) -> None:
        self.ctx.redis.restart()

    def lift(self) -> None:
        if not self.ctx.redis.is_running():
            self.ctx.redis.start()


class PgRestart(Fault):
    kind = "pg-restart"

    def inject(self) -> FaultRecord | None:
        before = self.ctx.pg.postmaster_pid()
        t = time.time()
        self.ctx.pg.restart()
        return self._record(t, f"postgres restart (postmaster {before} -> {self.ctx.pg.postmaster_pid()})",
                            ended=time.time(), before=before, after=self.ctx.pg.postmaster_pid())

    def lift(self) -> None:
        if not self.ctx.pg.is_running():
            self.ctx.pg.start()


class PgTerminate(Fault):
    kind = "pg-terminate"

    def inject(self) -> FaultRecord | None:
        t = time.time()
        with psycopg.connect(psycopg_conninfo(self.ctx.pg.maintenance_url), autocommit=True,
                             connect_timeout=5) as conn:
            rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                " WHERE datname = %s AND pid <> pg_backend_pid()", (self.ctx.dbname,)).fetchall()
        return self._record(t, f"pg_terminate_backend x{len(rows)}", terminated=len(rows))


class TableLock(Fault):
    """The seed scenario: ``LOCK TABLE task_runs IN ACCESS EXCLUSIVE MODE`` held ``lock_seconds`` while new
    runs are started from threads (they block until it is released)."""

    kind = "table-lock"

    def __init__(self, ctx: FaultContext) -> None:
        super().__init__(ctx)
        self._conn: psycopg.Connection[Any] | None = None

    def inject(self) -> FaultRecord | None:
        conn = psycopg.connect(psycopg_conninfo(self.ctx.database_url), connect_timeout=5)
        self._conn = conn
        try:
            conn.execute("SET lock_timeout = '20s'")
            conn.execute("LOCK TABLE task_runs IN ACCESS EXCLUSIVE MODE")
            t = time.time()
            keys = self.ctx.start_runs(self.ctx.lock_runs)
            broken = False
            while not self.ctx.stop.wait(min(0.5, max(0.0, t + self.ctx.lock_seconds - time.time()))):
                if time.time() >= t + self.ctx.lock_seconds:
                    break
                try:  # another fault (pg-terminate, pg-restart) may end our transaction, and the lock, early
                    conn.execute("SELECT 1")
                except psycopg.Error:
                    broken = True
                    break
            held = time.time() - t
        finally:
            self.lift()
        return self._record(t, f"task_runs locked {held:.1f}s while {len(keys)} runs started"
                               + (" (lock lost early: connection killed)" if broken else ""),
                            ended=t + held, keys=keys, held=held, broken=broken)

    def lift(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.rollback()
            with contextlib.suppress(Exception):
                conn.close()


class Duplicates(Fault):
    """Extra copies of ``tideflow.execute`` (current and stale attempts, live or finished tasks: DAG tasks and code
    runs' activities, and stray ones for code runs' timers and signal waits, which no worker may claim) and of
    ``tideflow.advance`` (random runs, DAG or code: a code run replays to where it is and changes nothing),
    published as the dispatcher would."""

    kind = "duplicates"

    def inject(self) -> FaultRecord | None:
        tasks = self.ctx.query("SELECT id, attempt, state, queue FROM task_runs WHERE (type IN ('python', 'activity') "
                               "AND attempt > 0) OR type IN ('timer', 'signal') ORDER BY random() LIMIT 4")
        runs = self.ctx.query("SELECT id FROM workflow_runs ORDER BY random() LIMIT 2")
        if not tasks and not runs:
            return None
        t = time.time()
        execs, advances = [], []
        for row in tasks:
            attempt = row.attempt if self.ctx.rng.random() < 0.8 else max(row.attempt - 1, 1)
            self.ctx.celery.send_task("tideflow.execute", args=[row.id, attempt, time.time()], queue=row.queue)
            execs.append((row.id, attempt, row.state))
        for row in runs:
            self.ctx.celery.send_task("tideflow.advance", args=[row.id], queue="tideflow.master", priority=0)
            advances.append(row.id)
        return self._record(t, f"{len(execs)} execute + {len(advances)} advance duplicates", execute=execs,
                            advance=advances)


def _running_slow_attempts(ctx: FaultContext, task: str = "slow") -> list[Any]:
    """Running attempts of the workflow's multi-second task (or of ``task``) in a worker pool process, latest
    first."""
    pool = {c.pid for p in ctx.role("worker") for c in p.pool_children()}
    return [r for r in ctx.query(
        "SELECT a.task_run_id, a.attempt, a.pid, a.started_at FROM task_attempts a "
        "JOIN task_runs t ON t.id = a.task_run_id AND t.attempt = a.attempt "
        "WHERE a.outcome = 'running' AND t.state = 'running' AND t.name = :task ORDER BY a.started_at DESC",
        task=task) if r.pid in pool]


def _wait_lost(ctx: FaultContext, task_run: int, attempt: int, since: float) -> float | None:
    """Poll (this is the fault's own duration, not a test synchronisation) until the attempt's outcome is no
    longer ``running`` (the reconciler declared it lost); when that was seen, or None at the deadline."""
    def lost_at() -> float | None:
        found = ctx.query("SELECT outcome FROM task_attempts WHERE task_run_id = :i AND attempt = :a",
                          i=task_run, a=attempt)
        return time.time() if found and found[0].outcome != "running" else None

    deadline = since + 2 * ctx.lease_seconds + 10 * ctx.reconcile_seconds + 5
    return poll(lost_at, deadline - time.time(), interval=0.1)


class Pause(Fault):
    """SIGSTOP the pool process running a multi-second body until the reconciler has declared its attempt
    lost (past its lease), then SIGCONT: it must notice, stop the body, and write nothing."""

    kind = "pause"

    def __init__(self, ctx: FaultContext) -> None:
        super().__init__(ctx)
        self._stopped: set[int] = set()
        self._lock = threading.Lock()

    def inject(self) -> FaultRecord | None:
        rows = _running_slow_attempts(self.ctx)
        if not rows:
            return None
        row = self.ctx.rng.choice(rows)
        t = time.time()
        with self._lock:
            os.kill(row.pid, signal.SIGSTOP)
            self._stopped.add(row.pid)
        lost_at = None
        try:
            lost_at = _wait_lost(self.ctx, row.task_run_id, row.attempt, t)
            time.sleep(self.ctx.pause_extra_seconds)
        finally:
            with self._lock:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(row.pid, signal.SIGCONT)
                self._stopped.discard(row.pid)
        ended = time.time()
        return self._record(t, f"SIGSTOP pid {row.pid} (task run {row.task_run_id} attempt {row.attempt}) "
                               f"for {ended - t:.1f}s, attempt {'lost' if lost_at else 'NOT lost'}",
                            ended=ended, pid=row.pid, task_run=row.task_run_id, attempt=row.attempt,
                            lost_at=lost_at)

    def lift(self) -> None:
        with self._lock:
            for pid in list(self._stopped):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            self._stopped.clear()


class ProcfileStop(Fault):
    """A Procfile manager's stop (honcho: SIGTERM to each process group, SIGKILL to the groups still running
    ``KILL_WAIT`` = 5 s later; see tests/acceptance/test_procfile.py) of a worker whose pool process has just
    started a shell body: SIGTERM to the worker's process group, SIGKILL to it after ``procfile_grace``. The
    worker's warm shutdown waits for the body, which outlasts the grace (shorter than honcho's for that reason),
    so the SIGKILL lands mid-body: the pool process dies, and the body (its shell and the children it forked,
    one of them in a session of its own), which neither signal reached, must die with it (invariant
    ``orphan``); its attempt is lost and retried, never beside it (``overlap``)."""

    kind = "procfile-stop"

    def inject(self) -> FaultRecord | None:
        rows = [r for r in _running_slow_attempts(self.ctx, "shell")
                if time.time() - r.started_at.timestamp() < self.ctx.procfile_max_age]
        if not rows:
            return None
        row = self.ctx.rng.choice(rows)
        target = next((p for p in self.ctx.role("worker") if row.pid in {c.pid for c in p.pool_children()}), None)
        main = target.main() if target is not None else None
        if target is None or target.popen is None or main is None:
            return None
        pgid = target.popen.pid  # its own session (ManagedProcess.spawn): the manager signals this group
        members = [main, *target.pool_children()]
        t = time.time()
        os.killpg(pgid, signal.SIGTERM)
        time.sleep(self.ctx.procfile_grace)  # the manager's grace (the fault's own duration)
        left = [m.pid for m in members if _alive(m)]
        running = [r.outcome for r in self.ctx.query(
            "SELECT outcome FROM task_attempts WHERE task_run_id = :i AND attempt = :a",
            i=row.task_run_id, a=row.attempt)] == ["running"]
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        return self._record(t, f"SIGTERM {target.name} group {pgid}, SIGKILL {left} {self.ctx.procfile_grace:g}s "
                               f"later (shell task run {row.task_run_id} attempt {row.attempt} in pid {row.pid}"
                               f"{', still running' if running else ''})", ended=time.time(), target=target.name,
                            pgid=pgid, pids=[m.pid for m in members], sigkilled=left, pool=row.pid,
                            task_run=row.task_run_id, attempt=row.attempt, shell_running=running)


class PgPartition(Fault):
    """A worker cut off from the database with its TCP connections left open (a black-holing partition, a
    hung database host): SIGSTOP the PostgreSQL backends serving the pool process that runs a multi-second
    body, while everybody else can still reach the database. Held until the reconciler declares the attempt
    lost, then for longer than the stop bound, then SIGCONT.

    Not in ``mixed``/``all-each`` (those are the issue's list); ``test_chaos.py`` runs it on its own. It found
    a core bug, since fixed: the lease keeper's renewal had no deadline, so a hung renewal never stopped the
    body (README promises a worker that cannot reach the database gives up after LEASE)."""

    kind = "pg-partition"

    def __init__(self, ctx: FaultContext) -> None:
        super().__init__(ctx)
        self._frozen: set[int] = set()
        self._lock = threading.Lock()

    def inject(self) -> FaultRecord | None:
        for row in _running_slow_attempts(self.ctx)[:1]:
            try:
                ports = [k.laddr.port for k in psutil.Process(row.pid).net_connections(kind="tcp")
                         if k.raddr and k.raddr.port == self.ctx.pg.port]
            except psutil.Error:
                return None
            backends = [int(r.pid) for r in self.ctx.query(
                "SELECT pid FROM pg_stat_activity WHERE client_port = ANY(:ports)", ports=ports)] if ports else []
            if not backends:
                return None
            t = time.time()
            with self._lock:
                for b in backends:
                    os.kill(b, signal.SIGSTOP)
                    self._frozen.add(b)
            lost_at = None
            try:
                lost_at = _wait_lost(self.ctx, row.task_run_id, row.attempt, t)
                if lost_at is not None:
                    time.sleep(self.ctx.stop_bound_seconds + 2)  # longer than a lost body may run on
            finally:
                self.lift()
            outcome = "lost" if lost_at else "NOT lost"
            return self._record(t, f"froze postgres backends {backends} of pid {row.pid} (task run "
                                   f"{row.task_run_id} attempt {row.attempt}), attempt {outcome}",
                                ended=time.time(), pid=row.pid, backends=backends, task_run=row.task_run_id,
                                attempt=row.attempt, lost_at=lost_at)
        return None

    def lift(self) -> None:
        with self._lock:
            for b in list(self._frozen):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(b, signal.SIGCONT)
            self._frozen.clear()


FAULTS: dict[str, type[Fault]] = {cls.kind: cls for cls in (
    WorkerKill, MasterKill, RedisFlush, RedisRestart, PgRestart, PgTerminate, TableLock, Duplicates, Pause,
    ProcfileStop, PgPartition)}


class Injector(threading.Thread):
    """Injects one fault: first after ``first_delay``, then every ``interval`` (random range) seconds, until
    ``stop`` is set. A fault with nothing to hit is tried again after ``retry`` seconds."""

    def __init__(self, fault: Fault, interval: tuple[float, float], first_delay: float, stop: threading.Event,
                 rng: random.Random, retry: float = 0.3) -> None:
        super().__init__(name=f"chaos-{fault.kind}", daemon=True)
        self.fault = fault
        self.interval = interval
        self.first_delay = first_delay
        self.stop_event = stop
        self.rng = rng
        self.retry = retry
        self.records: list[FaultRecord] = []
        self.errors: list[str] = []

    def run(self) -> None:
        delay = self.first_delay
        while not self.stop_event.wait(delay):
            try:
                record = self.fault.inject()
            except Exception as exc:  # noqa: BLE001 - a fault that could not be injected is reported, not fatal
                self.errors.append(f"{time.time():.3f} {type(exc).__name__}: {exc}")
                record = None
            if record is None:
                delay = self.retry
                continue
            self.records.append(record)
            delay = self.rng.uniform(*self.interval)
