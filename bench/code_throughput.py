"""Code workflows: throughput of Tideflow code workflows through real ``celery worker`` processes against DBOS on
the same PostgreSQL, in the same invocation; and the cost of replay as a workflow's history grows.

    .venv/bin/python -m bench.code_throughput [--runs 100] [--concurrency 2] [--long 1000] [--short-runs 30]
                                              [--dbos-concurrency 4,16,64] [--skip-dbos] [--parts tl]

Part ``t`` (throughput): ``--runs`` runs of ``bench-seq`` (10 sequential activities) and of ``bench-gather``
(``ctx.start_activity`` x10 + ``ctx.gather``), all started at once (then, on the same deployment, as many runs of
``bench.throughput``'s 10-task DAG chain, for comparison), on one ``worker`` process of
``--concurrency`` pool processes, one ``master`` and Redis + PostgreSQL (``bench.common.TideflowDeployment``,
production timings), activities/s from the first start to the last run finished; the same minute, DBOS
(``bench.dbos_baseline``): the same number of 10-step workflows on a DBOS queue served by ``--concurrency`` DBOS
processes at each ``--dbos-concurrency`` worker concurrency, and DBOS's in-process sequential mode. Ratio =
steps/s / the best DBOS queue figure. Without the ``dbos`` package the DBOS rows are left out and the notes say
how to install it (``pip install -e '.[bench]'``).

Part ``l`` (long histories): one run of ``bench-seq`` with ``n=--long`` activities, against ``--short-runs`` runs of
``n=10`` run one after another (so both are latency-bound chains of activities), same deployment: seconds per
activity; ratio = long / short (target <= 3: each advance replays the whole history, which must not make long
workflows quadratic in practice).
"""

from __future__ import annotations

import time
from typing import Any

from bench import dbos_baseline, throughput
from bench.common import Servers, TideflowDeployment, database, parser, report, workdir

MODULES = {"TIDEFLOW_WORKFLOW_MODULES": "bench.codeflows"}


def run_code(dep: TideflowDeployment, workflow: str, runs: int, n: int) -> dict[str, Any]:
    tf = dep.tf
    t0 = time.monotonic()
    for _ in range(runs):
        tf.start_run(workflow, {"n": n})
    started = time.monotonic()
    t1 = dep.wait_all_finished(timeout=60 + runs * n * 0.1)
    return {"steps": runs * n, "seconds": t1 - t0, "start_seconds": started - t0,
            "steps_per_s": runs * n / (t1 - t0)}


def run_serial(dep: TideflowDeployment, runs: int, n: int) -> dict[str, Any]:
    """``runs`` runs of ``bench-seq`` with ``n`` activities, one after another: seconds per activity."""
    t0 = time.monotonic()
    for _ in range(runs):
        dep.tf.start_run("bench-seq", {"n": n})
        dep.wait_all_finished(timeout=60 + n * 0.5, interval=0.01)
    seconds = time.monotonic() - t0
    return {"steps": runs * n, "seconds": seconds, "steps_per_s": runs * n / seconds,
            "ms_per_activity": 1000 * seconds / (runs * n)}


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=2, help="worker processes: Tideflow's pool, DBOS processes")
    p.add_argument("--long", type=int, default=1000)
    p.add_argument("--short-runs", type=int, default=30)
    p.add_argument("--dbos-concurrency", default="4,16,64", help="DBOS worker_concurrency values to try")
    p.add_argument("--dbos-polling", type=float, default=0.05)
    p.add_argument("--skip-dbos", action="store_true")
    p.add_argument("--parts", default="tl")
    args = p.parse_args()

    servers = Servers.start()
    rows: list[dict[str, Any]] = []
    notes = list(servers.notes)
    try:
        if "t" in args.parts:
            best = None
            if args.skip_dbos:
                notes.append("DBOS left out (--skip-dbos)")
            elif not dbos_baseline.available():
                notes.append(f"DBOS left out: {dbos_baseline.INSTALL_HINT}")
            else:
                drows = dbos_baseline.measure(
                    servers.pg_maintenance, runs=args.runs, steps=10, processes=args.concurrency,
                    concurrencies=[int(x) for x in args.dbos_concurrency.split(",")], polling=args.dbos_polling,
                    sequential_runs=args.runs)
                best = max(r["steps_per_s"] for r in drows if r["kind"] == "dbos-queue")
                rows += drows
                notes.append(f"DBOS queues polled every {args.dbos_polling}s (polling_interval_sec; default 1 s)")
            with database(servers, "postgres") as db_url, TideflowDeployment(
                    db_url, servers.redis_url, workdir=workdir("tf-code"), worker_concurrency=args.concurrency,
                    env=MODULES) as dep:
                run_code(dep, "bench-seq", 10, 10)  # warm-up
                for wf, label in (("bench-seq", "10 sequential activities"), ("bench-gather", "10-way gather")):
                    res = run_code(dep, wf, args.runs, 10)
                    rows.append({"system": f"Tideflow code workflow, {label}", "kind": "tideflow", **res})
                # the DAG engine on the same deployment: what a code workflow costs over a DAG task
                dag = throughput.run_tideflow(dep, throughput.chain10(), args.runs)
                rows.append({"system": "Tideflow DAG chain of 10 tasks (bench.throughput's)", "kind": "tideflow-dag",
                             "steps": dag["tasks"], "seconds": dag["seconds"], "steps_per_s": dag["tasks_per_s"]})
            for r in rows:
                if best:
                    r["ratio"] = r["steps_per_s"] / best
        if "l" in args.parts:
            with database(servers, "postgres") as db_url, TideflowDeployment(
                    db_url, servers.redis_url, workdir=workdir("tf-long"), worker_concurrency=args.concurrency,
                    env=MODULES) as dep:
                run_serial(dep, 3, 10)  # warm-up
                short = run_serial(dep, args.short_runs, 10)
                long = run_serial(dep, 1, args.long)
            rows.append({"system": f"Tideflow bench-seq n=10, {args.short_runs} runs one at a time",
                         "kind": "short", **short})
            rows.append({"system": f"Tideflow bench-seq n={args.long}, one run", "kind": "long", **long,
                         "ratio": long["ms_per_activity"] / short["ms_per_activity"]})
            notes.append("long-history ratio = ms per activity of the long run / of the 10-activity runs "
                         "(target <= 3)")
    finally:
        servers.close()
    report(f"Code workflows: {args.runs} runs, {args.concurrency} worker processes, redis + postgres",
           ["system", "steps", "seconds", "steps_per_s", "ms_per_activity", "ratio"], rows, notes=notes, args=args)


if __name__ == "__main__":
    main()
