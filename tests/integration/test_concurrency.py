"""Races decided by the database, on a real PostgreSQL: many threads, no Celery (the publishes are
recorded), so each race can be repeated many times quickly."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from functools import partial

import pytest

from app.clock import utcnow
from app.config import load_settings
from app.db import repository as repo
from app.dispatch import RecordingDispatcher
from app.runtime import Runtime
from app.services import master, worker
from app.services.control import register_workflow
from app.services.reconciler import reconcile_once
from tests.support.wait import wait_until


@pytest.fixture
def rt(pg_url):
    runtime = Runtime.create(load_settings(database_url=pg_url, orphan_timeout_seconds=0.01,
                                           reconcile_batch_size=1000), RecordingDispatcher())
    yield runtime
    runtime.close()


def together(*fns: Callable[[], object]) -> list[object]:
    """Run the callables in threads released at the same instant."""
    barrier = threading.Barrier(len(fns))
    results: list[object] = [None] * len(fns)
    errors: list[BaseException] = []

    def go(i: int, fn: Callable[[], object]) -> None:
        barrier.wait()
        try:
            results[i] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return results


def test_two_branches_finishing_at_once_submit_the_join_exactly_once(rt):
    d: RecordingDispatcher = rt.dispatcher  # type: ignore[assignment]
    with rt.db.transaction() as s:
        register_workflow(s, {"name": "v", "tasks": [
            {"name": "a", "type": "python", "function": "tests.support.jobs:record"},
            {"name": "b", "type": "python", "function": "tests.support.jobs:record"},
            {"name": "join", "type": "python", "function": "tests.support.jobs:record", "depends_on": ["a", "b"]},
        ]})
    for _ in range(60):
        d.executed.clear()
        d.advanced.clear()
        with rt.db.transaction() as s:
            run_id = master.start_run(s, rt, "v")
        a, b = d.executed
        d.executed.clear()
        # both branches run and finish at the same instant, then both advances race
        together(partial(worker.execute, rt, a.task_run_id, 1), partial(worker.execute, rt, b.task_run_id, 1))
        # each finish advanced the run itself or, finding it locked by the other, asked the master to
        assert set(d.advanced) <= {run_id} and len(d.advanced) <= 2
        together(*[partial(master.advance_run, rt, run_id, actor="master") for _ in range(3)])
        joins = [m for m in d.executed if m.label.endswith("/join")]
        assert len(joins) == 1
        with rt.db.read() as s:
            events = repo.run_events(s, run_id)
        assert sum(1 for e in events if e.task_name == "join" and e.to_state == "submitted") == 1


def test_two_reconcilers_at_once_republish_each_orphan_once(rt):
    d: RecordingDispatcher = rt.dispatcher  # type: ignore[assignment]
    with rt.db.transaction() as s:
        register_workflow(s, {"name": "o", "tasks": [
            {"name": "t", "type": "python", "function": "tests.support.jobs:record"}]})
    with rt.db.transaction() as s:
        runs = [master.start_run(s, rt, "o") for _ in range(200)]
    d.executed.clear()
    with rt.db.read() as s:  # every task is due for a re-publish (orphan timeout 10 ms)
        wait_until(lambda: len(repo.due_orphans(s, utcnow(), 1000)) == 200, timeout=10)
    reports = together(lambda: reconcile_once(rt), lambda: reconcile_once(rt), lambda: reconcile_once(rt))
    assert sum(r.republished for r in reports) == 200  # type: ignore[attr-defined]
    assert Counter(m.task_run_id for m in d.executed).most_common(1)[0][1] == 1
    with rt.db.read() as s:
        assert {repo.run_tasks(s, r)[0].publish_count for r in runs} == {2}


def test_cancel_racing_a_finishing_worker_neither_deadlocks_nor_overwrites(rt):
    """cancel locks the run and stops its running task while the worker records that task's success (which
    references the run from its event row): one of them wins, cleanly, every time."""
    import uuid

    from app.clock import after
    from app.services.control import cancel_run
    from app.states import TaskState

    d: RecordingDispatcher = rt.dispatcher  # type: ignore[assignment]
    with rt.db.transaction() as s:
        register_workflow(s, {"name": "c", "tasks": [
            {"name": "t", "type": "python", "function": "tests.support.jobs:record"},
            {"name": "u", "type": "python", "function": "tests.support.jobs:record", "depends_on": ["t"]}]})
    outcomes: Counter = Counter()
    for _ in range(40):
        with rt.db.transaction() as s:
            run_id = master.start_run(s, rt, "c")
            task = repo.run_tasks(s, run_id)[0]
            token = str(uuid.uuid4())
            assert repo.transition_task(s, task, TaskState.RUNNING, actor="test", reason="claimed",
                                        lease_token=token, lease_expires_at=after(60), worker="test")
            repo.insert_attempt(s, task, attempt=1, worker="test", pid=0, now=utcnow())
        finished, _ = together(partial(worker.finish, rt, task.id, 1, token, result="done"),
                               partial(cancel_run, rt, run_id, actor="test"))
        with rt.db.read() as s:
            t = repo.get_task(s, task.id)
            r = repo.get_run(s, run_id)
        assert r.state == "cancelled"
        assert (t.state, finished.outcome) in {("succeeded", worker.Outcome.SUCCEEDED),  # type: ignore[union-attr]
                                               ("cancelled", worker.Outcome.FENCED)}
        outcomes[t.state] += 1
    d.executed.clear()
    assert sum(outcomes.values()) == 40
