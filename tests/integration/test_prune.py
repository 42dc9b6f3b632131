"""``tideflow db prune --older-than``: finished runs older than a cutoff are deleted with everything recorded about
them (their child runs, tasks, attempts, events, signals); nothing else is touched. In process (the stub broker), on
PostgreSQL and SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, insert, select, update

from app.cli import cli
from app.client import Tideflow
from app.clock import utcnow
from app.config import load_settings
from app.db.schema import Backfill, Event, ScheduleFire, Signal, TaskAttempt, TaskRun, WorkflowRun
from app.runtime import Runtime
from app.services.control import prune_history
from app.testing import StubDispatcher

ECHO = "tests.support.jobs_unit:echo"
DAY = timedelta(days=1)


class H:
    def __init__(self, db_url: str) -> None:
        self.stub = StubDispatcher()
        self.rt = Runtime.create(load_settings(database_url=db_url), self.stub)
        self.tf = Tideflow(self.rt)
        self.tf.register({"name": "child", "tasks": [{"name": "c", "type": "python", "function": ECHO,
                                                      "args": {"v": 1}}]})
        self.tf.register({"name": "parent", "tasks": [
            {"name": "a", "type": "python", "function": ECHO, "args": {"v": 1}},
            {"name": "sub", "type": "subworkflow", "workflow": "child", "depends_on": ["a"]}]})
        self.tf.register({"name": "flat", "tasks": [
            {"name": "a", "type": "python", "function": ECHO, "args": {"v": 1}},
            {"name": "b", "type": "python", "function": ECHO, "args": {"v": 2}, "depends_on": ["a"]}]})

    def finished(self, workflow: str) -> int:
        run_id = self.tf.start_run(workflow)
        self.stub.drain(self.rt)
        assert self.tf.run(run_id)["state"] == "succeeded"
        return run_id

    def age(self, run_ids: list[int], by: timedelta) -> None:
        """As if the runs (and their child runs) had finished ``by`` ago."""
        with self.rt.db.transaction() as s:
            s.execute(update(WorkflowRun).where(WorkflowRun.finished_at.is_not(None))
                      .where(WorkflowRun.id.in_(run_ids) | WorkflowRun.parent_task_run_id.in_(
                          select(TaskRun.id).where(TaskRun.run_id.in_(run_ids))))
                      .values(finished_at=utcnow() - by))

    def children(self, run_id: int) -> list[int]:
        with self.rt.db.read() as s:
            return list(s.execute(select(TaskRun.child_run_id).where(TaskRun.run_id == run_id,
                                                                     TaskRun.child_run_id.is_not(None))).scalars())

    def rows(self, run_ids: list[int]) -> dict[str, int]:
        """Rows about these runs, per table."""
        with self.rt.db.read() as s:
            tasks = select(TaskRun.id).where(TaskRun.run_id.in_(run_ids))

            def n(q: Any) -> int:
                return int(s.execute(select(func.count()).select_from(q.subquery())).scalar_one())

            return {"runs": n(select(WorkflowRun.id).where(WorkflowRun.id.in_(run_ids))),
                    "tasks": n(tasks),
                    "attempts": n(select(TaskAttempt.id).where(TaskAttempt.task_run_id.in_(tasks))),
                    "events": n(select(Event.id).where(Event.run_id.in_(run_ids))),
                    "signals": n(select(Signal.id).where(Signal.run_id.in_(run_ids)))}

    def close(self) -> None:
        self.rt.close()


@pytest.fixture
def h(db_url: str) -> Iterator[H]:
    harness = H(db_url)
    try:
        yield harness
    finally:
        harness.close()


def test_old_finished_runs_go_with_their_child_runs_and_history_and_nothing_else(h: H) -> None:
    old_parent, old_flat = h.finished("parent"), h.finished("flat")
    old_child = h.children(old_parent)
    assert len(old_child) == 1
    recent = h.finished("flat")
    running = h.tf.start_run("flat")  # never delivered: stays running, however old
    h.age([old_parent, old_flat, running], 2 * DAY)
    h.age([recent], timedelta(hours=2))
    with h.rt.db.transaction() as s:
        s.execute(update(WorkflowRun).where(WorkflowRun.id == running).values(created_at=utcnow() - 3 * DAY))
        s.execute(insert(Signal).values(run_id=old_flat, name="s", actor="t", created_at=utcnow()))
    gone = [old_parent, old_flat, *old_child]
    before = h.rows(gone)
    assert before["runs"] == 3 and before["tasks"] == 5 and before["attempts"] == 4 and before["signals"] == 1
    kept_before = h.rows([recent, running])

    dry = prune_history(h.rt, DAY, dry_run=True)
    assert (dry.runs, dry.tasks) == (3, 5)
    assert h.rows(gone) == before  # a dry run deletes nothing

    report = prune_history(h.rt, DAY, batch_size=1)  # one top-level run per transaction
    assert (report.runs, report.tasks, report.attempts, report.signals) == (3, 5, 4, 1)
    assert report.events == before["events"] > 0
    assert h.rows(gone) == {"runs": 0, "tasks": 0, "attempts": 0, "events": 0, "signals": 0}
    assert h.rows([recent, running]) == kept_before
    assert prune_history(h.rt, DAY).runs == 0  # nothing left to prune
    assert h.tf.run(recent)["state"] == "succeeded"


def test_a_finished_run_whose_child_run_is_not_finished_stays(h: H) -> None:
    parent = h.finished("parent")
    (child,) = h.children(parent)
    h.age([parent], 2 * DAY)
    with h.rt.db.transaction() as s:  # as if the child had been resumed or rerun on its own
        s.execute(update(WorkflowRun).where(WorkflowRun.id == child).values(state="paused"))
    report = prune_history(h.rt, DAY)
    assert (report.runs, report.kept_live_trees) == (0, 1)
    assert h.rows([parent, child])["runs"] == 2


def test_a_schedule_fire_keeps_its_row_and_a_running_backfills_runs_stay(h: H) -> None:
    fired, backfilled = h.finished("flat"), h.finished("flat")
    h.age([fired, backfilled], 2 * DAY)
    now = utcnow()
    with h.rt.db.transaction() as s:
        bf = s.execute(insert(Backfill).values(schedule_name="sch", range_start=now - 3 * DAY, range_end=now,
                                               parallel=1, state="running", actor="t", created_at=now,
                                               updated_at=now).returning(Backfill.id)).scalar_one()
        for i, (run_id, backfill) in enumerate(((fired, None), (backfilled, bf))):
            s.execute(insert(ScheduleFire).values(schedule_name="sch", fire_time=now - timedelta(days=3, hours=i),
                                                  outcome="started", run_id=run_id, backfill_id=backfill,
                                                  reason="", actor="t", created_at=now, updated_at=now))
    assert prune_history(h.rt, DAY).runs == 1
    with h.rt.db.read() as s:
        fires = dict(s.execute(select(ScheduleFire.backfill_id, ScheduleFire.run_id)).all())
    assert fires == {None: None, bf: backfilled}  # the fire row stays (a fire time starts one run at most)
    with h.rt.db.transaction() as s:
        s.execute(update(Backfill).values(state="done"))
    assert prune_history(h.rt, DAY).runs == 1
    assert h.rows([backfilled])["runs"] == 0


def test_a_cutoff_under_an_hour_is_refused(h: H) -> None:
    with pytest.raises(ValueError, match="at least"):
        prune_history(h.rt, timedelta(minutes=59))


def test_the_command(h: H, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    old, recent = h.finished("flat"), h.finished("flat")
    h.age([old], 10 * DAY)
    monkeypatch.setenv("TIDEFLOW_DATABASE_URL", db_url)
    runner = CliRunner()
    dry = runner.invoke(cli, ["db", "prune", "--older-than", "7d", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would delete 1 run(s) and 2 task(s)" in dry.output
    done = runner.invoke(cli, ["db", "prune", "--older-than", "7d"])
    assert done.exit_code == 0, done.output
    assert "deleted 1 run(s), 2 task(s), 2 attempt(s)" in done.output
    assert h.rows([old])["runs"] == 0 and h.rows([recent])["runs"] == 1
    bad = runner.invoke(cli, ["db", "prune", "--older-than", "30m"])
    assert bad.exit_code != 0 and "at least" in bad.output
