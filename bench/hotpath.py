"""The services' hot path in-process: what one task costs the client, counted rather than timed.

N runs of the throughput workflows (10-task chain, 1->8->1 fan-out) driven by ``app.services.worker.execute`` and
``master.advance_run`` with a RecordingDispatcher (no broker, no Celery), on a fresh PostgreSQL database. Per
task: SQL statements and commits (SQLAlchemy ``before_cursor_execute`` / ``commit`` events), Python function
calls (``cProfile``: a count, so a busy shared machine does not move it), and CPU seconds of this process and
of its PostgreSQL backends (those move with the machine's load; compare them within one invocation only).

It imports ``app`` and ``bench`` from the current directory, so it measures another checkout when run from
there with this file's path (the code before a change has no copy of this module)::

    .venv/bin/python -m bench.hotpath --runs 40
    (cd ../tideflow-base && .venv/bin/python ../tideflow/bench/hotpath.py --runs 40)
"""

from __future__ import annotations

import cProfile
import os
import pstats
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.getcwd())  # the checkout to measure (see the docstring)

from sqlalchemy import event  # noqa: E402

from app.config import Settings  # noqa: E402
from app.dispatch import RecordingDispatcher  # noqa: E402
from app.runtime import Runtime  # noqa: E402
from app.services import control, master, worker  # noqa: E402
from bench.common import Servers, database, parser, report  # noqa: E402
from bench.throughput import chain10, fan8  # noqa: E402


def _backend_cpu(pids: set[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def measure(url: str, definition: dict[str, Any], runs: int) -> dict[str, Any]:
    rec = RecordingDispatcher()
    rt = Runtime.create(Settings(database_url=url, python_modules="bench"), rec)  # type: ignore[call-arg]
    counts = {"on": 0, "statements": 0, "commits": 0}
    backends: set[int] = set()

    @event.listens_for(rt.db.engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("SELECT pg_backend_pid()")
        backends.add(int(cur.fetchone()[0]))
        cur.close()

    @event.listens_for(rt.db.engine, "before_cursor_execute")
    def _statement(*_args: Any) -> None:
        counts["statements"] += counts["on"]

    @event.listens_for(rt.db.engine, "commit")
    def _commit(*_args: Any) -> None:
        counts["commits"] += counts["on"]

    def drive(n: int) -> int:
        tasks = 0
        for _ in range(n):
            with rt.db.transaction() as s:
                master.start_run(s, rt, definition["name"], actor="bench")
            while rec.executed or rec.advanced:
                while rec.executed:
                    m = rec.executed.pop(0)
                    outcome = worker.execute(rt, m.task_run_id, m.attempt).outcome
                    if outcome != worker.Outcome.SUCCEEDED:
                        raise RuntimeError(f"task run {m.task_run_id}: {outcome}")
                    tasks += 1
                while rec.advanced:
                    master.advance_run(rt, rec.advanced.pop(0), actor="bench")
        return tasks

    try:
        with rt.db.transaction() as s:
            control.register_workflow(s, definition)
        drive(3)  # warm the caches (workflow, run info, compiled statements)
        counts["on"] = 1
        cpu0, server0 = time.process_time(), _backend_cpu(backends)
        tasks = drive(runs)
        cpu, server = time.process_time() - cpu0, _backend_cpu(backends) - server0
        counts["on"] = 0
        profile = cProfile.Profile()
        profile.enable()
        profiled = drive(runs)
        profile.disable()
        calls = pstats.Stats(profile).total_calls  # type: ignore[attr-defined]
    finally:
        rt.close()
    return {"system": f"in-process {definition['name']}", "tasks": tasks,
            "statements": counts["statements"] / tasks, "commits": counts["commits"] / tasks,
            "python_calls": calls / profiled, "cpu_ms": cpu / tasks * 1000, "server_cpu_ms": server / tasks * 1000}


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--runs", type=int, default=40)
    args = p.parse_args()
    servers = Servers.start()
    rows: list[dict[str, Any]] = []
    try:
        for definition in (chain10(), fan8()):
            with database(servers, "postgres") as url:
                rows.append(measure(url, definition, args.runs))
    finally:
        servers.close()
    report(f"Hot path in-process, per task ({args.runs} runs of each workflow; checkout {os.getcwd()})",
           ["system", "tasks", "statements", "commits", "python_calls", "cpu_ms", "server_cpu_ms"], rows,
           notes=servers.notes, args=args)


if __name__ == "__main__":
    main()
