"""What one ``GET /metrics`` scrape costs as the history grows (``app.metrics.Metrics.render``, in-process).

    .venv/bin/python -m bench.metrics_scrape [--runs 20000] [--small-runs 1000] [--tasks-per-run 10]
                                             [--new-runs 10] [--repeat 7] [--broker redis|none]

Two fresh PostgreSQL databases (migrated, dropped afterwards) hold a finished history of ``--small-runs`` and
``--runs`` runs of ``--tasks-per-run`` tasks, written with set-based SQL (``INSERT ... SELECT`` over
``generate_series``, not through the services): per run its row, its task rows (succeeded, attempt 1), one
``task_attempts`` row per task with a ``wait_seconds``, and the events the engine writes (run started, per task
pending -> submitted -> running -> succeeded, run succeeded: 3 per task + 2 per run); then VACUUM ANALYZE, as
autovacuum would have done on a database that old. Both histories are measured in the same invocation, their
repetitions interleaved (small, large, small, ...) so that the machine's noise hits both alike:

1. first scrape: a fresh ``Metrics`` (as after a restart of the web process) counts the whole history once;
2. steady state: the scrape that follows ``--new-runs`` new finished runs (10 x 10 tasks: 100 attempts and
   their 320 events), i.e. what each periodic Prometheus scrape costs;
3. nothing new: a scrape right after another one.

Median of ``--repeat`` scrapes each (after untimed warm-up scrapes). Everything is measured twice, interleaved:
through connections with the server's settings, and through connections opened with ``-c jit=off``: with
PostgreSQL's defaults (jit on, ``jit_above_cost`` 100,000) the planner's estimate for the first scrape's
event-kind query over the whole ``events`` table crosses the JIT thresholds, and the compilation is part of
what that scrape costs (and, once a backend has loaded LLVM, its parallel workers load it too). Each scrape is broken
down by timing the database calls ``app.metrics`` makes (wrapped): the runs-by-state and tasks-by-state
gauges are ``GROUP BY`` over every row (O(history)); the counters and the histogram are aggregated over the
rows above the cursors (O(new rows)). The queue depths are read from the local Redis under a key prefix of
their own (deleted afterwards; nothing is published there, so every depth is 0); ``--broker none`` leaves
the broker out. Ratio = large history / small history, same invocation.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from types import ModuleType
from typing import Any

from sqlalchemy import func, insert, select, text

from app.broker import CeleryDispatcher, create_app
from app.clock import utcnow
from app.config import Settings
from app.db import repository as repo
from app.db.schema import Event, TaskAttempt, TaskRun, Workflow, WorkflowRun
from app.metrics import Metrics, queries
from app.runtime import Runtime
from bench.common import Servers, database, parser, percentile, prefix, purge_prefix, report

NOOP = "bench.bodies:noop"
WORKFLOW = "bench-metrics"

#: the database calls a scrape makes (module, function), grouped as reported (anything else: the "rest" column)
PARTS: dict[str, tuple[tuple[ModuleType, str], ...]] = {
    "runs_groupby": ((repo, "count_runs_by_state"),),
    "tasks_groupby": ((repo, "count_tasks_by_state"),),
    "events": tuple((queries, n) for n in ("event_kinds_after", "event_kinds_in", "missing_event_ids")),
    "attempts": tuple((queries, n) for n in ("attempt_waits_after", "attempt_waits_in", "missing_attempt_ids")),
    "other_db": tuple((queries, n) for n in ("snapshot", "counter_values", "workflow_ids", "workflow_definitions")),
    "code_runs": tuple((queries, n) for n in ("runs_by_kind_and_state", "pending_timers", "signal_totals",
                                              "timer_delays", "advance_latencies_after", "advance_latencies_in",
                                              "missing_task_ids")),
}

KINDS = {
    "first": "first scrape of a fresh Metrics (counts the whole history)",
    "steady": "steady state: scrape after {new} new runs ({tasks} attempts, {events} events)",
    "idle": "scrape with nothing new",
}
#: "jit": connections with the server's settings; "nojit": the same database through connections with
#: PostgreSQL's JIT compilation off (libpq ``options``)
VARIANTS = ("jit", "nojit")

# One statement per chunk of runs: the runs, their tasks (RETURNING feeds the next inserts), one attempt per
# task with its wait for a worker, and the events in the order the engine writes them. Times: run k of the
# chunk starts at :t0 + k * :gap seconds; task i becomes ready 50 ms * i after its run starts, waits
# 1 ms + u^4 * 3 s for a worker (u uniform: most waits short, a tail up to 3 s) and runs 10 ms.
HISTORY_SQL = text("""
WITH r AS (
    INSERT INTO workflow_runs (workflow_id, workflow_name, state, params, priority, on_failure,
                               created_at, updated_at, finished_at)
    SELECT :wf, :name, 'succeeded', '{}', 5, 'stop', ts, ts + :span * interval '1 second',
           ts + :span * interval '1 second'
    FROM (SELECT CAST(:t0 AS timestamptz) + k * :gap * interval '1 second' AS ts
          FROM generate_series(0, :n - 1) AS k) AS runs
    ORDER BY ts
    RETURNING id, created_at, finished_at
), q AS (
    SELECT r.id AS run_id, i, r.created_at + i * interval '50 milliseconds' AS ready_at,
           (0.001 + power(random(), 4) * 3) * interval '1 second' AS waited
    FROM r CROSS JOIN generate_series(0, :per_run - 1) AS i
), t AS (
    INSERT INTO task_runs (run_id, name, type, state, attempt, failures, queue, priority, worker, ready_at,
                           publish_count, handled, created_at, updated_at, started_at, finished_at)
    SELECT run_id, 't' || i, 'python', 'succeeded', 1, 0, :queue, 5, 'bench', ready_at, 1, true, ready_at,
           ready_at + waited + interval '10 milliseconds', ready_at + waited,
           ready_at + waited + interval '10 milliseconds'
    FROM q ORDER BY run_id, i
    RETURNING id, run_id, name, ready_at, started_at, finished_at
), a AS (
    INSERT INTO task_attempts (task_run_id, attempt, worker, pid, outcome, started_at, finished_at, duration,
                               wait_seconds)
    SELECT id, 1, 'bench', 1, 'succeeded', started_at, finished_at, 0.01,
           extract(epoch FROM started_at - ready_at)
    FROM t ORDER BY id
)
INSERT INTO events (run_id, task_run_id, task_name, attempt, from_state, to_state, actor, reason, created_at)
SELECT run_id, task_run_id, task_name, attempt, from_state, to_state, actor, reason, at
FROM (
    SELECT id AS run_id, NULL::bigint AS task_run_id, NULL AS task_name, NULL::int AS attempt,
           NULL AS from_state, 'running' AS to_state, 'api' AS actor, 'run started' AS reason,
           created_at AS at, 0 AS step
    FROM r
    UNION ALL SELECT run_id, id, name, 1, 'pending', 'submitted', 'bench', 'dependencies met', ready_at, 1 FROM t
    UNION ALL SELECT run_id, id, name, 1, 'submitted', 'running', 'bench', 'claimed', started_at, 2 FROM t
    UNION ALL SELECT run_id, id, name, 1, 'running', 'succeeded', 'bench', 'finished', finished_at, 3 FROM t
    UNION ALL SELECT id, NULL, NULL, NULL, 'running', 'succeeded', 'bench', 'all tasks succeeded',
                     finished_at, 4 FROM r
) AS e
ORDER BY run_id, at, step
""")

CHUNK_RUNS = 2000
NO_JIT = "options=-c%20jit%3Doff"


def definition(per_run: int) -> dict[str, Any]:
    return {"name": WORKFLOW, "tasks": [{"name": f"t{i}", "type": "python", "function": NOOP}
                                        for i in range(per_run)]}


def add_runs(rt: Runtime, workflow_id: int, n: int, per_run: int, *, end_ago: float = 0.0) -> None:
    """``n`` finished runs of ``per_run`` tasks, the last one starting ``end_ago`` seconds ago (one statement
    and one transaction per chunk of runs)."""
    gap = 2.0  # seconds between run starts
    span = 0.05 * per_run + 3.1  # a run ends after its last task (at most 3 s of wait)
    start = utcnow() - timedelta(seconds=end_ago + gap * n)
    for first in range(0, n, CHUNK_RUNS):
        k = min(CHUNK_RUNS, n - first)
        with rt.db.transaction() as s:
            s.execute(HISTORY_SQL, {"wf": workflow_id, "name": WORKFLOW, "t0": start + timedelta(seconds=gap * first),
                                    "gap": gap, "span": span, "n": k, "per_run": per_run,
                                    "queue": rt.settings.default_queue})


def vacuum_analyze(rt: Runtime) -> None:
    with rt.db.engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))


def row_counts(rt: Runtime) -> dict[str, int]:
    with rt.db.read() as s:
        counts = {name: int(s.execute(select(func.count()).select_from(model)).scalar_one())
                  for name, model in (("runs", WorkflowRun), ("tasks", TaskRun), ("attempts", TaskAttempt),
                                      ("events", Event))}
        counts["db_mb"] = int(s.execute(text("SELECT pg_database_size(current_database())")).scalar_one()) >> 20
    return counts


def server_settings(rt: Runtime, names: tuple[str, ...]) -> dict[str, str]:
    with rt.db.read() as s:
        return {name: str(s.execute(text(f"SHOW {name}")).scalar_one()) for name in names}


def runtime(settings: Settings) -> Runtime:
    """A runtime whose dispatcher reads the queue depths from the broker (nothing is published)."""
    return Runtime.create(settings, CeleryDispatcher(create_app(settings)))


class History:
    """One database with its history, its runtime, and the ``Metrics`` whose steady state is measured."""

    def __init__(self, label: str, db_url: str, settings: Settings, runs: int, per_run: int) -> None:
        self.label, self.per_run = label, per_run
        self.rt = runtime(settings.model_copy(update={"database_url": db_url}))
        with self.rt.db.transaction() as s:
            s.execute(insert(Workflow).values(name=WORKFLOW, version=1, digest="bench", definition=definition(per_run),
                                              created_at=utcnow()))
            self.workflow_id = int(s.execute(select(Workflow.id).where(Workflow.name == WORKFLOW)).scalar_one())
        t = time.perf_counter()
        add_runs(self.rt, self.workflow_id, runs, per_run, end_ago=60.0)
        vacuum_analyze(self.rt)
        self.seed_s = time.perf_counter() - t
        self.rows = row_counts(self.rt)
        sep = "&" if "?" in db_url else "?"
        nojit = runtime(settings.model_copy(update={"database_url": f"{db_url}{sep}{NO_JIT}"}))
        self.rts = {"jit": self.rt, "nojit": nojit}
        self.metrics = {variant: Metrics(rt) for variant, rt in self.rts.items()}
        self.samples: dict[tuple[str, str], list[dict[str, float]]] = {
            (kind, variant): [] for kind in KINDS for variant in VARIANTS}

    def close(self) -> None:
        for rt in self.rts.values():
            rt.close()


class Timer:
    """Wraps the database calls ``app.metrics`` makes (it calls them through their modules, at call time) and
    its broker read, and adds up their time per :data:`PARTS` group during one scrape."""

    def __init__(self, broker: bool) -> None:
        self.broker = broker
        self.acc: dict[str, float] = {}

    def _wrap(self, part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.acc[part] = self.acc.get(part, 0.0) + time.perf_counter() - t
        return timed

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        originals: list[tuple[Any, str, Any]] = []
        for part, calls in PARTS.items():
            for module, name in calls:
                originals.append((module, name, getattr(module, name)))
                setattr(module, name, self._wrap(part, getattr(module, name)))
        real_depths = CeleryDispatcher.queue_depths
        originals.append((CeleryDispatcher, "queue_depths", real_depths))
        CeleryDispatcher.queue_depths = self._wrap(  # type: ignore[method-assign]
            "broker", real_depths if self.broker else lambda *a, **k: {})
        try:
            yield
        finally:
            for module, name, fn in originals:
                setattr(module, name, fn)

    def scrape(self, metrics: Metrics) -> dict[str, float]:
        self.acc = {}
        t = time.perf_counter()
        body, _ = metrics.render()
        total = time.perf_counter() - t
        snap = metrics.snapshot
        assert snap.database_up, "the scrape could not read the database"
        assert snap.depths is not None, "the scrape could not read the broker"
        assert b"tideflow_task_start_latency_seconds_count" in body
        out = {part: self.acc.get(part, 0.0) * 1000 for part in (*PARTS, "broker")}
        out["total"] = total * 1000
        out["rest"] = out["total"] - sum(out[p] for p in (*PARTS, "broker"))
        return out


def measure(histories: list[History], timer: Timer, repeat: int, new_runs: int) -> None:
    """Every scrape kind ``repeat`` times per history and variant, interleaved: small and large alternate,
    and the two variants swap order from one repetition to the next."""
    def variants(i: int) -> tuple[str, ...]:
        return VARIANTS if i % 2 == 0 else VARIANTS[::-1]

    for h in histories:  # warm-up: caches, pooled connections, the workflow-queue map
        for variant in VARIANTS:
            timer.scrape(Metrics(h.rts[variant]))
            timer.scrape(h.metrics[variant])
    for i in range(repeat):
        for h in histories:
            for variant in variants(i):
                h.samples["first", variant].append(timer.scrape(Metrics(h.rts[variant])))
    for i in range(repeat):
        for h in histories:
            add_runs(h.rt, h.workflow_id, new_runs, h.per_run)
            for variant in variants(i):
                h.samples["steady", variant].append(timer.scrape(h.metrics[variant]))
    for i in range(repeat):
        for h in histories:
            for variant in variants(i):
                h.samples["idle", variant].append(timer.scrape(h.metrics[variant]))
    for h in histories:  # the steady-state scrapes counted every new row exactly once
        rows = row_counts(h.rt)
        for metrics in h.metrics.values():
            snap = metrics.snapshot.db
            assert sum(snap.latency_counts) == rows["attempts"], (snap.latency_counts, rows)
            assert sum(snap.events.values()) == rows["events"], (snap.events, rows)
            assert snap.tasks.get("succeeded") == rows["tasks"], (snap.tasks, rows)


def summarize(h: History, kind: str, variant: str) -> dict[str, float]:
    samples = h.samples[kind, variant]
    out = {key: statistics.median(s[key] for s in samples) for key in samples[0]}
    out["p90"] = percentile([s["total"] for s in samples], 90)
    return out


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--runs", type=int, default=20_000, help="finished runs in the large history")
    p.add_argument("--small-runs", type=int, default=1_000, help="finished runs in the small history (baseline)")
    p.add_argument("--tasks-per-run", type=int, default=10)
    p.add_argument("--new-runs", type=int, default=10, help="finished runs added before each steady-state scrape")
    p.add_argument("--repeat", type=int, default=7, help="scrapes of each kind per history (median)")
    p.add_argument("--broker", choices=["redis", "none"], default="redis",
                   help="read the queue depths from the local Redis (own key prefix), or leave the broker out")
    args = p.parse_args()

    t_start = time.monotonic()
    servers = Servers.start()
    key_prefix = prefix()
    settings = Settings(broker_url=servers.redis_url, broker_key_prefix=key_prefix)  # type: ignore[call-arg]
    histories: list[History] = []
    try:
        with contextlib.ExitStack() as stack:
            for label, runs in (("small", args.small_runs), ("large", args.runs)):
                db_url = stack.enter_context(database(servers, "postgres"))
                h = History(label, db_url, settings, runs, args.tasks_per_run)
                stack.callback(h.close)
                histories.append(h)
            jit_settings = server_settings(histories[0].rt, ("jit", "jit_above_cost", "jit_optimize_above_cost",
                                                             "jit_inline_above_cost"))
            timer = Timer(args.broker == "redis")
            with timer.installed():
                measure(histories, timer, args.repeat, args.new_runs)
    finally:
        purge_prefix(servers.redis_url, key_prefix)
        servers.close()

    jit = ", ".join(f"{k} = {v}" for k, v in jit_settings.items())
    new_tasks = args.new_runs * args.tasks_per_run
    new_events = new_tasks * 3 + args.new_runs * 2
    rows: list[dict[str, Any]] = []
    small, large = histories
    for kind, label in KINDS.items():
        base = {v: summarize(small, kind, v) for v in VARIANTS}
        for h in histories:
            m = {v: summarize(h, kind, v) for v in VARIANTS}
            on, off = m["jit"], m["nojit"]
            rows.append({"history": f"{h.rows['tasks']:,} tasks ({h.rows['runs']:,} runs, {h.rows['events']:,} "
                                    f"events)", "scrape": label.format(new=args.new_runs, tasks=new_tasks,
                                                                       events=new_events),
                         "ms": on["total"], "p90": on["p90"], "ratio": on["total"] / base["jit"]["total"],
                         "ms, JIT off": off["total"], "ratio, JIT off": off["total"] / base["nojit"]["total"],
                         "runs GROUP BY ms": on["runs_groupby"], "tasks GROUP BY ms": on["tasks_groupby"],
                         "events ms": on["events"], "attempts ms": on["attempts"], "code runs ms": on["code_runs"],
                         "broker ms": on["broker"],
                         "rest ms": on["other_db"] + on["rest"], "kind": kind, "label": h.label, "rows": h.rows,
                         "breakdown_ms": m})
    tasks_off = "; ".join(f"{r['label']} {r['breakdown_ms']['nojit']['tasks_groupby']:.3g}" for r in rows
                          if r["kind"] == "steady")
    notes = list(servers.notes) + [
        f"PostgreSQL, in-process `Metrics(rt).render()`; median of {args.repeat} scrapes per cell, small and large "
        "interleaved; ratio = large history / small history, same invocation",
        "GROUP BY columns: the runs-by-state and tasks-by-state gauges (`repo.count_runs_by_state`, "
        "`repo.count_tasks_by_state`), a scan of every row; events / attempts: the counters and the histogram, "
        "aggregated over the rows above the cursors; code runs: runs by kind, timers, signals (whole) and the "
        "advance latencies (task rows above their cursor); broker: the queue depths "
        + ("(local Redis, own key prefix, 3 empty queues)" if args.broker == "redis" else "(left out: --broker none)")
        + "; rest: snapshot, counters table, workflow ids, session and connection, the exposition; the "
        "breakdown is of the `ms` column (server's JIT settings)",
        f"`ms`: connections with the server's settings ({jit}); `ms, JIT off`: the same database through "
        "connections opened with `-c jit=off`, measured interleaved with them",
        f"tasks GROUP BY in the steady state, JIT off: {tasks_off} ms",
        "history seeded with SQL (" + "; ".join(f"{h.label}: {h.seed_s:.1f}s, database {h.rows['db_mb']} MB"
                                                for h in histories) + "), then VACUUM ANALYZE",
    ]
    report("/metrics scrape cost", ["history", "scrape", "ms", "p90", "ratio", "ms, JIT off", "ratio, JIT off",
                                    "runs GROUP BY ms",
                                    "tasks GROUP BY ms", "events ms", "attempts ms", "code runs ms", "broker ms",
                                    "rest ms"],
           rows, notes=notes, args=args, extra={"wall_seconds": time.monotonic() - t_start})


if __name__ == "__main__":
    main()
