"""One campaign: own PostgreSQL + Redis, the Procfile's master(s), workers and beat under a supervisor, N
runs of the mixed workflow started over the campaign, faults injected meanwhile; then stop injecting, wait
for every run to finish, and check the invariants. :func:`run_campaign` returns a :class:`CampaignResult`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, select

from app.broker import CeleryDispatcher, create_app
from app.client import Tideflow
from app.config import Settings
from app.db import repository as repo
from app.db.engine import Database
from app.db.migrate import upgrade
from app.runtime import Runtime
from tests.chaos import codeflows
from tests.chaos import invariants as inv
from tests.chaos.evidence import collect_evidence
from tests.chaos.faults import EXTRA_INTERVALS, FAULT_KINDS, FAULTS, FULL_INTERVALS, FaultContext, FaultRecord, Injector
from tests.chaos.procs import REPO_ROOT, ManagedProcess, PidWatch, Supervisor, build_processes
from tests.chaos.workload import FRAGILE, LEDGER_ENV, MIXED, NOSTART, SCHEDULED, Workload, read_ledger
from tests.support.cluster import TEST_TIMINGS
from tests.support.postgres import PostgresServer, create_database
from tests.support.procs import free_port
from tests.support.redis_server import RedisServer
from tests.support.wait import wait_until

#: the test suite's fast timings; re-publish back-off capped at 10 s so a campaign drains in seconds
#: beat's scheduler pass every 0.5 s, so the seconds-level schedule of chaos-scheduled fires on time
CHAOS_TIMINGS = {**TEST_TIMINGS, "TIDEFLOW_ORPHAN_MAX_BACKOFF_SECONDS": "10",
                 "TIDEFLOW_SCHEDULE_INTERVAL_SECONDS": "0.5"}
CRASH_ENV = "TIDEFLOW_FAULT_CRASH_BEFORE_PUBLISH"
#: faults during which no transaction on the task table can commit
BLOCKS_COMMITS = frozenset({"table-lock", "pg-restart"})
STEP_OVERHEAD = 1.0  # seconds per hop (publish, claim, advance) assumed by the drain bound on a loaded host


@dataclass
class CampaignConfig:
    name: str
    faults: tuple[str, ...]
    runs: int = 20
    rate: float = 1.0  # runs started per second
    workers: int = 3
    concurrency: int = 2
    masters: int = 1
    master_concurrency: int = 2
    seed: int = 1
    min_window: float = 0.0  # inject faults for at least this long
    #: stop injecting after this long even if a fault never found anything to hit (default: the time it
    #: takes to start the runs + 60 s); the campaign's test then fails on the missing evidence
    max_window: float | None = None
    intervals: dict[str, tuple[float, float]] = field(default_factory=lambda: {**FULL_INTERVALS, **EXTRA_INTERVALS})
    first_delay: tuple[float, float] = (1.0, 2.0)
    lock_seconds: float = 40.0
    lock_runs: int = 3
    crash_before_publish: float = 0.05
    #: processes that get ``TIDEFLOW_FAULT_CRASH_BEFORE_PUBLISH`` in a master-kill campaign: the masters, and
    #: the workers too, since a worker advances the run in its own transaction when it finishes a task
    crash_roles: tuple[str, ...] = ("master", "worker")
    restart_delay: tuple[float, float] = (0.3, 1.5)
    workload: Workload = field(default_factory=Workload)
    timings: dict[str, str] = field(default_factory=lambda: dict(CHAOS_TIMINGS))
    workdir_root: Path | None = None
    keep_workdir: bool = False


@dataclass
class DrainBound:
    """How long after the last fault every run must be terminal: recovery + one run + the backlog."""

    recovery: float  # lease + next re-publish + advance + 3 reconcile passes + heartbeat + stop grace
    run: float  # the workflow's critical path on an idle cluster
    backlog: float  # live work at that moment / pool slots
    margin: float = 2.0

    @property
    def total(self) -> float:
        return self.recovery + self.run + self.backlog + self.margin

    def __str__(self) -> str:
        return (f"{self.total:.1f}s = recovery {self.recovery:.1f} + run {self.run:.1f} + backlog "
                f"{self.backlog:.1f} + margin {self.margin:.1f}")


@dataclass
class CampaignResult:
    config: CampaignConfig
    settings: Settings
    workdir: Path
    started: list[inv.StartedRun]
    runs: list[inv.RunRow]
    tasks: list[inv.TaskRow]
    attempts: list[inv.AttemptRow]
    events: list[inv.EventRow]
    checked: inv.Checked
    faults: list[FaultRecord]
    fault_errors: list[str]
    recovery: list[float]
    bound: DrainBound
    drain_seconds: float | None  # from the last fault to every run terminal (None: not within the hard limit)
    restarts: list[tuple[str, float, float]]
    evidence: dict[str, Any]
    wall_seconds: float
    signal_errors: dict[str, int] = field(default_factory=dict)  # code run key -> failed signal calls (retried)
    fires: list[inv.FireRow] = field(default_factory=list)  # schedules: the schedule_fires rows
    schedules: list[inv.ScheduleWindow] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def workload_checks(self) -> dict[str, int]:
        """The workload's own cases: runs whose subworkflow cannot start (all must end failed), and the
        ``retries: 0`` task whose attempts were lost (each must still succeed)."""
        nostart = [r for r in self.runs if r.workflow == NOSTART]
        lost = {a.task_run_id for a in self.attempts if a.outcome == "lost"}
        fragile = [t for t in self.tasks if t.name == FRAGILE and t.id in lost]
        return {"nostart_runs": len(nostart), "nostart_failed": sum(r.state == "failed" for r in nostart),
                "fragile_lost": len(fragile),
                "fragile_lost_then_succeeded": sum(t.state == "succeeded" for t in fragile)}

    @property
    def top_runs(self) -> list[inv.RunRow]:
        return [r for r in self.runs if r.parent_task_run_id is None and r.workflow == MIXED]

    @property
    def code_runs(self) -> list[inv.RunRow]:
        """The ``chaos-code`` runs (one beside each mixed run)."""
        return [r for r in self.runs if r.parent_task_run_id is None and r.workflow == codeflows.CODE]

    @property
    def code_checks(self) -> dict[str, Any]:
        """The code workflows' own evidence: runs, results as computed without faults (invariant code-result), the
        signal kept because it came before the wait vs delivered to a waiting run, activities' lost attempts and
        retries, how late the timers fired (after their due time; p50/max, seconds)."""
        code = {r.id for r in self.runs if r.workflow in (codeflows.CODE, codeflows.CODE_CHILD)}
        steps = [t for t in self.tasks if t.run_id in code]
        signal_steps = {t.id for t in steps if t.type == "signal"}
        first_event: dict[int, inv.EventRow] = {}
        for e in self.events:
            if e.task_run_id in signal_steps and e.task_run_id is not None:
                first_event.setdefault(e.task_run_id, e)
        activities = {t.id for t in steps if t.type == "activity"}
        late = inv.timer_lateness(steps, self.events)
        # queueing: from a task's first "-> submitted" to its first "-> running" (the claim), code steps vs DAG tasks
        submitted: dict[int, float] = {}
        queued: dict[int, float] = {}
        for e in self.events:
            if e.task_run_id is None:
                continue
            if e.to_state == "submitted":
                submitted.setdefault(e.task_run_id, e.at)
            elif e.to_state == "running" and e.task_run_id in submitted:
                queued.setdefault(e.task_run_id, e.at - submitted[e.task_run_id])
        code_queue = [v for k, v in queued.items() if k in activities]
        dag_queue = [v for k, v in queued.items() if k not in activities]
        # advancing: from the moment a code run's earlier steps were all done to its next step's row (a pass)
        born: dict[int, float] = {}
        done_at: dict[int, float] = {}
        for e in self.events:
            if e.task_run_id is not None:
                born.setdefault(e.task_run_id, e.at)
                if e.to_state == "succeeded":
                    done_at[e.task_run_id] = e.at
        by_run: dict[int, list[inv.TaskRow]] = {}
        for t in steps:
            by_run.setdefault(t.run_id, []).append(t)
        hops = []
        for rows in by_run.values():
            rows.sort(key=lambda t: t.seq if t.seq is not None else -1)
            for i, t in enumerate(rows[1:], 1):
                before = [done_at.get(x.id) for x in rows[:i]]
                if all(d is not None for d in before) and t.id in born:
                    hop = born[t.id] - max(d for d in before if d is not None)
                    if hop >= 0:
                        hops.append(hop)
        created = {r.id: r.created_at for r in self.runs}
        to_wait = [e.at - created[e.run_id] for e in first_event.values() if e.run_id in created]
        return {
            "code_runs": len(self.code_runs),
            "code_results_ok": len(self.code_runs) - len([v for v in self.checked.of("code-result")
                                                          if v.run_id in {r.id for r in self.code_runs}]),
            "code_child_runs": sum(r.workflow == codeflows.CODE_CHILD for r in self.runs),
            "signals_before_wait": sum(e.to_state == "succeeded" for e in first_event.values()),
            "signals_to_waiting_run": sum(e.to_state == "running" for e in first_event.values()),
            "signal_send_errors": sum(self.signal_errors.values()),
            "activity_attempts_lost": sum(a.outcome == "lost" for a in self.attempts if a.task_run_id in activities),
            "activity_attempts_failed": sum(a.outcome == "failed" for a in self.attempts
                                            if a.task_run_id in activities),
            "wait_reached_p50_s": round(inv.percentile(to_wait, 50) or 0.0, 1),
            "wait_reached_max_s": round(max(to_wait, default=0.0), 1),
            "activity_queue_p50_s": round(inv.percentile(code_queue, 50) or 0.0, 2),
            "dag_task_queue_p50_s": round(inv.percentile(dag_queue, 50) or 0.0, 2),
            "advance_p50_s": round(inv.percentile(hops, 50) or 0.0, 2),
            "advance_p90_s": round(inv.percentile(hops, 90) or 0.0, 2),
            "timers": len(late),
            "timer_late_p50": round(inv.percentile(late, 50) or 0.0, 2),
            "timer_late_max": round(max(late, default=0.0), 2),
        }

    @property
    def schedule_checks(self) -> dict[str, Any]:
        """The scheduled workflow's evidence: fire times expected in the window, fire rows by outcome, runs and
        how they ended, duplicates and missed fire times (invariants schedule-duplicate, schedule-missed)."""
        scheduled = [r for r in self.runs if r.schedule_name is not None]
        late = [r.created_at - r.schedule_time for r in scheduled if r.schedule_time is not None]
        return {
            "fire_times_in_window": sum(len(inv.expected_fire_times(w)) for w in self.schedules),
            "fires": dict(Counter(f.outcome for f in self.fires)),
            "scheduled_runs": len(scheduled),
            "scheduled_runs_by_state": dict(Counter(r.state for r in scheduled)),
            "fired_late_max_s": round(max(late, default=0.0), 1),
            "duplicates": self.count("schedule-duplicate"),
            "missed": self.count("schedule-missed"),
        }

    @property
    def outcomes(self) -> Counter[str]:
        return Counter(r.state for r in self.top_runs)

    @property
    def ok(self) -> bool:
        return not self.checked.violations

    def count(self, kind: str) -> int:
        return len(self.checked.of(kind))

    def fault_counts(self) -> Counter[str]:
        return Counter(f.kind for f in self.faults)


def settings_from_env(env: dict[str, str]) -> Settings:
    fields = Settings.model_fields
    kw: dict[str, Any] = {k[len("TIDEFLOW_"):].lower(): v for k, v in env.items()
          if k.startswith("TIDEFLOW_") and k[len("TIDEFLOW_"):].lower() in fields}
    return Settings(**kw)


def _ts(value: Any) -> float | None:
    return value.timestamp() if value is not None else None


class Campaign:
    def __init__(self, cfg: CampaignConfig, log: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.rng = random.Random(cfg.seed)
        self.stop = threading.Event()  # set when the fault window ends
        self._closing = threading.Event()  # set by the teardown
        self.started: dict[str, inv.StartedRun] = {}
        self._budget = 0
        self._budget_lock = threading.Lock()
        self._procs: list[ManagedProcess] = []
        self._injectors: list[Injector] = []
        self.signal_errors: dict[str, int] = {}
        # a thread per started key: the mixed run, the code run beside it, and its signal a few seconds later
        self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="chaos-start")
        self._futures: list[Any] = []
        self._awaiting: dict[int, tuple[str, int, str, float]] = {}  # code run id -> (key, n, stage, since)
        self.pg: PostgresServer | None = None
        self.redis: RedisServer | None = None
        self.supervisor: Supervisor | None = None
        self.tf: Tideflow | None = None
        self.engine: Engine | None = None
        self._torn_down = False

    # -- setup ------------------------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.cfg
        self.workdir = Path(tempfile.mkdtemp(prefix=f"tideflow-chaos-{cfg.name}-", dir=cfg.workdir_root))
        self.ledger = self.workdir / "ledger.jsonl"
        self.redis = RedisServer().start()
        self.pg = PostgresServer(port=free_port())
        pg_started = threading.Thread(target=self.pg.start, name="chaos-pg-start")
        pg_started.start()
        self.db_url = self.pg.url("chaos")
        venv_bin = str(Path(sys.executable).parent)
        env = {**os.environ, **cfg.timings,
               "TIDEFLOW_DATABASE_URL": self.db_url, "TIDEFLOW_BROKER_URL": self.redis.url(0),
               "TIDEFLOW_BROKER_KEY_PREFIX": "", LEDGER_ENV: str(self.ledger), "PYTHONUNBUFFERED": "1",
               "TIDEFLOW_BEAT_SCHEDULE_FILE": str(self.workdir / "beat-schedule"),
               "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p),
               "TIDEFLOW_WORKFLOW_MODULES": codeflows.__name__,
               "PATH": os.pathsep.join([venv_bin, os.environ.get("PATH", "")])}
        env.pop(CRASH_ENV, None)
        self.settings = settings_from_env(env)
        self._procs = build_processes(env, self.workdir, workers=cfg.workers, concurrency=cfg.concurrency,
                                      masters=cfg.masters, master_concurrency=cfg.master_concurrency)
        if "master-kill" in cfg.faults and cfg.crash_before_publish > 0:
            for p in self._procs:
                if p.role in cfg.crash_roles:
                    p.env = {**p.env, CRASH_ENV: str(cfg.crash_before_publish)}
        for p in self._procs:
            p.spawn()
        self.watch = PidWatch(self.ledger)
        self.supervisor = Supervisor(self._procs, self.watch, cfg.restart_delay, random.Random(cfg.seed + 1))
        self.supervisor.start()
        pg_started.join()
        if not self.pg.is_running():
            raise RuntimeError(f"PostgreSQL did not start; see {self.pg.log_path}")
        create_database(self.pg.maintenance_url, "chaos")
        upgrade(self.db_url)
        self.engine = create_engine(self.db_url, pool_pre_ping=True, pool_size=2, max_overflow=4)
        runtime = Runtime(settings=self.settings, db=Database(self.db_url, pool_size=40),
                          dispatcher=CeleryDispatcher(create_app(self.settings)))
        self.tf = Tideflow(runtime)
        for definition in cfg.workload.definitions():
            self.tf.register(definition)
        self.t_registered = time.time()  # the schedule's cursor starts at its registration: its times after this
        self.tf.set_pool(cfg.workload.pool, cfg.workload.pool_slots)
        wait_until(self.supervisor.all_ready, timeout=120, interval=0.1, message="processes did not start")
        self.log(f"[{cfg.name}] {len(self._procs)} processes ready in {self.workdir}")

    # -- starting runs ----------------------------------------------------------------------------------
    def _find_run(self, key: str) -> int | None:
        assert self.engine is not None
        with self.engine.connect() as conn:
            q = select(repo.R.c.id).where(repo.R.c.workflow_name == MIXED, repo.R.c.params["key"].as_string() == key)
            found = conn.execute(q).scalar()
        return int(found) if found is not None else None

    def _start_one(self, key: str) -> None:
        assert self.tf is not None
        called, errors, run_id = time.time(), 0, None
        while run_id is None and time.time() - called < 300:
            try:
                run_id = self.tf.start_run(MIXED, {"key": key})
            except Exception:  # noqa: BLE001 - the database may be down or restarting: retry, idempotently
                errors += 1
                with contextlib.suppress(Exception):
                    run_id = self._find_run(key)  # the commit may have landed before the error
                if run_id is None and self._closing.wait(0.5):
                    break
        self.started[key] = inv.StartedRun(key, run_id, called, time.time(), errors)
        if run_id is not None and key.endswith("0"):  # every tenth: a run whose subworkflow cannot start
            with contextlib.suppress(Exception):  # best effort: an outage may refuse it; it is checked if it exists
                self.tf.start_run(NOSTART, {"key": key})
        if self.cfg.workload.code:
            self._start_code(key, int(key.rpartition("-")[2]))

    def _retry(self, call: Callable[[], Any], errors: list[int]) -> Any:
        """``call()`` until it returns (the database may be down or restarting: the calls are idempotent by key)
        or 300 s have passed; ``errors[0]`` counts the failed calls."""
        called = time.time()
        while time.time() - called < 300:
            try:
                return call()
            except Exception:  # noqa: BLE001 - retried
                errors[0] += 1
                if self._closing.wait(0.5):
                    break
        return None

    def _stage_reached(self, state_values: Any, state: str, stage: str) -> bool:
        order = ["sleeping", "waiting", "done"]
        got = (state_values or {}).get("stage")
        return bool(got in order and order.index(got) >= order.index(stage) or state in inv.RUN_TERMINAL)

    def _stage_poller(self) -> None:
        """One thread polls every code run waiting for its stage, in one query per pass (the workload's own
        pace, not a test synchronisation), and hands each run whose stage came (or whose 300 s ran out: the
        signal is kept until the run waits for it) to the start pool to send its signal. A thread per waiting
        run held the start pool's threads for minutes on a loaded machine and starved the starts behind them."""
        assert self.engine is not None
        while not self._closing.wait(0.2):
            with self._budget_lock:
                pending = dict(self._awaiting)
            if not pending:
                continue
            ready: list[int] = []
            with contextlib.suppress(Exception):  # the database may be down: poll again
                with self.engine.connect() as conn:
                    rows = conn.execute(select(repo.R.c.id, repo.R.c.state_values, repo.R.c.state)
                                        .where(repo.R.c.id.in_(list(pending)))).all()
                ready = [r.id for r in rows if self._stage_reached(r.state_values, r.state, pending[r.id][2])]
            now = time.time()
            ready += [rid for rid, (_, _, _, since) in pending.items() if now - since > 300 and rid not in ready]
            with self._budget_lock:
                for rid in ready:
                    ckey, n, _, _ = self._awaiting.pop(rid)
                    self._futures.append(self._pool.submit(self._send_signal, rid, ckey, n))

    def _awaiting_done(self) -> bool:
        with self._budget_lock:
            return not self._awaiting and all(f.done() for f in self._futures)

    def _send_signal(self, run_id: int, ckey: str, n: int) -> None:
        assert self.tf is not None
        tf, sent = self.tf, [0]
        self._retry(lambda: tf.signal(run_id, codeflows.SIGNAL, codeflows.signal_data(n), key=f"{ckey}-approve"), sent)
        self.signal_errors[ckey] = sent[0]

    def _start_code(self, key: str, n: int) -> None:
        """Start the code run beside mixed run ``key`` (idempotent start key), then send its ``approve`` signal
        (idempotency key), by ``n % 3``: right away (it is kept until the run gets to its wait), once the run
        sleeps, or once it waits for it (the stage the workflow publishes with ``ctx.set_state``)."""
        assert self.tf is not None
        tf, ckey, called, errors = self.tf, f"{key}-code", time.time(), [0]
        run_id = self._retry(lambda: tf.start_run(codeflows.CODE, {"n": n}, key=ckey), errors)
        self.started[ckey] = inv.StartedRun(ckey, run_id, called, time.time(), errors[0])
        if run_id is None:
            return
        stage = (None, "sleeping", "waiting")[n % 3]
        if stage is None:
            self._send_signal(run_id, ckey, n)
        else:
            with self._budget_lock:
                self._awaiting[run_id] = (ckey, n, stage, time.time())

    def start_runs(self, k: int) -> list[str]:
        """Start ``k`` runs now, each from its own thread (from the budget while it lasts, then extra ones)."""
        with self._budget_lock:
            first = self._budget
            self._budget += k
            keys = [f"{self.cfg.name}-{i}" for i in range(first, first + k)]
            self._futures.extend(self._pool.submit(self._start_one, key) for key in keys)
        return keys

    def _starter(self) -> None:
        t0 = time.monotonic()
        while not self.stop.is_set():
            with self._budget_lock:
                if self._budget >= self.cfg.runs:
                    return
            due = t0 + self._budget / self.cfg.rate
            if not self.stop.wait(max(0.0, due - time.monotonic())):
                self.start_runs(1)

    # -- the fault window -------------------------------------------------------------------------------
    def _inject(self) -> None:
        cfg = self.cfg
        assert self.pg and self.redis and self.engine and self.tf
        ctx = FaultContext(
            procs=self._procs, pg=self.pg, redis=self.redis, database_url=self.db_url, engine=self.engine,
            celery=create_app(self.settings), start_runs=self.start_runs, rng=random.Random(cfg.seed + 2),
            lease_seconds=self.settings.lease_seconds, reconcile_seconds=self.settings.reconcile_interval_seconds,
            stop_bound_seconds=self.settings.lease_seconds + self.settings.heartbeat_interval
            + self.settings.stop_grace_seconds,
            lock_seconds=cfg.lock_seconds, lock_runs=cfg.lock_runs, stop=self.stop)
        # one fault alone: first injection soon; mixed: spread the first injections over the first 40% of the
        # window (up to each fault's own interval), so they do not all land in the same second
        spread = 0.4 * cfg.runs / cfg.rate if len(cfg.faults) > 1 else 0.0
        intervals = {**FULL_INTERVALS, **EXTRA_INTERVALS, **cfg.intervals}
        self._injectors = [
            Injector(FAULTS[kind](ctx), intervals[kind],
                     self.rng.uniform(cfg.first_delay[0], max(cfg.first_delay[1], min(intervals[kind][0], spread))),
                     self.stop, random.Random(cfg.seed + 10 + i)) for i, kind in enumerate(cfg.faults)]
        starter = threading.Thread(target=self._starter, name="chaos-starter", daemon=True)
        self.t_window = time.time()
        starter.start()
        threading.Thread(target=self._stage_poller, name="chaos-stages", daemon=True).start()
        for injector in self._injectors:
            injector.start()

        max_window = cfg.max_window if cfg.max_window is not None else cfg.runs / cfg.rate + 60

        def window_over() -> bool:
            elapsed = time.time() - self.t_window
            done = (not starter.is_alive() and elapsed >= cfg.min_window
                    and all(i.records for i in self._injectors))
            return done or elapsed > max(max_window, cfg.min_window)

        wait_until(window_over, timeout=max(max_window, cfg.min_window) + 60, interval=0.2,
                   message="fault window never ended")
        self.stop.set()
        for injector in self._injectors:
            injector.join(cfg.lock_seconds + 120)
        for injector in self._injectors:
            injector.fault.lift()
        self._disarm()
        self.t_faults_end = time.time()
        wait_until(self._awaiting_done, timeout=330, interval=0.1,
                   message="start_run and signal calls did not return")
        assert self.supervisor is not None
        wait_until(self.supervisor.all_ready, timeout=120, interval=0.1, message="processes did not come back")
        self._stop_schedule()
        self.t_quiet = time.time()
        self.log(f"[{cfg.name}] faults stopped after {self.t_faults_end - self.t_window:.1f}s: "
                 f"{dict(Counter(r.kind for i in self._injectors for r in i.records))}")

    def _stop_schedule(self) -> None:
        """Let beat (restarted after its kills) catch up with every fire time of the fault window, then pause the
        schedule so the runs can drain. The invariants then want a fire row for each of those times."""
        self.t_schedule_until = self.t_faults_end
        w = self.cfg.workload
        if not w.schedule_seconds:
            return
        assert self.engine is not None and self.tf is not None
        window = self._schedule_windows()[0]
        last = max(inv.expected_fire_times(window), default=None)

        def caught_up() -> bool:
            assert self.engine is not None
            with self.engine.connect() as conn:
                got = conn.execute(select(repo.SF.c.fire_time).where(repo.SF.c.schedule_name == SCHEDULED)
                                   .order_by(repo.SF.c.fire_time.desc()).limit(1)).scalar()
            return last is None or (got is not None and got.timestamp() >= last)

        with contextlib.suppress(AssertionError):  # if not, the invariant schedule-missed says what is missing
            wait_until(caught_up, timeout=60, interval=0.2)
        tf = self.tf
        self._retry(lambda: tf.pause_schedule(SCHEDULED, actor="chaos campaign"), [0])

    def _schedule_windows(self) -> list[inv.ScheduleWindow]:
        w = self.cfg.workload
        if not w.schedule_seconds:
            return []
        return [inv.ScheduleWindow(SCHEDULED, w.schedule_cron, "UTC", self.t_registered,
                                   getattr(self, "t_schedule_until", self.t_registered))]

    def _disarm(self) -> None:
        """Crash-before-publish is a fault too: at the end of the window, restart the armed processes without
        it (warm shutdown: running bodies finish, reserved messages go back to the queue)."""
        armed = {p.name: p for p in self._procs if CRASH_ENV in p.env}
        generation = {name: p.generation for name, p in armed.items()}
        for p in armed.values():
            p.env = {k: v for k, v in p.env.items() if k != CRASH_ENV}
            main = p.main()
            if main is not None:
                with contextlib.suppress(Exception):
                    main.terminate()

        def replaced() -> bool:  # exited (the supervisor restarts it, without the setting) or already restarted
            return all(not p.alive() or p.generation > generation[n] for n, p in armed.items())

        try:
            wait_until(replaced, timeout=30, interval=0.05)
        except AssertionError:
            for n, p in armed.items():
                if p.generation == generation[n]:
                    p.kill_all()

    # -- drain ------------------------------------------------------------------------------------------
    def _drain_bound(self) -> DrainBound:
        s, w = self.settings, self.cfg.workload
        assert self.engine is not None
        with self.engine.connect() as conn:
            live = conn.execute(select(repo.T.c.name, repo.T.c.state, repo.T.c.next_publish_at, repo.T.c.type,
                                       repo.T.c.seq)
                                .where(repo.T.c.state.in_(["pending", "submitted", "running"]))).all()
            code_live = len(conn.execute(select(repo.R.c.id).where(
                repo.R.c.workflow_name == codeflows.CODE, repo.R.c.state.notin_(inv.RUN_TERMINAL))).all())
        next_publish = [(_ts(r.next_publish_at) or 0) - self.t_quiet for r in live if r.state == "submitted"]
        orphan_wait = max([s.orphan_timeout_seconds, *next_publish])
        recovery = (s.lease_seconds + orphan_wait + s.advance_timeout_seconds + 3 * s.reconcile_interval_seconds
                    + s.heartbeat_interval + s.stop_grace_seconds)
        seconds = w.task_seconds()
        # DAG tasks: the live rows; a code run inserts its steps as it goes, so each live one counts whole (its
        # body time and a hop per step, child included), its live rows not again
        work = sum(seconds.get(r.name, 0.0) + STEP_OVERHEAD for r in live if r.type != "subworkflow" and r.seq is None)
        work += code_live * (codeflows.body_seconds() + 8 * STEP_OVERHEAD)
        # every signal has been sent by now (the start threads have returned)
        run = max(w.critical_path(STEP_OVERHEAD), codeflows.critical_path(STEP_OVERHEAD) if w.code else 0.0)
        return DrainBound(recovery, run, work / (self.cfg.workers * self.cfg.concurrency))

    def _not_terminal(self) -> int:
        assert self.engine is not None
        with self.engine.connect() as conn:
            return len(conn.execute(select(repo.R.c.id).where(repo.R.c.state.notin_(inv.RUN_TERMINAL))).all())

    def _drain(self) -> None:
        self.bound = self._drain_bound()
        hard = max(2 * self.bound.total, self.bound.total + 60)
        self.drain_seconds: float | None = None
        with contextlib.suppress(AssertionError):
            wait_until(lambda: self._not_terminal() == 0, timeout=hard, interval=0.2)
            self.drain_seconds = time.time() - self.t_quiet
        # bodies that lost their lease may still be stopping: wait until every execution has ended
        with contextlib.suppress(AssertionError):
            wait_until(self._executions_ended, timeout=30, interval=0.2)
        self.log(f"[{self.cfg.name}] drained in {self.drain_seconds}s (bound {self.bound})")

    def _executions_ended(self) -> bool:
        assert self.supervisor is not None
        self.supervisor.tick()
        execs = inv.executions(read_ledger(self.ledger), self.watch.first_dead)
        return all(x.status != "open" for x in execs)

    # -- check ------------------------------------------------------------------------------------------
    def _snapshot(self) -> inv.Snapshot:
        assert self.engine is not None
        with self.engine.connect() as conn:
            runs = [inv.RunRow(r.id, r.workflow_name, r.state, r.parent_task_run_id,
                               r.key or (r.params or {}).get("key"), _ts(r.created_at) or 0, _ts(r.finished_at),
                               str(r.kind), r.params, r.result, r.schedule_name, _ts(r.schedule_time))
                    for r in conn.execute(select(repo.R))]
            fires = [inv.FireRow(f.schedule_name, _ts(f.fire_time) or 0, f.outcome, f.run_id, f.reason)
                     for f in conn.execute(select(repo.SF))]
            tasks = [inv.TaskRow(t.id, t.run_id, t.name, t.state, t.attempt, t.type, t.child_run_id, t.publish_count,
                                 t.seq, _ts(t.due_at), t.pool) for t in conn.execute(select(repo.T))]
            pools = {str(p.name): int(p.slots) for p in conn.execute(select(repo.P))}
            attempts = [inv.AttemptRow(a.task_run_id, a.attempt, a.outcome, a.pid, _ts(a.started_at) or 0,
                                       _ts(a.finished_at)) for a in conn.execute(select(repo.A))]
            events = [inv.EventRow(e.id, e.run_id, e.to_state, e.from_state, e.task_run_id, e.attempt,
                                   _ts(e.created_at) or 0, e.actor, e.reason)
                      for e in conn.execute(select(repo.E).order_by(repo.E.c.id))]
        resumed: dict[int, float] = {}
        for r in self.records:
            if r.kind == "pause":
                resumed[int(r.data["pid"])] = max(resumed.get(int(r.data["pid"]), 0.0), r.ended)
        return inv.Snapshot(runs, tasks, attempts, events, read_ledger(self.ledger), list(self.started.values()),
                            dict(self.watch.first_dead), resumed, pools, fires, self._schedule_windows())

    def _check(self, t0: float) -> CampaignResult:
        s = self.settings
        self.records = sorted((r for i in self._injectors for r in i.records), key=lambda r: r.started)
        snap = self._snapshot()
        timing = inv.Timing(s.lease_seconds, s.heartbeat_interval, s.stop_grace_seconds)
        checked = inv.check_all(snap, timing)
        if self.drain_seconds is None or self.drain_seconds > self.bound.total:
            checked.violations.append(inv.Violation(
                "terminal", f"runs drained in {self.drain_seconds}s after the last fault, bound {self.bound}"))
        recovery = inv.recovery_times([(r.started, r.ended, r.kind in BLOCKS_COMMITS) for r in self.records],
                                      snap.tasks, snap.events)
        evidence = collect_evidence(self.records, snap, checked, self._procs)
        assert self.supervisor is not None
        return CampaignResult(
            self.cfg, s, self.workdir, snap.started, snap.runs, snap.tasks, snap.attempts, snap.events, checked,
            self.records, [e for i in self._injectors for e in i.errors], recovery, self.bound,
            self.drain_seconds, list(self.supervisor.restarts), evidence, time.time() - t0, dict(self.signal_errors),
            snap.fires, snap.schedules)

    # -- teardown ---------------------------------------------------------------------------------------
    def teardown(self, keep: bool) -> None:
        """Stop everything this campaign started, whatever state it is in (each step on its own, so one that
        fails cannot leave processes or servers behind)."""
        if self._torn_down:
            return
        self._torn_down = True
        self.stop.set()
        self._closing.set()
        steps: list[Callable[[], object]] = [injector.fault.lift for injector in self._injectors]
        if self.supervisor is not None:
            steps += [self.supervisor.hold, self.supervisor.stop]
        steps += [p.kill_all for p in self._procs]
        steps.append(lambda: self._pool.shutdown(wait=False, cancel_futures=True))
        steps += [s for s in (self.tf and self.tf.close, self.engine and self.engine.dispose,
                              self.pg and self.pg.cleanup, self.redis and self.redis.cleanup) if s]
        workdir = getattr(self, "workdir", None)
        if workdir is not None and not keep:
            steps.append(lambda: shutil.rmtree(workdir, ignore_errors=True))
        for step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - carry on tearing down
                self.log(f"[{self.cfg.name}] teardown step {step!r} failed: {exc!r}")

    def run(self) -> CampaignResult:
        t0 = time.time()
        ok = False
        atexit.register(self.teardown, True)
        try:
            self._setup()
            self._inject()
            self._drain()
            result = self._check(t0)
            ok = result.ok
            return result
        finally:
            self.teardown(keep=self.cfg.keep_workdir or not ok)
            atexit.unregister(self.teardown)


def run_campaign(cfg: CampaignConfig, log: Callable[[str], None] | None = None) -> CampaignResult:
    return Campaign(cfg, log).run()


def campaigns_for(spec: str, base: CampaignConfig) -> list[CampaignConfig]:
    """``mixed`` (all faults at once), ``all-each`` (each alone, then mixed) or a comma-separated list
    (those faults together in one campaign)."""
    if spec == "all-each":
        return [replace(base, name=kind, faults=(kind,), seed=base.seed + i) for i, kind in enumerate(FAULT_KINDS)] \
            + [replace(base, name="mixed", faults=FAULT_KINDS, seed=base.seed + len(FAULT_KINDS))]
    if spec == "mixed":
        return [replace(base, name="mixed", faults=FAULT_KINDS)]
    kinds = tuple(k.strip() for k in spec.split(",") if k.strip())
    unknown = [k for k in kinds if k not in FAULTS]
    if unknown:
        raise ValueError(f"unknown fault(s) {unknown}; choose from {', '.join(FAULTS)}, mixed, all-each")
    # a campaign with a long-body fault needs the slow task to outlast the failover and the stop bound
    if "pg-partition" in kinds and base.workload.slow_seconds < 16:
        base = replace(base, workload=replace(base.workload, slow_seconds=16.0))
    return [replace(base, name="+".join(kinds), faults=kinds)]
