"""Cron schedules, in process against PostgreSQL and SQLite with a chosen "now" (catch-up under each policy, each
overlap policy, pause/resume, trigger, backfill bookkeeping, code workflows' schedules, a pass killed mid-fire).
With real beat and worker processes: tests/integration/test_schedules_cluster.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from app.client import Tideflow
from app.config import load_settings
from app.db.schema import Schedule, ScheduleFire, WorkflowRun
from app.dispatch import RecordingDispatcher
from app.errors import DefinitionError, InvalidState
from app.runtime import Runtime
from app.services import views
from app.services.scheduler import next_due, schedule_once, spec_of
from tests.support.wait import wait_until

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
T0 = datetime(2026, 6, 1, 7, 30, tzinfo=UTC)  # the scheduler stopped here


def dag(name: str = "nightly", **schedule: Any) -> dict[str, Any]:
    return {"name": name, "params": {"day": "x"},
            "schedule": {"cron": "0 * * * *", **schedule},
            "tasks": [{"name": "t", "type": "shell", "command": "echo {{ schedule.time }} {{ params.day }}"}]}


class Sched:
    def __init__(self, db_url: str, **settings: Any):
        self.rt = Runtime.create(load_settings(database_url=db_url, **settings), RecordingDispatcher())
        self.tf = Tideflow(self.rt)

    def stopped_at(self, name: str, when: datetime) -> None:
        """As if the scheduler had dealt with every fire time up to ``when`` and then stopped."""
        with self.rt.db.transaction() as s:
            row = s.execute(select(Schedule).where(Schedule.name == name)).scalar_one()
            nd = next_due(spec_of(row), name, when)
            s.execute(update(Schedule).where(Schedule.name == name).values(cursor=when, next_due_at=nd))

    def fires(self, name: str) -> list[tuple[int, str, int | None, str]]:
        with self.rt.db.read() as s:
            return [(f.fire_time.hour, f.outcome, f.run_id, f.reason) for f in s.execute(
                select(ScheduleFire).where(ScheduleFire.schedule_name == name).order_by(ScheduleFire.fire_time)
            ).scalars()]

    def runs(self, name: str) -> list[Any]:
        runs = WorkflowRun.__table__.c
        with self.rt.db.read() as s:
            return list(s.execute(select(WorkflowRun.__table__).where(runs.schedule_name == name)
                                  .order_by(runs.schedule_time)))


@pytest.fixture
def sched(db_url: str) -> Iterator[Sched]:
    """PostgreSQL and SQLite (the embedded default deployment)."""
    h = Sched(db_url)
    yield h
    h.rt.close()


@pytest.fixture
def sched_pg(pg_url: str) -> Iterator[Sched]:
    h = Sched(pg_url)
    yield h
    h.rt.close()


def at(hour: int, minute: int = 0, second: int = 30) -> datetime:
    return datetime(2026, 6, 1, hour, minute, second, tzinfo=UTC)


@pytest.mark.parametrize(("catchup", "fired", "skipped"), [
    ("all", [9, 10, 11, 12], [8]),       # window 3.5 h: 08:00 is outside it
    ("latest", [12], [8, 9, 10, 11]),
    ("none", [12], [8, 9, 10, 11]),
])
def test_catch_up_after_a_stopped_scheduler(sched: Sched, catchup: str, fired: list[int],
                                            skipped: list[int]) -> None:
    sched.tf.register(dag(catchup=catchup, catchup_window=3.5 * 3600))
    sched.stopped_at("nightly", T0)
    report = schedule_once(sched.rt, at(12))
    fires = sched.fires("nightly")
    assert [h for h, o, _, _ in fires if o == "started"] == fired
    assert [h for h, o, _, _ in fires if o == "skipped"] == skipped
    assert all(reason for _, o, _, reason in fires if o == "skipped")  # each says why
    assert report.started == len(fired)
    runs = sched.runs("nightly")
    assert [r.schedule_time.hour for r in runs if r.schedule_time] == fired
    assert all(r.key == f"schedule:nightly:{r.schedule_time.isoformat()}" for r in runs if r.schedule_time)
    # a second pass at the same instant, and a later one before the next fire time, change nothing
    schedule_once(sched.rt, at(12))
    schedule_once(sched.rt, at(12, 59))
    assert sched.fires("nightly") == fires


def test_the_run_knows_its_logical_time(sched: Sched) -> None:
    sched.tf.register(dag(catchup="all"))
    sched.stopped_at("nightly", at(9, 0, 0))
    schedule_once(sched.rt, at(11))
    run = sched.runs("nightly")[0]
    from app.templating import render

    info = sched.rt.run_info
    with sched.rt.db.read() as s:
        scope = info(s, run.id).schedule
    assert scope == {"time": "2026-06-01T10:00:00+00:00", "name": "nightly"}
    assert render("{{ schedule.time }}", {"schedule": scope}) == "2026-06-01T10:00:00+00:00"
    history = sched.tf.read(__import__("app.services.views", fromlist=["run_history"]).run_history, run.id)
    assert any("scheduled by 'nightly' for 2026-06-01T10:00:00+00:00" in e["reason"] for e in history)


def _cancel(sched: Sched, run_id: int) -> None:
    sched.tf.cancel(run_id, actor="test")


def test_overlap_allow_starts_alongside(sched: Sched) -> None:
    sched.tf.register(dag(overlap="allow"))
    sched.stopped_at("nightly", at(9, 0, 0))
    schedule_once(sched.rt, at(10))
    schedule_once(sched.rt, at(11))
    assert [(h, o) for h, o, _, _ in sched.fires("nightly")] == [(10, "started"), (11, "started")]
    assert [r.state for r in sched.runs("nightly")] == ["running", "running"]


def test_overlap_skip_records_why(sched: Sched) -> None:
    sched.tf.register(dag(overlap="skip"))
    sched.stopped_at("nightly", at(9, 0, 0))
    schedule_once(sched.rt, at(10))
    first = sched.runs("nightly")[0].id
    schedule_once(sched.rt, at(11))
    fires = sched.fires("nightly")
    assert [(h, o) for h, o, _, _ in fires] == [(10, "started"), (11, "skipped")]
    assert fires[1][3] == f"overlap: skip (run {first} is still running)"
    _cancel(sched, first)
    schedule_once(sched.rt, at(12))
    assert [o for _, o, _, _ in sched.fires("nightly")] == ["started", "skipped", "started"]


def test_overlap_buffer_one_keeps_one_and_starts_it_when_the_run_ends(sched: Sched) -> None:
    sched.tf.register(dag(overlap="buffer_one"))
    sched.stopped_at("nightly", at(9, 0, 0))
    schedule_once(sched.rt, at(10))
    first = sched.runs("nightly")[0].id
    schedule_once(sched.rt, at(11))
    schedule_once(sched.rt, at(12))
    fires = sched.fires("nightly")
    assert [(h, o) for h, o, _, _ in fires] == [(10, "started"), (11, "buffered"), (12, "skipped")]
    assert "already buffered" in fires[2][3]
    schedule_once(sched.rt, at(12, 10))
    assert len(sched.runs("nightly")) == 1  # still running: the buffered one waits
    _cancel(sched, first)
    schedule_once(sched.rt, at(12, 20))
    fires = sched.fires("nightly")
    assert [(h, o) for h, o, _, _ in fires] == [(10, "started"), (11, "started"), (12, "skipped")]
    runs = sched.runs("nightly")
    assert [r.schedule_time.hour for r in runs if r.schedule_time] == [10, 11] and runs[1].state == "running"


def test_overlap_cancel_running_cancels_then_starts(sched: Sched) -> None:
    sched.tf.register(dag(overlap="cancel_running"))
    sched.stopped_at("nightly", at(9, 0, 0))
    schedule_once(sched.rt, at(10))
    schedule_once(sched.rt, at(11))
    runs = sched.runs("nightly")
    assert [r.state for r in runs] == ["cancelled", "running"]
    history = sched.tf.read(__import__("app.services.views", fromlist=["run_history"]).run_history, runs[0].id)
    assert any("overlap: cancel_running" in e["reason"] for e in history)


def test_pause_resume_and_reregistration_keeps_paused(sched: Sched) -> None:
    sched.tf.register(dag())
    sched.tf.pause_schedule("nightly", actor="test")
    with pytest.raises(InvalidState):
        sched.tf.pause_schedule("nightly")
    sched.tf.register(dag(jitter=5))  # a new version of the definition: still paused
    [row] = sched.tf.schedules("nightly")
    assert row["paused"] is True and row["next"] == [] and row["jitter"] == 5
    schedule_once(sched.rt, datetime.now(UTC) + timedelta(hours=3))
    assert sched.fires("nightly") == []
    sched.tf.resume_schedule("nightly")
    [row] = sched.tf.schedules("nightly")
    assert row["paused"] is False and len(row["next"]) == 3 and row["description"] == "Every hour"


def test_trigger_starts_a_run_now(sched: Sched) -> None:
    sched.tf.register(dag(overlap="skip"))
    a = sched.tf.trigger_schedule("nightly", actor="test")
    b = sched.tf.trigger_schedule("nightly", actor="test")  # manual: overlap does not apply
    assert a != b and {r.id for r in sched.runs("nightly")} == {a, b}


def test_a_bad_schedule_stores_nothing(sched: Sched) -> None:
    with pytest.raises(DefinitionError, match="unknown timezone 'Nowhere/Land'"):
        sched.tf.register(dag(timezone="Nowhere/Land"))
    assert sched.tf.schedules("nightly") == []
    stored = [w for w in sched.tf.read(views.list_workflows) if w["version"] is not None]
    assert stored == []  # (code workflows other tests imported are listed unstored, version None)


def test_backfill_bookkeeping_and_idempotent_rerun(sched: Sched) -> None:
    sched.tf.register(dag(overlap="skip"))
    start, end = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, 23, tzinfo=UTC)
    dry = sched.tf.backfill("nightly", start, end, parallel=4, dry_run=True)
    assert len(dry["new"]) == 48 and dry["backfill"] is None and sched.fires("nightly") == []
    first = sched.tf.backfill("nightly", start, end, parallel=4)
    assert first["created"] and len(first["new"]) == 48
    schedule_once(sched.rt, datetime.now(UTC))
    runs = sched.runs("nightly")
    assert [r.schedule_time for r in runs] == [start + timedelta(hours=h) for h in range(4)]  # oldest first, 4
    again = sched.tf.backfill("nightly", start, end, parallel=4)
    assert again["backfill"] == first["backfill"] and again["new"] == [] and not again["created"]
    schedule_once(sched.rt, datetime.now(UTC))
    assert len(sched.runs("nightly")) == 4  # none of them ended: no free slot


def test_code_workflow_schedule(pg_url: str) -> None:
    h = Sched(pg_url, workflow_modules="tests.support.scheduled_flows")
    try:
        [row] = h.tf.schedules("scheduled_code")
        assert (row["name"], row["workflow"], row["params"]) == ("hourly-code", "scheduled_code", {"label": "tick"})
        h.stopped_at("hourly-code", at(9, 0, 0))
        schedule_once(h.rt, at(10))
        [run] = h.runs("hourly-code")
        assert run.kind == "code" and run.schedule_time == datetime(2026, 6, 1, 10, tzinfo=UTC)
    finally:
        h.rt.close()


KILLED_PASS = textwrap.dedent("""
    import sys, time
    from datetime import datetime
    from app.config import load_settings
    from app.dispatch import RecordingDispatcher
    from app.runtime import Runtime
    from app.services import scheduler

    original = scheduler.start_fire
    def slow(*args, **kwargs):
        run_id = original(*args, **kwargs)
        print("FIRED", run_id, flush=True)
        time.sleep(120)  # killed here: the run is inserted, the transaction not committed
        return run_id
    scheduler.start_fire = slow
    rt = Runtime.create(load_settings(database_url=sys.argv[1]), RecordingDispatcher())
    scheduler.schedule_once(rt, datetime.fromisoformat(sys.argv[2]))
""")


def test_a_pass_killed_mid_fire_leaves_nothing_and_the_next_pass_fires_once(sched_pg: Sched, pg_url: str) -> None:
    """PostgreSQL: the second pass skips the schedule row the first one holds (``SKIP LOCKED``); on SQLite it would
    wait for the database's write lock instead."""
    sched = sched_pg
    sched.tf.register(dag(catchup="all"))
    sched.stopped_at("nightly", at(9, 0, 0))
    proc = subprocess.Popen([sys.executable, "-c", KILLED_PASS, pg_url, at(11).isoformat()], cwd=REPO,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("FIRED"), line
        # while the killed pass holds the schedule's row, another pass skips it (no double fire, no waiting)
        assert schedule_once(sched.rt, at(11)).started == 0
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    wait_until(lambda: not sched.runs("nightly") and sched.fires("nightly") == [], timeout=10,
               message="the killed pass left rows")
    assert schedule_once(sched.rt, at(11)).started == 2
    assert [(h, o) for h, o, _, _ in sched.fires("nightly")] == [(10, "started"), (11, "started")]
    assert len(sched.runs("nightly")) == 2


def test_rest_routes_viewers_read_admins_control(pg_url: str) -> None:
    from app.services.tokens import add_token
    from tests.support.api import AUTH, make_client

    client, tf = make_client(pg_url)
    try:
        assert client.post("/api/workflows", json=dag(overlap="skip"), headers=AUTH).status_code == 201
        with tf.runtime.db.transaction() as s:
            viewer = {"Authorization": f"Bearer {add_token(s, 'vera', 'viewer')}"}
            operator = {"Authorization": f"Bearer {add_token(s, 'otto', 'operator')}"}
        [row] = client.get("/api/schedules?workflow=nightly", headers=viewer).json()
        assert (row["name"], row["cron"], row["description"], len(row["next"])) == (
            "nightly", "0 * * * *", "Every hour", 3)
        for path in ("pause", "resume", "trigger", "backfill"):
            resp = client.post(f"/api/schedules/nightly/{path}", headers=operator,
                               json={"from": "2026-01-01T00:00:00Z", "to": "2026-01-01T03:00:00Z"})
            assert resp.status_code == 403 and resp.json()["message"].endswith("needs admin"), resp.text
        paused = client.post("/api/schedules/nightly/pause", headers=AUTH).json()
        assert paused["paused"] is True and paused["paused_by"] == "env" and paused["paused_at"]
        resp = client.post("/api/schedules/nightly/pause", headers=AUTH)
        assert resp.status_code == 409 and "already paused" in resp.json()["message"]
        assert client.post("/api/schedules/nightly/resume", headers=AUTH).json()["paused"] is False
        trig = client.post("/api/schedules/nightly/trigger", headers=AUTH)
        assert trig.status_code == 201
        run = client.get(f"/api/runs/{trig.json()['run_id']}", headers=viewer).json()
        assert run["schedule"] == "nightly" and run["schedule_time"]
        history = client.get(f"/api/runs/{run['id']}/history", headers=viewer).json()
        assert any(e["actor"] == "env" and "scheduled by 'nightly'" in e["reason"] for e in history)
        body = {"from": "2026-01-01T00:00:00Z", "to": "2026-01-01T03:00:00Z", "parallel": 2}
        first = client.post("/api/schedules/nightly/backfill", headers=AUTH, json=body).json()
        assert len(first["new"]) == 4 and first["created"] is True
        again = client.post("/api/schedules/nightly/backfill", headers=AUTH, json=body).json()
        assert again["new"] == [] and again["backfill"] == first["backfill"]
        bad = client.post("/api/schedules/nightly/backfill", headers=AUTH,
                          json={**body, "to": "2025-01-01T00:00:00Z"})
        assert bad.status_code == 422 and "before its start" in bad.json()["message"]
        detail = client.get("/api/schedules/nightly", headers=viewer).json()
        assert detail["backfills"][0]["from"] == "2026-01-01T00:00:00+00:00" and detail["backfills"][0]["pending"] == 4
        assert client.get("/api/schedules/nope", headers=viewer).status_code == 404
    finally:
        tf.close()
