"""Scaling: costs that must not grow with the size of a run, the number of runs, or the number of live rows.
Each part compares a large case with a small one measured in the same invocation (ratio large / small).

    .venv/bin/python -m bench.scale [--parts abcde] [--tasks 10000] [--small-tasks 100] [--runs 1000]
                                    [--small-runs 10] [--rows 100000] [--small-rows 1000] [--database postgres]

(a) one run of a ``--tasks`` DAG (sqrt(N) parallel chains of sqrt(N): 100 x 100 for 10,000) against the same
    shape at ``--small-tasks`` (10 x 10), no-op python tasks, real worker + master processes: seconds per task
    completion in the steady state (between 10% and 90% of the tasks finished, from ``finished_at``). Then
    in-process, without a broker (``app.services.worker.execute`` with a RecordingDispatcher, one
    completion at a time on a fresh run of each size): the cost of one completion, and of the advance inside
    it (``advance_locked`` in the worker module, timed by wrapping it). Requirement: flat in the DAG's size.
(b) ``--runs`` runs of a 5-task chain started in one transaction (all in flight at once) against batches
    of ``--small-runs``: tasks/s.
(c) one reconciler pass (``app.services.reconciler.reconcile_once``, in-process) over ``--rows`` live task
    rows (half submitted, half running, not due; inserted with SQL) against ``--small-rows``: an idle pass,
    and a pass with the same fixed number of due rows (orphans, expired leases, unhandled completions).
(d) CPU seconds per task of each process kind (worker main and pool, master main and pool, beat, web under a
    UI-like polling load, the database's PostgreSQL backends, the broker, the starting client) over runs of a
    10-task workflow, one fresh deployment (database, private redis-server) per ``--cpu-sizes`` size; and the
    history tables' ``pg_total_relation_size`` per 1,000 tasks. ``--broker rabbitmq``: the machine's RabbitMQ.
(e) one run of ``--wide-tasks`` tasks as WIDTH parallel chains for each of ``--widths``: the share of task
    completions whose advance was handed to the master (the run row was locked by a sibling), the master
    queue's depth.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import func, insert, select, text, update

from app.clock import utcnow
from app.config import Settings
from app.db.schema import TaskRun, WorkflowRun
from app.dispatch import RecordingDispatcher
from app.runtime import Runtime
from app.services import master, reconciler, worker
from bench.common import (
    DEFAULT_RABBIT,
    Servers,
    TideflowDeployment,
    database,
    parser,
    percentile,
    report,
    workdir,
)
from tests.support.wait import poll

NOOP = "bench.bodies:noop"


def grid(n: int) -> dict[str, Any]:
    """About ``n`` tasks as sqrt(n) parallel chains of sqrt(n)."""
    width = max(1, round(math.sqrt(n)))
    depth = max(1, n // width)
    tasks = [{"name": f"c{w}_{d}", "type": "python", "function": NOOP,
              "depends_on": [f"c{w}_{d - 1}"] if d else []} for w in range(width) for d in range(depth)]
    return {"name": f"bench-grid-{width}x{depth}", "tasks": tasks}


def chain(n: int, name: str) -> dict[str, Any]:
    return {"name": name, "tasks": [{"name": f"t{i}", "type": "python", "function": NOOP,
                                     "depends_on": [f"t{i - 1}"] if i else []} for i in range(n)]}


def finished_times(rt: Runtime, run_ids: list[int]) -> list[float]:
    with rt.db.read() as s:
        q = select(TaskRun.finished_at).where(TaskRun.run_id.in_(run_ids), TaskRun.finished_at.is_not(None))
        return sorted(t.timestamp() for (t,) in s.execute(q) if t is not None)


def steady_cost(times: list[float]) -> float:
    """Seconds per completion between the 10% and 90% completion marks (start-up and tail excluded)."""
    if len(times) < 10:
        return float("nan")
    lo, hi = int(len(times) * 0.1), int(len(times) * 0.9)
    return (times[hi] - times[lo]) / (hi - lo)


def run_state(rt: Runtime, run_id: int) -> str:
    with rt.db.read() as s:
        return str(s.execute(select(WorkflowRun.state).where(WorkflowRun.id == run_id)).scalar_one())


def wait_run(dep: TideflowDeployment, run_id: int, timeout: float) -> bool:
    return bool(poll(lambda: run_state(dep.tf.runtime, run_id) != "running", timeout, 0.25))


# -- (a) one big run -------------------------------------------------------------------------------------


def e2e_run(dep: TideflowDeployment, definition: dict[str, Any], timeout: float) -> dict[str, Any]:
    name, _, _ = dep.tf.register(definition)
    n = len(definition["tasks"])
    t0 = time.time()
    run_id = dep.tf.start_run(name)
    t_started = time.time()
    done = wait_run(dep, run_id, timeout)
    times = finished_times(dep.tf.runtime, [run_id])
    wall = (times[-1] if times else time.time()) - t0
    return {"tasks": n, "completed": len(times), "finished": done, "start_run_s": t_started - t0,
            "wall_s": wall, "s_per_completion": steady_cost(times), "by_master": submitted_by_master(dep, run_id)}


def submitted_by_master(dep: TideflowDeployment, run_id: int) -> float:
    """Share of the run's non-root submissions made by the master (the worker's inline advance found the run
    locked, or failed, and handed it over): each costs a hop through the master queue."""
    from app.db.schema import Event

    with dep.tf.runtime.db.read() as s:
        q = (select(Event.actor, func.count()).where(Event.run_id == run_id, Event.to_state == "submitted",
                                                     Event.from_state == "pending", Event.actor != "api")
             .group_by(Event.actor))
        counts = dict(s.execute(q).all())
    total = sum(counts.values())
    return counts.get("master", 0) / total if total else float("nan")


ADVANCE_ENTRY_POINTS = ("advance_locked",)


@contextmanager
def timed_advance() -> Iterator[list[float]]:
    """Time the worker's inline advance: wrap whichever of :data:`ADVANCE_ENTRY_POINTS` the worker module
    imports (it calls one per completion). Empty if it imports neither."""
    samples: list[float] = []
    originals = {name: getattr(worker, name) for name in ADVANCE_ENTRY_POINTS if hasattr(worker, name)}

    def timed(fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                samples.append(time.perf_counter() - t)
        return wrapper

    for name, fn in originals.items():
        setattr(worker, name, timed(fn))
    try:
        yield samples
    finally:
        for name, fn in originals.items():
            setattr(worker, name, fn)


def _ms(values: list[float]) -> tuple[float, float]:
    return ((statistics.median(values) * 1000, percentile(values, 90) * 1000) if values
            else (float("nan"), float("nan")))


class InProcess:
    """Runs of one definition driven in this process, one completion at a time, without a broker
    (``app.services.worker.execute`` with a RecordingDispatcher).

    Every other completion (PostgreSQL only) is made while this process holds the run's row lock from a
    second connection, as a sibling's advance or the master would: the worker's inline advance then hands
    the run over, and the master's ``advance_run`` is timed once the lock is released (the hand-off path).
    """

    def __init__(self, db_url: str, definition: dict[str, Any], runs: int) -> None:
        from app.services import control

        self.rec = RecordingDispatcher()
        self.rt = Runtime.create(Settings(database_url=db_url, python_modules="bench"), self.rec)  # type: ignore[call-arg]
        self.tasks = len(definition["tasks"])
        self.series: dict[str, list[float]] = {"completion": [], "advance": [], "handoff_completion": [],
                                               "master": []}
        self.done = 0
        with self.rt.db.transaction() as s:
            row, _, _ = control.register_workflow(s, definition)
        self.start_s: list[float] = []
        for _ in range(runs):
            t = time.perf_counter()
            with self.rt.db.transaction() as s:
                master.start_run(s, self.rt, row.name, actor="bench")
            self.start_s.append(time.perf_counter() - t)

    def step(self, adv: list[float]) -> bool:
        """Complete the next submitted task; False when there is none."""
        from app.db import repository as repo

        if not self.rec.executed:
            return False
        m = self.rec.executed.pop(0)
        locked = self.rt.db.is_postgres and self.done % 2 == 1
        n_adv = len(adv)
        with contextlib.ExitStack() as stack:
            if locked:
                s = stack.enter_context(self.rt.db.transaction())
                task = repo.get_task(s, m.task_run_id)
                assert task is not None
                repo.lock_run(s, task.run_id)
            t = time.perf_counter()
            result = worker.execute(self.rt, m.task_run_id, m.attempt)
            self.series["handoff_completion" if locked else "completion"].append(time.perf_counter() - t)
        if result.outcome != worker.Outcome.SUCCEEDED:
            raise RuntimeError(f"in-process completion: {result}")
        if not locked:
            self.series["advance"] += adv[n_adv:]
        self.done += 1
        while self.rec.advanced:  # handed over to the master: do what the master does
            t = time.perf_counter()
            master.advance_run(self.rt, self.rec.advanced.pop(0), actor="bench")
            self.series["master"].append(time.perf_counter() - t)
        return True

    def results(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tasks": self.tasks, "start_run_s": statistics.median(self.start_s),
                               "completions": self.done}
        for key, values in self.series.items():
            out[f"{key}_ms"], out[f"{key}_p90_ms"] = _ms(values)
            out[f"{key}_n"] = len(values)
        return out

    def close(self) -> None:
        self.rt.close()


def inprocess_interleaved(db_url: str, small: dict[str, Any], big: dict[str, Any],
                          completions: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """``completions`` completions on one big run and as many on small runs of ``small`` (as many runs as
    needed), alternating one by one so that the machine's noise hits both sides alike."""
    small_runs = math.ceil(completions / len(small["tasks"]))
    sides = [InProcess(db_url, small, small_runs), InProcess(db_url, big, 1)]
    try:
        with timed_advance() as adv:
            while any(side.done < completions for side in sides):
                progressed = [side.step(adv) for side in sides if side.done < completions]
                if not any(progressed):
                    break
        return sides[0].results(), sides[1].results()
    finally:
        for side in sides:
            side.close()


def part_a(servers: Servers, args: Any) -> list[dict[str, Any]]:
    small, big = grid(args.small_tasks), grid(args.tasks)
    rows: list[dict[str, Any]] = []
    with database(servers, args.database) as db_url:
        with TideflowDeployment(db_url, servers.redis_url, workdir=workdir("scale-a")) as dep:
            e2e_run(dep, chain(10, "bench-warmup"), 60)
            smalls = [e2e_run(dep, small, args.timeout) for _ in range(args.small_repeat)]
            large = e2e_run(dep, big, args.timeout)
        s_cost = statistics.median(r["s_per_completion"] for r in smalls)
        s_wall = statistics.median(r["wall_s"] for r in smalls)
        rows.append({"part": "a", "case": f"{small['name']} ({len(small['tasks'])} tasks), workers; "
                     f"median of {len(smalls)}", "metric": "s per completion (steady)", "value": s_cost,
                     "wall_s": s_wall, "ratio": 1.0, "note": "downstream submissions made by the master "
                     f"(inline advance handed over): {statistics.median(r['by_master'] for r in smalls):.0%}"})
        rows.append({"part": "a", "case": f"{big['name']} ({large['tasks']} tasks), workers"
                     + ("" if large["finished"] else f"; NOT finished in {args.timeout:.0f}s: "
                        f"{large['completed']} completed"), "metric": "s per completion (steady)",
                     "value": large["s_per_completion"], "wall_s": large["wall_s"],
                     "ratio": large["s_per_completion"] / s_cost, "note": "downstream submissions made by the "
                     f"master (inline advance handed over): {large['by_master']:.0%}"})
        rows.append({"part": "a", "case": "start_run of the large run vs the small one (workers up)",
                     "metric": "s", "value": large["start_run_s"],
                     "ratio": large["start_run_s"] / statistics.median(r["start_run_s"] for r in smalls)})
        ip_small, ip_big = inprocess_interleaved(db_url, small | {"name": "ip-small"}, big | {"name": "ip-big"},
                                                 args.completions)
        for key, label in (("completion_ms", "one completion (claim, body, finish + inline advance)"),
                           ("advance_ms", "the inline advance inside it"),
                           ("handoff_completion_ms", "one completion, run locked (inline advance handed over)"),
                           ("master_ms", "the master's advance_run after a hand-off"),
                           ("start_run_s", "start_run (insert tasks, submit roots)")):
            for ip in (ip_small, ip_big):
                rows.append({"part": "a", "case": f"in-process, {ip['tasks']} tasks: {label}",
                             "metric": "ms (median)" if key.endswith("ms") else "s", "value": ip[key],
                             "p90": ip.get(key.replace("_ms", "_p90_ms")) if key.endswith("ms") else "",
                             "ratio": ip[key] / ip_small[key]})
        rows[-9]["note"] = (f"{ip_big['completions']} in-process completions on the large run and "
                            f"{ip_small['completions']} on small runs, interleaved one by one (inline / handed "
                            f"over: {ip_big['completion_n']} / {ip_big['handoff_completion_n']} on the large run); "
                            f"inline advance timed by wrapping worker.{'/'.join(ADVANCE_ENTRY_POINTS)}")
    return rows


# -- (b) many concurrent runs -----------------------------------------------------------------------------


def start_batch(dep: TideflowDeployment, name: str, n: int) -> None:
    with dep.tf.runtime.db.transaction() as s:
        for _ in range(n):
            dep.tf.start_run(name, session=s)


def part_b(servers: Servers, args: Any) -> list[dict[str, Any]]:
    wf = chain(5, "bench-small5")
    n_tasks = len(wf["tasks"])
    rows: list[dict[str, Any]] = []
    with database(servers, args.database) as db_url, TideflowDeployment(
            db_url, servers.redis_url, workdir=workdir("scale-b")) as dep:
        name, _, _ = dep.tf.register(wf)
        start_batch(dep, name, 5)
        dep.wait_all_finished(60)
        batches = max(1, args.small_total // (args.small_runs * n_tasks))
        t0 = time.monotonic()
        for _ in range(batches):
            start_batch(dep, name, args.small_runs)
            dep.wait_all_finished(args.timeout, interval=0.02)
        small_s = time.monotonic() - t0
        small_rate = batches * args.small_runs * n_tasks / small_s
        t0 = time.monotonic()
        start_batch(dep, name, args.runs)
        started = time.monotonic() - t0
        dep.wait_all_finished(args.timeout, interval=0.25)
        big_s = time.monotonic() - t0
        big_rate = args.runs * n_tasks / big_s
    rows.append({"part": "b", "case": f"{args.small_runs} concurrent runs of a {n_tasks}-task chain, "
                 f"{batches} batches", "metric": "tasks/s", "value": small_rate, "wall_s": small_s, "ratio": 1.0})
    rows.append({"part": "b", "case": f"{args.runs} concurrent runs (started in one transaction in "
                 f"{started:.1f}s)", "metric": "tasks/s", "value": big_rate, "wall_s": big_s,
                 "ratio": big_rate / small_rate})
    return rows


# -- (c) reconciler pass over many live rows ------------------------------------------------------------------


def populate(rt: Runtime, rows: int, per_run: int = 10) -> None:
    """``rows`` live task rows in runs of ``per_run`` independent tasks: even tasks submitted, odd ones
    running, none due for a day."""
    now = utcnow()
    later = now + timedelta(days=1)
    spec = {"name": "bench-recon", "tasks": [{"name": f"t{i}", "type": "python", "function": NOOP, "retries": 1}
                                             for i in range(per_run)]}
    from app.services import control

    with rt.db.transaction() as s:
        wf, _, _ = control.register_workflow(s, spec)
    n_runs = max(1, rows // per_run)
    with rt.db.transaction() as s:
        s.execute(insert(WorkflowRun), [
            {"workflow_id": wf.id, "workflow_name": wf.name, "state": "running", "params": {}, "priority": 5,
             "on_failure": "stop", "created_at": now, "updated_at": now} for _ in range(n_runs)])
        run_ids = list(s.execute(select(WorkflowRun.id).where(WorkflowRun.workflow_id == wf.id)).scalars())
    common = {"type": "python", "attempt": 1, "failures": 0, "queue": rt.settings.default_queue, "priority": 5,
              "publish_count": 1, "handled": True, "created_at": now, "updated_at": now}
    chunk = 20_000
    batch: list[dict[str, Any]] = []
    for run_id in run_ids:
        for i in range(per_run):
            if i % 2 == 0:
                batch.append({**common, "run_id": run_id, "name": f"t{i}", "state": "submitted",
                              "next_publish_at": later})
            else:
                batch.append({**common, "run_id": run_id, "name": f"t{i}", "state": "running", "worker": "bench",
                              "lease_token": str(uuid.uuid4()), "lease_expires_at": later, "started_at": now})
            if len(batch) >= chunk:
                with rt.db.transaction() as s:
                    s.execute(insert(TaskRun), batch)
                batch = []
    if batch:
        with rt.db.transaction() as s:
            s.execute(insert(TaskRun), batch)
    with rt.db.engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE"))


def make_due(rt: Runtime, offset: int, orphans: int, leases: int, unhandled: int) -> None:
    """Make a fixed number of rows due (taken from ``offset`` on, so each pass gets fresh ones)."""
    now = utcnow()
    with rt.db.transaction() as s:
        def ids(state: str, n: int, skip: int) -> list[int]:
            q = (select(TaskRun.id).where(TaskRun.state == state, TaskRun.worker.is_not(None) if state == "running"
                                          else TaskRun.worker.is_(None))
                 .order_by(TaskRun.name, TaskRun.id).offset(skip).limit(n))  # spread over runs
            return list(s.execute(q).scalars())

        s.execute(update(TaskRun).where(TaskRun.id.in_(ids("submitted", orphans, offset * orphans)))
                  .values(next_publish_at=now - timedelta(seconds=1)))
        running = ids("running", leases + unhandled, offset * (leases + unhandled))
        s.execute(update(TaskRun).where(TaskRun.id.in_(running[:leases]))
                  .values(lease_expires_at=now - timedelta(seconds=1)))
        s.execute(update(TaskRun).where(TaskRun.id.in_(running[leases:]))
                  .values(state="succeeded", handled=False, finished_at=now - timedelta(hours=1),
                          lease_token=None, lease_expires_at=None))


def reconcile_passes(db_url: str, rows: int, args: Any) -> dict[str, Any]:
    settings = Settings(database_url=db_url, orphan_timeout_seconds=3600)  # type: ignore[call-arg]
    rt = Runtime.create(settings, RecordingDispatcher())
    try:
        t = time.perf_counter()
        populate(rt, rows)
        populate_s = time.perf_counter() - t
        with rt.db.read() as s:
            live = int(s.execute(select(func.count()).select_from(TaskRun)
                                 .where(TaskRun.state.in_(["submitted", "running"]))).scalar_one())
        idle = []
        for _ in range(args.passes):
            t = time.perf_counter()
            rep = reconciler.reconcile_once(rt)
            idle.append(time.perf_counter() - t)
            assert not (rep.republished or rep.lost_attempts or rep.advanced_runs), f"idle pass did work: {rep}"
        busy, reports = [], []
        for i in range(args.passes):
            make_due(rt, i + 1, args.due, args.due, max(1, args.due // 5))
            t = time.perf_counter()
            reports.append(reconciler.reconcile_once(rt))
            busy.append(time.perf_counter() - t)
        return {"live": live, "populate_s": populate_s, "idle_ms": statistics.median(idle) * 1000,
                "busy_ms": statistics.median(busy) * 1000, "report": str(reports[-1])}
    finally:
        rt.close()


def part_c(servers: Servers, args: Any) -> list[dict[str, Any]]:
    results = {}
    for n in (args.small_rows, args.rows):
        with database(servers, args.database) as db_url:
            results[n] = reconcile_passes(db_url, n, args)
    rows: list[dict[str, Any]] = []
    small = results[args.small_rows]
    for r in results.values():
        rows.append({"part": "c", "case": f"reconcile_once, {r['live']} live task rows, nothing due",
                     "metric": "ms per pass (median)", "value": r["idle_ms"], "ratio": r["idle_ms"] / small["idle_ms"]})
        rows.append({"part": "c", "case": f"reconcile_once, {r['live']} live task rows, with due rows",
                     "metric": "ms per pass (median)", "value": r["busy_ms"], "ratio": r["busy_ms"] / small["busy_ms"],
                     "note": f"last pass: {r['report']}; rows inserted in {r['populate_s']:.1f}s"})
    return rows


# -- (d) CPU per task per process kind ---------------------------------------------------------------------

HISTORY_TABLES = ("task_runs", "task_attempts", "events", "workflow_runs")


def _proc_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) of one process from /proc, None if it is gone."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def private_redis() -> Iterator[str]:
    """A ``redis-server`` of this bench's own (the machine's binary, no persistence), so that its ``INFO cpu``
    counts this bench's traffic only."""
    import shutil
    import subprocess

    import redis as redis_lib

    from tests.support.procs import free_port

    binary = shutil.which("redis-server")
    if binary is None:
        from tests.support.redis_server import redis_server_binary

        binary = str(redis_server_binary())
    port = free_port()
    tmp = workdir("scale-redis")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        ok = poll(lambda: _redis_ping(redis_lib, url), 10, 0.05)
        if not ok:
            raise RuntimeError(f"private redis-server on {port} did not start")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _redis_ping(redis_lib: Any, url: str) -> bool:
    try:
        return bool(redis_lib.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis_lib.RedisError:
        return False


def redis_cpu(url: str) -> float:
    import redis as redis_lib

    info = redis_lib.Redis.from_url(url).info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def rabbit_pids() -> list[int]:
    import psutil

    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] in ("beam.smp", "beam")]


class Monitor:
    """A thread that samples, every ``interval`` seconds, the cumulative CPU of the deployment database's
    PostgreSQL backends (``pg_stat_activity`` of that database: a backend's CPU counts from its first sample, or
    from 0 if it connected after the window opened) and the master queue's depth (Redis only)."""

    def __init__(self, db_url: str, redis_url: str | None, key_prefix: str, master_queue: str,
                 interval: float = 0.25) -> None:
        import threading

        import psycopg

        from tests.support.postgres import psycopg_conninfo

        self.db_url = db_url
        self.reconnects = 0
        #: backends serving this bench process (its start_run transactions and its polling), counted apart
        self.bench_pids: set[int] = set()
        self.conn = psycopg.connect(psycopg_conninfo(db_url), autocommit=True)
        self.own_pid = int(self.conn.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[index]
        self.redis = None
        if redis_url:
            import redis as redis_lib

            self.redis = redis_lib.Redis.from_url(redis_url)
        self.master_pattern = f"{key_prefix}{master_queue}*"
        self.interval = interval
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.opened = False
        self.depths: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _backends(self) -> list[int]:
        import psycopg

        try:
            rows = self.conn.execute("SELECT pid, client_port FROM pg_stat_activity WHERE datname = "
                                     "current_database() AND pid <> pg_backend_pid()").fetchall()
        except psycopg.OperationalError:  # the server restarted (another session's crash test): sample on
            self.reconnects += 1
            with contextlib.suppress(psycopg.Error):
                self.conn.close()
            with contextlib.suppress(psycopg.Error):
                self.conn = psycopg_connect(self.db_url)
            return []
        mine = own_ports()
        for pid, port in rows:
            if port in mine:
                self.bench_pids.add(int(pid))
        return [int(r[0]) for r in rows]

    def sample(self) -> None:
        for pid in self._backends():
            cpu = _proc_cpu(pid)
            if cpu is None:
                continue
            if pid not in self.first:
                self.first[pid] = cpu if not self.opened else 0.0
            self.last[pid] = cpu
        if self.redis is not None and self.opened:
            keys = list(self.redis.scan_iter(match=self.master_pattern, count=1000))
            self.depths.append(sum(int(self.redis.llen(k)) for k in keys))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def open(self) -> None:
        self.sample()
        self.opened = True
        self._thread.start()

    def close(self) -> float:
        """Stop sampling; the backends' CPU seconds within the window."""
        self._stop.set()
        self._thread.join()
        self.sample()
        with contextlib.suppress(Exception):
            self.conn.close()
        return sum(self.last[pid] - self.first[pid] for pid in self.last if pid not in self.bench_pids)

    def bench_cpu(self) -> float:
        return sum(self.last[pid] - self.first[pid] for pid in self.last if pid in self.bench_pids)


def own_ports() -> set[int]:
    """Local TCP ports of this process's connections to PostgreSQL (5432)."""
    import psutil

    return {c.laddr.port for c in psutil.Process().net_connections(kind="tcp") if c.raddr and c.raddr.port == 5432}


class Pollers:
    """The web process under a UI-like polling load, from threads of this process: ``lists`` runs lists
    (``GET /api/runs?limit=50`` every 2 s, as runs.js), ``pages`` run pages (``GET /api/runs/{id}`` and its
    ``/history`` every 1 s, as run.js, on the most recent run) and a Prometheus scrape of ``/metrics`` every 15 s."""

    def __init__(self, base: str, token: str, lists: int, pages: int, scrape_every: float = 15.0) -> None:
        import threading

        self.base, self.token = base, token
        self.plan = [("list", 2.0)] * lists + [("page", 1.0)] * pages + [("metrics", scrape_every)]
        self.requests = 0
        self.errors = 0
        self.run_id: int | None = None
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(kind, every), daemon=True)
                         for kind, every in self.plan]

    def _get(self, path: str) -> Any:
        import json
        import urllib.request

        req = urllib.request.Request(self.base + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = resp.read()
        self.requests += 1
        return json.loads(body) if path.startswith("/api") else body

    def _loop(self, kind: str, every: float) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                if kind == "list":
                    page = self._get("/api/runs?limit=50")
                    if page.get("items"):
                        self.run_id = int(page["items"][0]["id"])
                elif kind == "page":
                    if self.run_id is not None:
                        self._get(f"/api/runs/{self.run_id}")
                        self._get(f"/api/runs/{self.run_id}/history")
                else:
                    self._get("/metrics")
            except Exception:  # noqa: BLE001 - counted and reported; a slow web process must not stop the bench
                self.errors += 1
            self._stop.wait(max(0.0, every - (time.monotonic() - t)))

    def __enter__(self) -> Pollers:
        for th in self._threads:
            th.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for th in self._threads:
            th.join()


def table_sizes(db_url: str) -> dict[str, tuple[int, int]]:
    """pg_total_relation_size (table, indexes, TOAST) and row count of each history table."""
    with psycopg_connect(db_url) as conn:
        out = {}
        for t in HISTORY_TABLES:
            size = int(conn.execute(f"SELECT pg_total_relation_size('{t}')").fetchone()[0])  # type: ignore[index]
            rows = int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])  # type: ignore[index]
            out[t] = (size, rows)
        return out


def psycopg_connect(db_url: str) -> Any:
    import psycopg

    from tests.support.postgres import psycopg_conninfo

    return psycopg.connect(psycopg_conninfo(db_url), autocommit=True)


def cpu_window(servers: Servers, args: Any, tasks: int, definition: dict[str, Any],
               broker_url: str, rabbit: bool) -> dict[str, Any]:
    """One deployment (worker, master, beat, web under polling), ``tasks`` tasks of runs of ``definition``;
    CPU seconds of each process kind from the first start to the last run finished."""
    per_run = len(definition["tasks"])
    n_runs = max(1, tasks // per_run)
    token = "bench-scale-token"
    with database(servers, "postgres") as db_url, TideflowDeployment(
            db_url, broker_url, workdir=workdir("scale-d"), beat=True,
            worker_concurrency=args.concurrency) as dep:
        web, base = dep.cluster.start_web(token=token)
        name, _, _ = dep.tf.register(definition)
        start_batch(dep, name, 2)  # warm every process's caches
        dep.wait_all_finished(60)
        settings = dep.tf.runtime.settings
        mon = Monitor(db_url, None if rabbit else broker_url, dep.key_prefix, settings.master_queue)
        procs = {"worker main": [dep.worker.pid], "worker pool": dep.worker.children(),
                 "master main": [dep.master.pid], "master pool": dep.master.children(),
                 "beat": [dep.cluster.beat.pid] if dep.cluster.beat else [], "web": [web.pid]}
        rpids = rabbit_pids() if rabbit else []
        idle_rabbit = 0.0
        if rabbit:  # the shared RabbitMQ's CPU with this deployment idle, over a window of the same length below
            r0, t0 = sum(_proc_cpu(p) or 0.0 for p in rpids), time.monotonic()
            time.sleep(args.rabbit_idle)
            idle_rabbit = (sum(_proc_cpu(p) or 0.0 for p in rpids) - r0) / (time.monotonic() - t0)
        with Pollers(base, token, args.ui_lists, args.ui_pages) as pollers:
            before = {k: sum(_proc_cpu(p) or 0.0 for p in pids) for k, pids in procs.items()}
            broker0 = sum(_proc_cpu(p) or 0.0 for p in rpids) if rabbit else redis_cpu(broker_url)
            mon.open()
            try:
                t0 = time.monotonic()
                start_cpu = 0.0
                left = n_runs
                while left > 0:
                    if args.in_flight and dep.unfinished() >= args.in_flight:
                        time.sleep(0.25)  # keep the queue's backlog short of the orphan timeout (see the notes)
                        continue
                    batch = min(args.start_batch, left)
                    c = time.thread_time()
                    start_batch(dep, name, batch)
                    start_cpu += time.thread_time() - c
                    left -= batch
                dep.wait_all_finished(args.timeout, interval=0.25)
                wall = time.monotonic() - t0
                after = {k: sum(_proc_cpu(p) or 0.0 for p in pids) for k, pids in procs.items()}
                broker1 = sum(_proc_cpu(p) or 0.0 for p in rpids) if rabbit else redis_cpu(broker_url)
            finally:
                pg = mon.close()
        sizes = table_sizes(db_url)
        ignored = sum(1 for line in dep.worker.own_log().splitlines() if "; message for attempt" in line)
        with dep.tf.runtime.db.read() as s:
            executed = int(s.execute(select(func.count()).select_from(TaskRun)
                                     .where(TaskRun.state == "succeeded")).scalar_one())
        cpu = {k: after[k] - before[k] for k in procs}
        cpu["client start_run"] = start_cpu
        cpu["PostgreSQL backends"] = pg
        cpu["PostgreSQL backends of the bench (start_run, polling)"] = mon.bench_cpu()
        broker = broker1 - broker0 - idle_rabbit * wall
        cpu["RabbitMQ (beam.smp, minus idle)" if rabbit else "Redis (INFO used_cpu_*)"] = broker
        return {"tasks": n_runs * per_run, "executed": executed, "wall_s": wall, "cpu": cpu, "sizes": sizes,
                "master_depth_max": max(mon.depths) if mon.depths else float("nan"),
                "monitor_reconnects": mon.reconnects, "duplicates": ignored,
                "web_requests": pollers.requests, "web_errors": pollers.errors, "idle_rabbit_per_s": idle_rabbit,
                "processes": {k: len(v) for k, v in procs.items()}}


def part_d(servers: Servers, args: Any) -> list[dict[str, Any]]:
    from bench.throughput import chain10, fan8

    definition = {"chain": chain10, "fan8": fan8}[args.cpu_workflow]()
    rows: list[dict[str, Any]] = []
    rabbit = args.broker == "rabbitmq"
    results = []
    for size in [int(s) for s in args.cpu_sizes.split(",")]:
        if rabbit:
            results.append(cpu_window(servers, args, size, definition, DEFAULT_RABBIT, True))
        else:
            with private_redis() as url:
                results.append(cpu_window(servers, args, size, definition, url, False))
        print(f"(d) {size} tasks: {results[-1]}", file=sys.stderr, flush=True)  # kept if a later size fails
    for r in results:
        n = r["tasks"]
        total = sum(v for k, v in r["cpu"].items() if k != "web" and "of the bench" not in k)
        label = f"{n} tasks ({args.cpu_workflow}, {n // len(definition['tasks'])} runs)"
        for kind, sec in r["cpu"].items():
            rows.append({"part": "d", "case": label, "metric": f"CPU ms per task: {kind}",
                         "value": sec / n * 1000, "wall_s": r["wall_s"]})
        rows.append({"part": "d", "case": label, "metric": "CPU ms per task: total (web and the bench's backends "
                     "excluded)", "value": total / n * 1000,
                     "wall_s": r["wall_s"],
                     "note": f"{r['executed']} tasks succeeded in {r['wall_s']:.1f}s ({n / r['wall_s']:.0f} tasks/s); "
                             f"web: {r['web_requests']} requests ({r['web_errors']} errors), "
                             f"{r['cpu']['web'] / r['wall_s'] * 1000:.1f} ms CPU per second; "
                             f"beat {r['cpu']['beat'] / r['wall_s'] * 1000:.2f} ms CPU per second; master queue "
                             f"depth max {r['master_depth_max']}; processes {r['processes']}; "
                             f"{r['duplicates']} messages found their attempt already claimed or finished "
                             "(re-published by the reconciler after waiting ORPHAN_TIMEOUT in the queue)"
                             + (f"; PostgreSQL restarted during the window ({r['monitor_reconnects']} reconnects)"
                                if r["monitor_reconnects"] else "")
                             + (f"; RabbitMQ idle {r['idle_rabbit_per_s'] * 1000:.0f} ms CPU/s subtracted"
                                if rabbit else "")})
        stored = r["sizes"]["task_runs"][1]  # the warm-up runs' tasks included
        for t, (size, count) in r["sizes"].items():
            rows.append({"part": "d", "case": label, "metric": f"bytes per 1,000 tasks: {t}",
                         "value": size / stored * 1000, "note": f"{t}: {count} rows ({count / stored:.2f} per "
                                                                f"task), {size / 1e6:.1f} MB"})
        rows.append({"part": "d", "case": label, "metric": "bytes per 1,000 tasks: history total",
                     "value": sum(s for s, _ in r["sizes"].values()) / stored * 1000})
    return rows


# -- (e) wide runs: hand-offs to the master ------------------------------------------------------------------


def advances_received(dep: TideflowDeployment) -> int:
    """``tideflow.advance`` messages the master received (its INFO log)."""
    return sum(1 for line in dep.master.own_log().splitlines()
               if "tideflow.advance[" in line and " received" in line)


def part_e(servers: Servers, args: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    total = args.wide_tasks
    for width in [int(w) for w in args.widths.split(",")]:
        depth = max(1, total // width)
        tasks = [{"name": f"c{w}_{d}", "type": "python", "function": NOOP,
                  "depends_on": [f"c{w}_{d - 1}"] if d else []} for w in range(width) for d in range(depth)]
        definition = {"name": f"bench-wide-{width}x{depth}", "tasks": tasks}
        with database(servers, "postgres") as db_url, private_redis() as rurl, TideflowDeployment(
                db_url, rurl, workdir=workdir("scale-e"), worker_concurrency=args.concurrency) as dep:
            e2e_run(dep, chain(10, "bench-warmup"), 60)
            adv0 = advances_received(dep)
            mon = Monitor(db_url, rurl, dep.key_prefix, dep.tf.runtime.settings.master_queue)
            mon.open()
            try:
                r = e2e_run(dep, definition, args.timeout)
            finally:
                mon.close()
            handed = advances_received(dep) - adv0
        completions = r["completed"]
        rows.append({"part": "e", "case": f"one run {width} wide x {depth} deep ({r['tasks']} tasks), "
                     f"{args.concurrency} worker processes", "metric": "advances handed to the master",
                     "value": handed / completions if completions else float("nan"), "wall_s": r["wall_s"],
                     "note": f"{handed} advance messages for {completions} completions; non-root submissions made "
                             f"by the master {r['by_master']:.0%}; master queue depth max "
                             f"{max(mon.depths) if mon.depths else 'n/a'}; s per completion (steady) "
                             f"{r['s_per_completion']:.4f}"})
    return rows


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--parts", default="abc", help="which parts to run, e.g. 'ac'")
    p.add_argument("--tasks", type=int, default=10_000, help="(a) tasks in the large run")
    p.add_argument("--small-tasks", type=int, default=100, help="(a) tasks in the small run")
    p.add_argument("--small-repeat", type=int, default=3, help="(a) small runs (median)")
    p.add_argument("--completions", type=int, default=300, help="(a) in-process completions per run size")
    p.add_argument("--runs", type=int, default=1000, help="(b) concurrent runs, large case")
    p.add_argument("--small-runs", type=int, default=10, help="(b) concurrent runs, small case")
    p.add_argument("--small-total", type=int, default=500, help="(b) tasks executed in the small case")
    p.add_argument("--rows", type=int, default=100_000, help="(c) live task rows, large case")
    p.add_argument("--small-rows", type=int, default=1000, help="(c) live task rows, small case")
    p.add_argument("--due", type=int, default=20, help="(c) due orphans and expired leases per pass")
    p.add_argument("--passes", type=int, default=5, help="(c) passes per case (median)")
    p.add_argument("--timeout", type=float, default=300, help="(a, b) cap on waiting for a run / batch")
    p.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    p.add_argument("--cpu-sizes", default="1000,5000,20000", help="(d) tasks per measured window, one per size")
    p.add_argument("--cpu-workflow", choices=["chain", "fan8"], default="chain",
                   help="(d) runs of bench.throughput's 10-task chain or 1->8->1 fan-out")
    p.add_argument("--broker", choices=["redis", "rabbitmq"], default="redis",
                   help="(d) a private redis-server, or the machine's RabbitMQ (its idle CPU subtracted)")
    p.add_argument("--rabbit-idle", type=float, default=20, help="(d) seconds of RabbitMQ idle CPU measured")
    p.add_argument("--concurrency", type=int, default=2, help="(d, e) worker pool processes")
    p.add_argument("--start-batch", type=int, default=20, help="(d) runs started per transaction")
    p.add_argument("--in-flight", type=int, default=40,
                   help="(d) start more runs only while fewer are running (0: start them all at once)")
    p.add_argument("--ui-lists", type=int, default=2, help="(d) UI runs lists polling the web process")
    p.add_argument("--ui-pages", type=int, default=2, help="(d) UI run pages polling the web process")
    p.add_argument("--widths", default="10,100,500", help="(e) widths of the wide runs")
    p.add_argument("--wide-tasks", type=int, default=2000, help="(e) tasks per wide run (width x depth)")
    args = p.parse_args()

    t_start = time.monotonic()
    servers = Servers.start()
    rows: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    try:
        for part, fn in (("a", part_a), ("b", part_b), ("c", part_c), ("d", part_d), ("e", part_e)):
            if part in args.parts:
                t = time.monotonic()
                rows += fn(servers, args)
                timings[part] = time.monotonic() - t
    finally:
        servers.close()
    notes = list(servers.notes) + [
        "ratio: large case / small case, same invocation (1.0 = flat; for tasks/s, < 1 means slower)",
        "(a, b): one worker (2 processes) + one master process, Redis broker; (c): in-process, no broker",
    ] + ([
        "(d): CPU seconds (user + system, /proc) of each process kind from the first start_run to the last run "
        "finished, divided by the tasks: worker, master (its pool runs the reconciler jobs too), beat, web under "
        f"{args.ui_lists} runs lists (2 s) + {args.ui_pages} run pages (1 s) + a /metrics scrape every 15 s; "
        "PostgreSQL: the backends of the deployment's database (pg_stat_activity, sampled every 0.25 s; the "
        "server's shared walwriter/checkpointer/autovacuum are not counted); the broker: a private redis-server's "
        "INFO used_cpu_sys + used_cpu_user, or RabbitMQ's beam.smp minus its idle rate; client start_run: the "
        "bench thread's CPU in start_run. CPU per task moves much less with the machine's load than wall-clock "
        "throughput does)",
    ] if "d" in args.parts else []) + ([
        "(e): one run of --wide-tasks tasks, WIDTH parallel chains; advances handed to the master = "
        "tideflow.advance messages the master logged as received / task completions",
    ] if "e" in args.parts else []) + [f"{r['case']}: {r['note']}" for r in rows if r.get("note")]
    report(f"Scale ({args.database})", ["part", "case", "metric", "value", "p90", "wall_s", "ratio"], rows,
           notes=notes, args=args, extra={"part_seconds": timings, "wall_seconds": time.monotonic() - t_start})


if __name__ == "__main__":
    main()
