"""Scaling: costs that must not grow with the size of a run, the number of runs, or the number of live rows.
Each part compares a large case with a small one measured in the same invocation (ratio large / small).

    .venv/bin/python -m bench.scale [--parts abc] [--tasks 10000] [--small-tasks 100] [--runs 1000]
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
"""

from __future__ import annotations

import contextlib
import math
import statistics
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
            row, _ = control.register_workflow(s, definition)
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
        wf, _ = control.register_workflow(s, spec)
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
    args = p.parse_args()

    t_start = time.monotonic()
    servers = Servers.start()
    rows: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    try:
        for part, fn in (("a", part_a), ("b", part_b), ("c", part_c)):
            if part in args.parts:
                t = time.monotonic()
                rows += fn(servers, args)
                timings[part] = time.monotonic() - t
    finally:
        servers.close()
    notes = list(servers.notes) + [
        "ratio: large case / small case, same invocation (1.0 = flat; for tasks/s, < 1 means slower)",
        "(a, b): one worker (2 processes) + one master process, Redis broker; (c): in-process, no broker",
    ] + [f"{r['case']}: {r['note']}" for r in rows if r.get("note")]
    report(f"Scale ({args.database})", ["part", "case", "metric", "value", "p90", "wall_s", "ratio"], rows,
           notes=notes, args=args, extra={"part_seconds": timings, "wall_seconds": time.monotonic() - t_start})


if __name__ == "__main__":
    main()
