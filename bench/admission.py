"""The cost of admission (``app.services.limits``): the same workflow with limits off and on, in one invocation.

``bench-fan8`` (1 -> 8 -> 1 no-op tasks) three ways: no pool (limits off: a claim is one ``UPDATE``, as before
limits existed); every task in a pool with more slots than could ever be used (admission's own cost: the pool
row locked, its running tasks counted, on every claim); every task in a pool of 2 slots (= the worker
processes: the same cost, plus claims refused while both slots are taken and their release re-publishes).
Two measures: real ``celery worker`` processes (tasks/s; ratio = on / off) and in-process per-task counts of the
hot path (SQL statements, commits: ``bench.hotpath.measure``, not moved by the machine's load)::

    .venv/bin/python -m bench.admission [--runs 100] [--concurrency 2]
"""

from __future__ import annotations

from typing import Any

from app.client import Tideflow
from app.config import Settings
from app.dispatch import RecordingDispatcher
from app.runtime import Runtime
from bench.common import Servers, TideflowDeployment, database, parser, report, workdir
from bench.hotpath import measure
from bench.throughput import chain10, fan8, run_tideflow

POOL = "bench"


def pooled(definition: dict[str, Any]) -> dict[str, Any]:
    return {**definition, "tasks": [{**t, "pool": POOL} for t in definition["tasks"]]}


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=2, help="worker processes (pool size)")
    args = p.parse_args()
    servers = Servers.start()
    variants: list[tuple[str, dict[str, Any], int | None]] = [
        ("limits off", fan8(), None),
        ("pool, 1000 slots (never full)", pooled(fan8()), 1000),
        (f"pool, {args.concurrency} slots (full)", pooled(fan8()), args.concurrency),
    ]
    rows: list[dict[str, Any]] = []
    try:
        base: dict[str, Any] = {}
        for label, definition, slots in variants:
            with database(servers, "postgres") as url:
                counts = _counted(url, definition, slots, args.runs)
            with database(servers, "postgres") as url, TideflowDeployment(
                    url, servers.redis_url, workdir=workdir("tf"), worker_concurrency=args.concurrency) as dep:
                if slots is not None:
                    dep.tf.set_pool(POOL, slots)
                run_tideflow(dep, chain10() | {"name": "warmup"}, 10)
                res = run_tideflow(dep, definition, args.runs)
            base = base or res
            rows.append({"system": f"Tideflow bench-fan8, {label}", **res, "statements": counts["statements"],
                         "commits": counts["commits"], "ratio": res["tasks_per_s"] / base["tasks_per_s"]})
    finally:
        servers.close()
    report(f"Admission: {args.runs} runs of bench-fan8, {args.concurrency} worker processes, Redis + PostgreSQL "
           "(ratio: tasks/s against limits off, same invocation; statements/commits: per task, in-process)",
           ["system", "tasks", "seconds", "tasks_per_s", "statements", "commits", "ratio"], rows,
           notes=servers.notes, args=args)


def _counted(url: str, definition: dict[str, Any], slots: int | None, runs: int) -> dict[str, Any]:
    if slots is not None:  # the pool must exist in this database before the in-process runs
        rt = Runtime.create(Settings(database_url=url), RecordingDispatcher())  # type: ignore[call-arg]
        try:
            Tideflow(rt).set_pool(POOL, max(slots, 1000))  # in-process runs claim one task at a time
        finally:
            rt.close()
    return measure(url, definition, min(runs, 40))


if __name__ == "__main__":
    main()
