"""DBOS baseline for code workflows: N workflows of 10 no-op ``@DBOS.step`` calls, on the same local PostgreSQL
(a fresh database, dropped afterwards), two ways:

- ``queue``: the workflows enqueued (``DBOSClient.enqueue``) on a DBOS queue served by ``--processes`` DBOS
  worker processes (each ``DBOS.launch()`` with its own ``executor_id``), per-process ``worker_concurrency``
  tried at each value of ``--worker-concurrency`` (the best is reported as such); steps/s from the first enqueue
  to the last workflow seen ``SUCCESS`` in DBOS's ``workflow_status`` table.
- ``sequential``: DBOS's in-process mode: one process calls the workflow function directly, one after another.

Needs the ``dbos`` package, which is not a Tideflow dependency: ``.venv/bin/pip install -e '.[bench]'`` (or
``pip install dbos``). ``bench.code_throughput`` runs this in the same invocation as Tideflow's code workflows.

    .venv/bin/python -m bench.dbos_baseline [--runs 200] [--steps 10] [--processes 2]
                                            [--worker-concurrency 4,16] [--polling 0.05]

API as documented for dbos-transact-py 3.x (docs.dbos.dev/python/reference: ``DBOS(config=...)``,
``@DBOS.workflow()``, ``@DBOS.step()``, ``DBOS.register_queue(name, worker_concurrency=...,
polling_interval_sec=...)``, ``DBOSClient(system_database_url=...).enqueue({"queue_name", "workflow_name"})``).
A queue's worker thread polls the queue every ``polling_interval_sec`` (default 1 s) and dequeues at most
``worker_concurrency`` minus what it runs: the poll interval is lowered (``--polling``) so the default 1 s poll
does not cap DBOS's figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

APP_NAME = "tideflow-bench"
APP_VERSION = "bench"
INSTALL_HINT = "the DBOS baseline needs the dbos package: .venv/bin/pip install -e '.[bench]' (or pip install dbos)"


def available() -> bool:
    try:
        import dbos  # noqa: F401
    except ImportError:
        return False
    return True


def _plain_url(url: str) -> str:
    """DBOS takes a ``postgresql://`` URL (it picks its own driver)."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


# -- the DBOS side (runs in the worker / sequential subprocesses) --------------------------------------------------


def _launch(db_url: str, executor_id: str) -> Any:
    from dbos import DBOS

    DBOS(config={"name": APP_NAME, "system_database_url": _plain_url(db_url), "executor_id": executor_id,
                 "application_version": APP_VERSION, "log_level": "WARNING"})

    @DBOS.step()
    def noop_step(i: int) -> int:
        return i

    @DBOS.workflow(name="steps")
    def steps(n: int) -> int:
        for i in range(n):
            noop_step(i)
        return n

    DBOS.launch()
    return steps


def _worker(args: argparse.Namespace) -> None:
    from dbos import DBOS

    _launch(args.db, args.executor_id)
    DBOS.register_queue(args.queue, worker_concurrency=args.wc, polling_interval_sec=args.polling)
    print("ready", flush=True)
    sys.stdin.read()  # the parent closes our stdin to stop us
    DBOS.destroy()


def _sequential(args: argparse.Namespace) -> None:
    from dbos import DBOS

    steps = _launch(args.db, "seq")
    for _ in range(5):
        steps(args.steps)  # warm-up
    t0 = time.monotonic()
    for _ in range(args.runs):
        steps(args.steps)
    elapsed = time.monotonic() - t0
    DBOS.destroy()
    print(json.dumps({"seconds": elapsed}), flush=True)


# -- the parent ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def dbos_database(pg_maintenance: str) -> Iterator[str]:
    from tests.support.postgres import create_database, drop_database

    name = f"bench_dbos_{uuid.uuid4().hex[:8]}"
    url = create_database(pg_maintenance, name)
    try:
        yield url
    finally:
        drop_database(pg_maintenance, name)


def _spawn(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "bench.dbos_baseline", *argv], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)


def _succeeded(db_url: str, queue: str) -> int:
    import psycopg

    from tests.support.postgres import psycopg_conninfo

    with psycopg.connect(psycopg_conninfo(db_url)) as conn:
        row = conn.execute("SELECT count(*) FROM dbos.workflow_status WHERE queue_name = %s AND status = 'SUCCESS'",
                           (queue,)).fetchone()
    return int(row[0]) if row else 0


def run_queue(pg_maintenance: str, *, runs: int, steps: int, processes: int, worker_concurrency: int,
              polling: float) -> dict[str, Any]:
    """N workflows enqueued on a DBOS queue served by ``processes`` DBOS processes; steps/s."""
    from dbos import DBOSClient

    from tests.support.wait import poll

    queue = f"bench_{uuid.uuid4().hex[:8]}"
    with dbos_database(pg_maintenance) as db_url:
        workers: list[subprocess.Popen[str]] = []
        try:
            for i in range(processes):  # one at a time: the first launch creates DBOS's schema
                w = _spawn("--worker", "--db", db_url, "--executor-id", f"w{i}", "--queue", queue,
                           "--wc", str(worker_concurrency), "--polling", str(polling))
                workers.append(w)
                line = w.stdout.readline() if w.stdout else ""
                if line.strip() != "ready":
                    raise RuntimeError(f"DBOS worker {i} did not start (exit {w.poll()})")
            client = DBOSClient(system_database_url=_plain_url(db_url), application_name=APP_NAME)
            try:
                options: Any = {"queue_name": queue, "workflow_name": "steps", "app_version": APP_VERSION}
                warm = 10
                for _ in range(warm):
                    client.enqueue(options, steps)
                if poll(lambda: _succeeded(db_url, queue) >= warm or None, 60, 0.02) is None:
                    raise TimeoutError("DBOS warm-up workflows did not finish")
                t0 = time.monotonic()
                for _ in range(runs):
                    client.enqueue(options, steps)
                enqueued = time.monotonic()
                t1 = poll(lambda: time.monotonic() if _succeeded(db_url, queue) >= warm + runs else None,
                          60 + runs * steps * 0.05, 0.02)
                if t1 is None:
                    raise TimeoutError(f"DBOS: {_succeeded(db_url, queue) - warm}/{runs} workflows done")
            finally:
                client.destroy()
        finally:
            for w in workers:
                if w.stdin:
                    w.stdin.close()
            for w in workers:
                try:
                    w.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    w.kill()
                    w.wait()
    seconds = t1 - t0
    return {"steps": runs * steps, "seconds": seconds, "start_seconds": enqueued - t0,
            "steps_per_s": runs * steps / seconds}


def run_sequential(pg_maintenance: str, *, runs: int, steps: int) -> dict[str, Any]:
    """DBOS's in-process mode: one process runs the workflows one after another; steps/s."""
    with dbos_database(pg_maintenance) as db_url:
        proc = _spawn("--sequential", "--db", db_url, "--runs", str(runs), "--steps", str(steps))
        out, _ = proc.communicate(timeout=60 + runs * steps * 0.05)
        if proc.returncode != 0:
            raise RuntimeError(f"DBOS sequential run failed (exit {proc.returncode})")
        seconds = float(json.loads(out.strip().splitlines()[-1])["seconds"])
    return {"steps": runs * steps, "seconds": seconds, "steps_per_s": runs * steps / seconds}


def measure(pg_maintenance: str, *, runs: int, steps: int, processes: int, concurrencies: list[int],
            polling: float, sequential_runs: int) -> list[dict[str, Any]]:
    """Rows: DBOS queue at each worker concurrency (the best marked), then DBOS in-process sequential."""
    rows: list[dict[str, Any]] = []
    for wc in concurrencies:
        res = run_queue(pg_maintenance, runs=runs, steps=steps, processes=processes, worker_concurrency=wc,
                        polling=polling)
        rows.append({"system": f"DBOS queue, {processes} processes x worker_concurrency {wc}", "kind": "dbos-queue",
                     "worker_concurrency": wc, **res})
    best = max((r for r in rows if r["kind"] == "dbos-queue"), key=lambda r: r["steps_per_s"])
    best["system"] += " (best)"
    best["best"] = True
    seq = run_sequential(pg_maintenance, runs=sequential_runs, steps=steps)
    rows.append({"system": "DBOS in-process sequential", "kind": "dbos-sequential", **seq})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--sequential", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--db", help=argparse.SUPPRESS)
    p.add_argument("--executor-id", default="w0", help=argparse.SUPPRESS)
    p.add_argument("--queue", help=argparse.SUPPRESS)
    p.add_argument("--wc", type=int, default=4, help=argparse.SUPPRESS)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--sequential-runs", type=int, default=100)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--worker-concurrency", default="4,16", help="comma-separated values to try")
    p.add_argument("--polling", type=float, default=0.05, help="the queue's polling_interval_sec")
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    args = p.parse_args()
    if args.worker:
        return _worker(args)
    if args.sequential:
        return _sequential(args)
    if not available():
        sys.exit(INSTALL_HINT)
    from bench.common import Servers, report

    servers = Servers.start()
    try:
        rows = measure(servers.pg_maintenance, runs=args.runs, steps=args.steps, processes=args.processes,
                       concurrencies=[int(x) for x in args.worker_concurrency.split(",")], polling=args.polling,
                       sequential_runs=args.sequential_runs)
    finally:
        servers.close()
    report(f"DBOS: {args.runs} workflows of {args.steps} steps", ["system", "steps", "seconds", "steps_per_s"],
           rows, notes=servers.notes, args=args)


if __name__ == "__main__":
    main()
