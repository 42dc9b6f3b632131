"""Eager execution (``TIDEFLOW_EAGER_ACTIVITIES``, Temporal's "eager activity execution"), in process with the
stub broker on PostgreSQL and SQLite: a worker finishing a task whose inline advance submits the run's next
task on the same queue claims it in that same transaction and runs it after commit, with no message for it;
a crash after that commit (claimed, body never run) is recovered by the lease lapsing and the reconciler.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from app.client import Tideflow
from app.clock import utcnow
from app.config import load_settings
from app.db import repository as repo
from app.db.schema import TaskRun
from app.records import TaskRecord
from app.runtime import Runtime
from app.services import attempts, worker
from app.services.reconciler import reconcile_once
from app.testing import StubDispatcher
from tests.support import codeflows

ECHO = "tests.support.jobs_unit:echo"


class Eager:
    def __init__(self, db_url: str, **settings: Any):
        self.stub = StubDispatcher()
        settings = {"eager_activities": True, **settings}  # off by default (see app/config.py)
        self.rt = Runtime.create(load_settings(database_url=db_url, workflow_modules="tests.support.codeflows",
                                               **settings), self.stub)
        self.tf = Tideflow(self.rt)

    def executes(self) -> list[str]:
        """The labels of every execute message published so far."""
        return [str(body["label"]) for kind, body in self.stub.published if kind == "execute"]

    def take_execute(self) -> dict[str, Any]:
        kind, body = self.stub.queue.popleft()
        assert kind == "execute", (kind, body)
        return body

    def task(self, run_id: int, name: str) -> TaskRecord:
        with self.rt.db.read() as s:
            found = [t for t in repo.run_tasks(s, run_id) if t.name == name]
        assert len(found) == 1, name
        return found[0]

    def expire_leases(self) -> None:
        with self.rt.db.transaction() as s:
            s.execute(update(TaskRun).where(TaskRun.state == "running", TaskRun.lease_expires_at.is_not(None))
                      .values(lease_expires_at=utcnow() - timedelta(seconds=1)))


@pytest.fixture
def eager(db_url: str) -> Iterator[Eager]:
    codeflows.CALLS.clear()
    codeflows.FAIL.clear()
    h = Eager(db_url)
    yield h
    h.rt.close()


def _claim(h: Eager, body: dict[str, Any]) -> tuple[TaskRecord, str]:
    token = str(uuid.uuid4())
    with h.rt.db.transaction() as s:
        claimed = attempts.claim(s, h.rt, int(body["task_run_id"]), int(body["attempt"]), now=utcnow(), token=token)
    assert claimed is not None
    return claimed, token


def test_the_next_activity_is_claimed_in_the_finishing_transaction_and_a_crash_after_it_is_recovered(
    eager: Eager,
) -> None:
    run_id = eager.tf.start_run("saga", {"order_id": 7})
    charge, token = _claim(eager, eager.take_execute())
    assert charge.name == "charge#0"

    # the worker finishes charge: one transaction records it, advances the run and claims ship_item for itself
    done = worker.finish(eager.rt, charge.id, charge.attempt, token, result={"order": 7, "charged": 10},
                         run_id=run_id, workflow_name="saga", claimed=charge, eager=True)
    assert done.outcome == worker.Outcome.SUCCEEDED and done.then is not None
    nxt = done.then.task
    ship = eager.task(run_id, "ship_item#1")
    assert nxt.id == ship.id
    assert (ship.state, ship.attempt, ship.worker, ship.lease_token) == ("running", 1, eager.rt.worker_id,
                                                                          done.then.token)
    assert ship.lease_expires_at is not None
    with eager.rt.db.read() as s:
        rows = repo.attempts(s, [ship.id])
        events = [(e.from_state, e.to_state) for e in repo.run_events(s, run_id) if e.task_run_id == ship.id]
    assert [(a.attempt, a.worker, a.outcome) for a in rows] == [(1, eager.rt.worker_id, "running")]
    assert events == [(None, "pending"), ("pending", "submitted"), ("submitted", "running")]  # one per transition
    assert eager.executes() == ["saga/charge#0"]  # no message for the eagerly claimed attempt
    assert not eager.stub.queue

    # ... and the worker dies right after that commit: ship_item's body never ran. Nothing else would run it
    # (no message) until its lease lapses; then the reconciler's lost-attempt path retries it.
    assert reconcile_once(eager.rt).lost_attempts == 0
    eager.expire_leases()
    assert reconcile_once(eager.rt).lost_attempts == 1
    eager.stub.drain(eager.rt)
    run = eager.tf.run(run_id)
    assert run["state"] == "succeeded", run
    assert run["result"] == {"receipt": {"order": 7, "charged": 10}, "shipped": "shipped 7"}
    ship = eager.task(run_id, "ship_item#1")
    with eager.rt.db.read() as s:
        outcomes = [(a.attempt, a.outcome) for a in repo.attempts(s, [ship.id])]
    assert outcomes == [(1, "lost"), (2, "succeeded")]
    assert [c for c in codeflows.CALLS if c[0] == "ship_item"] == [("ship_item", 7)]  # ran once, by the retry


def test_a_sequence_runs_in_one_message_and_parallel_steps_take_one_eager_slot(eager: Eager) -> None:
    run_id = eager.tf.start_run("saga", {"order_id": 1})
    result = worker.execute(eager.rt, **_ids(eager.take_execute()))
    assert (result.outcome, result.eager) == (worker.Outcome.SUCCEEDED, 1)  # charge, then ship_item eagerly
    assert eager.tf.run(run_id)["state"] == "succeeded"
    assert eager.executes() == ["saga/charge#0"]

    # adder: one activity, then two started together: one is claimed eagerly, the other is published
    run_id = eager.tf.start_run("adder", {"x": 2, "y": 3})
    result = worker.execute(eager.rt, **_ids(eager.take_execute()))
    assert (result.outcome, result.eager) == (worker.Outcome.SUCCEEDED, 1)
    assert len(eager.stub.queue) == 1
    eager.stub.drain(eager.rt)
    run = eager.tf.run(run_id)
    assert run["state"] == "succeeded" and run["result"] == {"first": 5, "left": 6, "right": 7}, run
    assert len([label for label in eager.executes() if label.startswith("adder/")]) == 2


@pytest.mark.parametrize("settings", [{"eager_activities": False}, {"eager_max_chain": 0},
                                      {"eager_max_seconds": 0}, {"inline_advance": False}],
                         ids=["off", "no-chain", "no-time", "no-inline-advance"])
def test_without_eager_every_step_is_a_message(db_url: str, settings: dict[str, Any]) -> None:
    h = Eager(db_url, **settings)
    try:
        run_id = h.tf.start_run("saga", {"order_id": 2})
        h.stub.drain(h.rt)
        assert h.tf.run(run_id)["state"] == "succeeded"
        assert h.executes() == ["saga/charge#0", "saga/ship_item#1"]
    finally:
        h.rt.close()


def test_the_eager_chain_is_bounded(db_url: str) -> None:
    h = Eager(db_url, eager_max_chain=2)
    try:
        h.tf.register({"name": "chain", "tasks": [
            {"name": f"t{i}", "type": "python", "function": ECHO, "args": {"v": i},
             **({"depends_on": [f"t{i - 1}"]} if i else {})} for i in range(5)]})
        run_id = h.tf.start_run("chain")
        result = worker.execute(h.rt, **_ids(h.take_execute()))
        assert result.eager == 2  # t0 from its message, then t1 and t2 eagerly; t3 is published
        assert [str(b["label"]) for _, b in h.stub.queue] == ["chain/t3"]
        h.stub.drain(h.rt)
        run = h.tf.run(run_id)
        assert run["state"] == "succeeded", run
        assert h.executes() == ["chain/t0", "chain/t3"]  # a DAG chain's next task is eager too
    finally:
        h.rt.close()


def test_the_next_task_on_another_queue_is_published(db_url: str) -> None:
    h = Eager(db_url)
    try:
        h.tf.register({"name": "hop", "tasks": [
            {"name": "a", "type": "python", "function": ECHO, "args": {"v": 1}},
            {"name": "b", "type": "python", "function": ECHO, "args": {"v": 2}, "queue": "elsewhere",
             "depends_on": ["a"]}]})
        run_id = h.tf.start_run("hop")
        assert worker.execute(h.rt, **_ids(h.take_execute())).eager == 0
        h.stub.drain(h.rt)
        assert h.tf.run(run_id)["state"] == "succeeded"
        assert h.executes() == ["hop/a", "hop/b"]
    finally:
        h.rt.close()


def test_an_eager_attempt_keeps_its_fence(eager: Eager) -> None:
    """The eagerly claimed attempt is an ordinary claimed one: cancelling its run takes its lease, and its
    late finish is refused (FENCED)."""
    run_id = eager.tf.start_run("saga", {"order_id": 3})
    charge, token = _claim(eager, eager.take_execute())
    done = worker.finish(eager.rt, charge.id, charge.attempt, token, result={"order": 3, "charged": 10},
                         run_id=run_id, workflow_name="saga", claimed=charge, eager=True)
    assert done.then is not None
    ship = done.then.task
    with eager.rt.db.transaction() as s:  # someone else takes the attempt (as the reconciler or a cancel would)
        assert attempts.stop(s, ship, worker.TaskState.CANCELLED, actor="test", reason="taken", now=utcnow())
    late = worker.finish(eager.rt, ship.id, ship.attempt, done.then.token, result="late", run_id=run_id,
                         workflow_name="saga", claimed=ship, eager=True)
    assert late.outcome == worker.Outcome.FENCED and late.then is None


def _ids(body: dict[str, Any]) -> dict[str, int]:
    return {"task_run_id": int(body["task_run_id"]), "attempt": int(body["attempt"])}
