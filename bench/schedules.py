"""The cron scheduler's time per fire (``app.services.scheduler.schedule_once``) with 1,000 schedules, against one
schedule in the same invocation.

In-process on a fresh PostgreSQL database (a RecordingDispatcher: no broker; each fire starts a one-task DAG run and
submits its task, as in production), with a chosen "now" so a pass has exactly the fire times wanted due:

- ``1 schedule``: the baseline: passes that each fire one fire time of the only schedule;
- ``1,000 schedules, 1 due``: the same, with 999 other schedules not due (what an hourly pass mostly sees);
- ``1,000 schedules, all due``: one pass that fires one fire time of each of them (e.g. all at midnight);
- ``1,000 schedules, none due``: an idle pass (per pass, not per fire).

    .venv/bin/python -m bench.schedules [--passes 30] [--schedules 1000] [--repeat 3]
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import update

from app.config import Settings
from app.db.schema import Schedule
from app.dispatch import RecordingDispatcher
from app.runtime import Runtime
from app.services import control
from app.services.scheduler import schedule_once
from bench.common import Servers, database, median, parser, report

T0 = datetime(2026, 1, 1, tzinfo=UTC)
FAR = datetime(2030, 1, 1, tzinfo=UTC)


def _definition(n: int) -> dict[str, Any]:
    return {"name": "bench-schedules", "schedule": [
        {"cron": "0 * * * *", "name": f"s{i}", "catchup": "all", "catchup_window": 366 * 86400} for i in range(n)],
        "tasks": [{"name": "t", "type": "shell", "command": "true"}]}


def _runtime(url: str, n: int) -> Runtime:
    rt = Runtime.create(Settings(database_url=url), RecordingDispatcher())  # type: ignore[call-arg]
    with rt.db.transaction() as s:
        control.register_workflow(s, _definition(n))
    return rt


def _only_due(rt: Runtime, names: list[str] | None, cursor: datetime) -> None:
    """Schedules ``names`` (None: all) have dealt with everything up to ``cursor``; the others are not due."""
    with rt.db.transaction() as s:
        s.execute(update(Schedule).values(cursor=cursor, next_due_at=FAR))
        q = update(Schedule).values(cursor=cursor, next_due_at=cursor + timedelta(hours=1))
        s.execute(q if names is None else q.where(Schedule.name.in_(names)))


def one_due(url: str, n: int, passes: int) -> float:
    """ms per fire over ``passes`` passes that each fire one fire time of schedule s0 (n schedules in all)."""
    rt = _runtime(url, n)
    try:
        _only_due(rt, ["s0"], T0)
        schedule_once(rt, T0 + timedelta(hours=1, seconds=1))  # warm up (caches, statements)
        times = []
        for i in range(2, passes + 2):
            t = time.perf_counter()
            started = schedule_once(rt, T0 + timedelta(hours=i, seconds=1)).started
            times.append((time.perf_counter() - t) * 1000)
            assert started == 1, started
        return median(times)
    finally:
        rt.close()


def all_due(url: str, n: int) -> tuple[float, float]:
    """(ms per fire of one pass firing one fire time of each of the n schedules, ms of an idle pass after it)."""
    rt = _runtime(url, n)
    try:
        _only_due(rt, ["s0"], T0)
        schedule_once(rt, T0 + timedelta(hours=1, seconds=1))  # warm up
        _only_due(rt, None, T0 + timedelta(hours=1))
        t = time.perf_counter()
        started = schedule_once(rt, T0 + timedelta(hours=2, seconds=1)).started
        per_fire = (time.perf_counter() - t) * 1000 / started
        assert started == n, started
        idle = []
        for _ in range(10):
            t = time.perf_counter()
            schedule_once(rt, T0 + timedelta(hours=2, seconds=2))
            idle.append((time.perf_counter() - t) * 1000)
        return per_fire, median(idle)
    finally:
        rt.close()


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--passes", type=int, default=30)
    p.add_argument("--schedules", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    servers = Servers.start()
    rows: list[dict[str, Any]] = []
    n = args.schedules
    try:
        for round_ in range(1, args.repeat + 1):
            with database(servers, "postgres") as url:
                base = one_due(url, 1, args.passes)
            with database(servers, "postgres") as url:
                few = one_due(url, n, args.passes)
            with database(servers, "postgres") as url:
                every, idle = all_due(url, n)
            rows += [
                {"round": round_, "case": "1 schedule, 1 due per pass (baseline)", "ms_per_fire": base, "ratio": 1.0},
                {"round": round_, "case": f"{n:,} schedules, 1 due per pass", "ms_per_fire": few,
                 "ratio": few / base},
                {"round": round_, "case": f"{n:,} schedules, all due in one pass", "ms_per_fire": every,
                 "ratio": every / base},
                {"round": round_, "case": f"{n:,} schedules, none due (ms per idle pass)", "ms_per_fire": idle,
                 "ratio": idle / base},
            ]
    finally:
        servers.close()
    report(f"Scheduler time per fire, {n:,} schedules vs 1 (in-process, PostgreSQL; median of {args.passes} passes)",
           ["round", "case", "ms_per_fire", "ratio"], rows, notes=servers.notes, args=args)


if __name__ == "__main__":
    main()
