"""The protocol, in process: the stub broker (``app.testing.StubDispatcher``) delivers messages by calling the
worker and master services directly, so these run on PostgreSQL and SQLite in milliseconds, deterministic and
without polling. Delivery, crash and recovery with real processes: test_delivery.py, test_outages.py, tests/chaos.

Nothing is stuck: every way a task can fail to start, at every position in a DAG (root, middle, join, after a
retry, after ``run retry``), on both advance paths (the worker's inline advance and the master's), ends its run;
and a lost attempt is retried on its own budget (``max_lost_attempts``), separate from ``retries``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from app.client import Tideflow
from app.clock import utcnow
from app.config import load_settings
from app.db import repository as repo
from app.db.schema import TaskRun
from app.errors import DefinitionError
from app.runtime import Runtime
from app.services.reconciler import reconcile_once
from app.states import TASK_LIVE
from app.testing import StubDispatcher

ECHO = "tests.support.jobs_unit:echo"
BOOM = "tests.support.jobs_unit:boom"


class Harness:
    def __init__(self, db_url: str, **settings: Any):
        self.stub = StubDispatcher()
        self.rt = Runtime.create(load_settings(database_url=db_url, **settings), self.stub)
        self.tf = Tideflow(self.rt)
        self.later: list[Callable[[], None]] = []

    def register(self, name: str, tasks: list[dict[str, Any]], **extra: Any) -> None:
        self.tf.register({"name": name, "tasks": tasks, **extra})

    def register_then(self, name: str, tasks: list[dict[str, Any]], **extra: Any) -> None:
        """Register, then what the set-up left for after registration (``later``)."""
        self.register(name, tasks, **extra)
        while self.later:
            self.later.pop(0)()

    def run(self, workflow: str, params: dict[str, Any] | None = None, **drain: Any) -> dict[str, Any]:
        run_id = self.tf.start_run(workflow, params)
        self.stub.drain(self.rt, **drain)
        return self.tf.run(run_id)

    def tasks(self, run: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {t["name"]: t for t in run["tasks"]}

    def assert_settled(self, run_id: int) -> None:
        """Nothing of the run is left for anyone to do: it is terminal, none of its tasks is live or
        unhandled, and a reconciler pass finds nothing."""
        with self.rt.db.read() as s:
            run = repo.get_run(s, run_id)
            tasks = repo.run_tasks(s, run_id)
        assert run is not None and run.state != "running", f"run {run_id} is stuck {run and run.state}"
        assert [t.name for t in tasks if t.state in TASK_LIVE] == []
        assert [t.name for t in tasks if not t.handled] == []
        assert [t.name for t in tasks if t.finished_at is None] == []  # the reconciler's scan orders by it
        report = reconcile_once(self.rt)
        assert (report.republished, report.lost_attempts, report.advanced_runs) == (0, 0, 0), report

    def expire_leases(self) -> None:
        """As if the lease of every running attempt had lapsed (its worker died long enough ago)."""
        with self.rt.db.transaction() as s:
            s.execute(update(TaskRun).where(TaskRun.state == "running", TaskRun.lease_expires_at.is_not(None))
                      .values(lease_expires_at=utcnow() - timedelta(seconds=1)))

    def close(self) -> None:
        self.rt.close()


@pytest.fixture(params=[True, False], ids=["inline", "master"])
def h(request: pytest.FixtureRequest, db_url: str) -> Iterator[Harness]:
    """On both advance paths: a worker advancing the run itself, and every advance through the master."""
    harness = Harness(db_url, inline_advance=request.param)
    try:
        yield harness
    finally:
        harness.close()


# -- every way a subworkflow task can fail to start ---------------------------------------------------------

def _child_param_undeclared(h: Harness) -> dict[str, Any]:
    """The child declared the parameter when the parent was registered, and no longer does (its newer version,
    which the child run starts, dropped it)."""
    h.register("child", [{"name": "c", "type": "shell", "command": "echo {{ params.p }}"}], params={"p": 1, "q": 2})
    h.later.append(lambda: h.register("child", [{"name": "c", "type": "shell", "command": "echo {{ params.p }}"}],
                                      params={"p": 1}))
    return {"name": "x", "type": "subworkflow", "workflow": "child", "params": {"q": 3}}


def _unrenderable_placeholder(h: Harness) -> dict[str, Any]:
    h.register("child", [{"name": "c", "type": "shell", "command": "echo {{ params.p }}"}], params={"p": 1})
    return {"name": "x", "type": "subworkflow", "workflow": "child", "params": {"p": "{{ upstream.u.missing }}"}}


def _grandchild_cannot_start(h: Harness) -> dict[str, Any]:
    """The child starts, but its own root is a subworkflow that cannot: the child fails at once."""
    _child_param_undeclared(h)
    h.register_then("middle", [{"name": "m", "type": "subworkflow", "workflow": "child", "params": {"q": 3}}])
    return {"name": "x", "type": "subworkflow", "workflow": "middle"}


WAYS: dict[str, Callable[[Harness], dict[str, Any]]] = {
    "child-param-undeclared": _child_param_undeclared,
    "unrenderable-placeholder": _unrenderable_placeholder,
    "grandchild-cannot-start": _grandchild_cannot_start,
}

UPSTREAM = {"name": "u", "type": "python", "function": ECHO, "args": {"v": 1}}


def _dag(position: str, x: dict[str, Any]) -> list[dict[str, Any]]:
    """The failing task ``x`` at ``position``, an independent branch ``side``, and ``after`` downstream of x."""
    after = {"name": "after", "type": "shell", "command": "echo after", "depends_on": ["x"]}
    side = {"name": "side", "type": "shell", "command": "echo side"}
    if position == "root":
        x = {**x, "params": {k: v for k, v in (x.get("params") or {}).items() if "upstream" not in str(v)} or None}
        x = {k: v for k, v in x.items() if v is not None}
        return [x, after, side]
    if position == "middle":
        return [UPSTREAM, {**x, "depends_on": ["u"]}, after, side]
    if position == "join":
        other = {"name": "o", "type": "shell", "command": "echo o"}
        return [UPSTREAM, other, {**x, "depends_on": ["u", "o"]}, after, side]
    if position == "after-retry":  # its upstream fails once, then succeeds on its retry
        flaky = {**UPSTREAM, "function": "tests.support.jobs_unit:fail_first", "args": {"v": 1}, "retries": 1}
        return [flaky, {**x, "depends_on": ["u"]}, after, side]
    raise AssertionError(position)


@pytest.mark.parametrize("on_failure", ["stop", "continue"])
@pytest.mark.parametrize("position", ["root", "middle", "join", "after-retry"])
@pytest.mark.parametrize("way", sorted(WAYS))
def test_a_task_that_cannot_start_ends_its_run(h: Harness, way: str, position: str, on_failure: str) -> None:
    if way == "unrenderable-placeholder" and position == "root":
        pytest.skip("a root task has no upstream to name")
    x = WAYS[way](h)
    h.register_then("parent", _dag(position, x), on_failure=on_failure)
    run = h.run("parent")
    tasks = h.tasks(run)
    assert run["state"] == "failed", run
    assert tasks["x"]["state"] == "failed" and tasks["x"]["error"], tasks["x"]
    assert tasks["after"]["state"] == "skipped"
    if on_failure == "continue":
        assert tasks["side"]["state"] == "succeeded"  # independent branches keep running
    h.assert_settled(run["id"])


@pytest.mark.parametrize("way", sorted(WAYS))
def test_a_task_that_cannot_start_after_run_retry_ends_its_run(h: Harness, way: str) -> None:
    x = WAYS[way](h)
    gate = {"name": "gate", "type": "python", "function": "tests.support.jobs_unit:fail_first", "args": {"v": 1}}
    h.register_then("parent", [UPSTREAM, gate, {**x, "depends_on": ["u", "gate"]},
                          {"name": "after", "type": "shell", "command": "echo after", "depends_on": ["x"]}])
    first = h.run("parent")
    assert first["state"] == "failed" and h.tasks(first)["gate"]["state"] == "failed"
    h.tf.retry(first["id"])  # gate succeeds this time: x is reached, and cannot start
    h.stub.drain(h.rt)
    run = h.tf.run(first["id"])
    assert run["state"] == "failed" and h.tasks(run)["x"]["state"] == "failed", run
    assert h.tasks(run)["gate"]["state"] == "succeeded"
    h.assert_settled(run["id"])


def test_a_python_task_that_cannot_start_fails_after_its_retries(h: Harness) -> None:
    h.register("wf", [UPSTREAM, {"name": "x", "type": "python", "function": "tests.support.nowhere:f",
                                 "depends_on": ["u"], "retries": 1},
                      {"name": "after", "type": "shell", "command": "echo", "depends_on": ["x"]}])
    run = h.run("wf")
    assert run["state"] == "failed" and h.tasks(run)["x"]["attempt"] == 2
    assert "cannot import module 'tests.support.nowhere'" in h.tasks(run)["x"]["error"]
    h.assert_settled(run["id"])


def test_registration_rejects_parameters_the_child_does_not_declare(h: Harness) -> None:
    h.register("child", [{"name": "c", "type": "shell", "command": "echo"}], params={"p": 1})
    with pytest.raises(DefinitionError) as err:
        h.register("parent", [{"name": "x", "type": "subworkflow", "workflow": "child", "params": {"p": 2, "zz": 3}},
                              {"name": "y", "type": "subworkflow", "workflow": "child", "params": {"yy": 1}}])
    assert err.value.problems == [
        "task 'x': params: 'zz' is not a parameter of workflow 'child' (declared: p)",
        "task 'y': params: 'yy' is not a parameter of workflow 'child' (declared: p)",
    ]
    assert h.tf.read(lambda s: repo.workflow(s, "parent")) is None  # nothing stored


def test_a_child_run_is_started_and_awaited(h: Harness) -> None:
    h.register("child", [{"name": "c", "type": "python", "function": ECHO, "args": {"p": "{{ params.p }}"}}],
               params={"p": 1})
    h.register("parent", [UPSTREAM, {"name": "x", "type": "subworkflow", "workflow": "child",
                                     "params": {"p": "{{ upstream.u.v }}"}, "depends_on": ["u"]}])
    run = h.run("parent")
    assert run["state"] == "succeeded", run
    assert h.tasks(run)["x"]["result"] == {"c": {"p": 1}}
    h.assert_settled(run["id"])


# -- lost attempts: an infrastructure fault is not a failure of the body -----------------------------------

def _crash_first(label: str, attempt: int) -> bool:
    return label.endswith("/x") and attempt == 1


def _crash_always(label: str, attempt: int) -> bool:
    return label.endswith("/x")


def _lose_and_recover(
    h: Harness, crash: Callable[[str, int], bool], rounds: int = 10, run_id: int | None = None,
) -> dict[str, Any]:
    """Start ``wf`` (or go on with ``run_id``), delivering its messages; crash the attempts ``crash`` names,
    then let their leases lapse and the reconciler act, until the run ends."""
    if run_id is None:
        run_id = h.tf.start_run("wf")
    h.stub.drain(h.rt, crash=crash)
    for _ in range(rounds):
        run = h.tf.run(run_id)
        if run["state"] != "running":
            return run
        h.expire_leases()
        reconcile_once(h.rt)
        h.stub.drain(h.rt, crash=crash)
    return h.tf.run(run_id)


def test_a_lost_attempt_is_retried_even_without_retries(h: Harness) -> None:
    h.register("wf", [{"name": "x", "type": "python", "function": ECHO, "args": {"v": 1}},
                      {"name": "after", "type": "shell", "command": "echo", "depends_on": ["x"]}])
    run = _lose_and_recover(h, _crash_first)
    x = h.tasks(run)["x"]
    assert run["state"] == "succeeded", run
    assert x["attempt"] == 2 and x["failures"] == 0
    assert [a["outcome"] for a in x["attempts"]] == ["lost", "succeeded"]
    reasons = [e["reason"] for e in h.tf.read(_history, run["id"]) if e["task"] == "x"]
    assert any("attempt 1 lost: lease expired" in r and "lost attempt 1 of at most 3" in r for r in reasons), reasons
    h.assert_settled(run["id"])


def _history(s: Any, run_id: int) -> list[dict[str, Any]]:
    from app.services import views

    return views.run_history(s, run_id)


def test_lost_attempts_have_their_own_budget(h: Harness) -> None:
    """A body that kills its worker every time fails after max_lost_attempts, with a reason that says so;
    its retries are for failures of the body and are left untouched."""
    h.register("wf", [{"name": "x", "type": "python", "function": ECHO, "retries": 5, "max_lost_attempts": 2}])
    run = _lose_and_recover(h, _crash_always)
    x = h.tasks(run)["x"]
    assert run["state"] == "failed"
    assert [a["outcome"] for a in x["attempts"]] == ["lost", "lost"] and x["failures"] == 0
    reasons = [e["reason"] for e in h.tf.read(_history, run["id"]) if e["task"] == "x" and e["to"] == "failed"]
    assert len(reasons) == 1 and "2 attempts lost (max_lost_attempts: 2)" in reasons[0], reasons
    assert "the body may be killing its worker" in x["error"]
    h.assert_settled(run["id"])


def test_the_global_lost_attempt_budget_applies_to_tasks_without_their_own(db_url: str) -> None:
    h = Harness(db_url, max_lost_attempts=1)
    try:
        h.register("wf", [{"name": "x", "type": "python", "function": ECHO}])
        run = _lose_and_recover(h, _crash_first)
        assert run["state"] == "failed" and [a["outcome"] for a in h.tasks(run)["x"]["attempts"]] == ["lost"]
    finally:
        h.close()


def test_on_lost_fail_never_runs_a_task_twice(h: Harness) -> None:
    h.register("wf", [{"name": "x", "type": "python", "function": ECHO, "retries": 3, "on_lost": "fail"}])
    run = _lose_and_recover(h, _crash_first)
    x = h.tasks(run)["x"]
    assert run["state"] == "failed" and [a["outcome"] for a in x["attempts"]] == ["lost"]
    reasons = [e["reason"] for e in h.tf.read(_history, run["id"]) if e["task"] == "x" and e["to"] == "failed"]
    assert "not retried (on_lost: fail)" in reasons[0]
    h.assert_settled(run["id"])


def test_run_retry_resets_the_lost_attempt_budget(h: Harness) -> None:
    h.register("wf", [{"name": "x", "type": "python", "function": ECHO, "max_lost_attempts": 2}])
    run = _lose_and_recover(h, lambda label, attempt: attempt <= 2)
    assert run["state"] == "failed"
    h.tf.retry(run["id"])
    run = _lose_and_recover(h, lambda label, attempt: attempt == 3, run_id=run["id"])
    assert run["state"] == "succeeded", run  # one lost attempt after the retry: within the reset budget
    assert [a["outcome"] for a in h.tasks(run)["x"]["attempts"]] == ["lost", "lost", "lost", "succeeded"]


# -- a success is recorded from the claimed record (no RETURNING * read back), under the same fence ----------

def _claim_first(h: Harness, token: str) -> Any:
    """Claim the first queued execute message's attempt, as a worker would; returns the claimed record."""
    from app.services import attempts

    kind, body = h.stub.queue.popleft()
    assert kind == "execute"
    with h.rt.db.transaction() as s:
        claimed = attempts.claim(s, h.rt, int(body["task_run_id"]), int(body["attempt"]), now=utcnow(), token=token)
    assert claimed is not None
    return claimed


def test_a_success_recorded_from_the_claimed_record_is_the_row_written(h: Harness) -> None:
    """What the finishing worker hands its advance (the claimed record with what the fenced update wrote) is
    exactly the row in the database, although the heartbeat moved the lease in between."""
    from app.services import attempts

    h.register("wf", [{"name": "x", "type": "python", "function": ECHO, "args": {"v": 1}}])
    h.tf.start_run("wf")
    claimed = _claim_first(h, "token-1")
    with h.rt.db.transaction() as s:
        assert repo.renew_lease(s, claimed.id, "token-1", utcnow() + timedelta(seconds=60))
    with h.rt.db.transaction() as s:
        done = attempts.succeed(s, h.rt, claimed.id, claimed.attempt, "token-1", result={"v": [1, "a"]},
                                now=utcnow(), handled=False, log="ok", started_at=None, claimed=claimed)
    with h.rt.db.read() as s:
        row = repo.get_task(s, claimed.id)
    assert done is not None and row is not None
    assert done == row
    assert (row.state, row.handled, row.result, row.lease_expires_at) == ("succeeded", False, {"v": [1, "a"]}, None)


def test_a_stale_claimed_record_cannot_record_a_success(h: Harness) -> None:
    """The fence holds on this path too: the attempt whose lease lapsed (and was retried) finds nothing to
    update, and the newer attempt's row is untouched."""
    from app.services import worker

    h.register("wf", [{"name": "x", "type": "python", "function": ECHO, "args": {"v": 1}}])
    h.tf.start_run("wf")
    stale = _claim_first(h, "token-1")
    h.expire_leases()
    assert reconcile_once(h.rt).lost_attempts == 1
    newer = _claim_first(h, "token-2")
    assert newer.attempt == stale.attempt + 1
    result = worker.finish(h.rt, stale.id, stale.attempt, "token-1", result="stale", run_id=stale.run_id,
                           claimed=stale)
    assert result.outcome == worker.Outcome.FENCED
    with h.rt.db.read() as s:
        row = repo.get_task(s, stale.id)
    assert row is not None and (row.state, row.attempt, row.lease_token, row.result) == ("running", 2, "token-2", None)


# -- the heartbeat stores a running attempt's output (live logs) ------------------------------------------------

def test_the_heartbeat_stores_the_running_attempts_output_while_it_holds_the_lease(h: Harness) -> None:
    """``renew_lease(..., log=)`` writes the attempt's output so far with the renewal (one statement on
    PostgreSQL), and only when the renewal lands: a stale token stores nothing."""
    h.register("wf", [{"name": "x", "type": "python", "function": ECHO, "args": {"v": 1}}])
    h.tf.start_run("wf")
    claimed = _claim_first(h, "token-1")

    def stored() -> Any:
        with h.rt.db.read() as s:
            return [(a.outcome, a.log) for a in repo.attempts(s, [claimed.id])]

    assert stored() == [("running", None)]
    with h.rt.db.transaction() as s:
        assert not repo.renew_lease(s, claimed.id, "stale", utcnow() + timedelta(seconds=60),
                                    attempt=claimed.attempt, log="not mine")
    assert stored() == [("running", None)]
    with h.rt.db.transaction() as s:
        assert repo.renew_lease(s, claimed.id, "token-1", utcnow() + timedelta(seconds=60),
                                attempt=claimed.attempt, log="line 1\n")
    assert stored() == [("running", "line 1\n")]
    with h.rt.db.transaction() as s:  # without output: the lease alone, the stored output stays
        assert repo.renew_lease(s, claimed.id, "token-1", utcnow() + timedelta(seconds=60))
    assert stored() == [("running", "line 1\n")]
    with h.rt.db.read() as s:
        row = repo.get_task(s, claimed.id)
    assert row is not None and row.lease_expires_at is not None and row.lease_expires_at > utcnow()


# -- a failed run names its cause ------------------------------------------------------------------------------

@pytest.mark.parametrize("on_failure", ["stop", "continue"])
def test_a_failed_dag_runs_error_names_the_failing_task_and_its_error(h: Harness, on_failure: str) -> None:
    """The run's error (the list, the run page, the CLI show it) is not only "task 'x' failed" but what failed it:
    the task's own error, whole. Both ends of a DAG run: stopped by the failure, or after the rest ran."""
    h.register("wf", [{"name": "x", "type": "python", "function": BOOM, "retries": 0},
                      {"name": "y", "type": "python", "function": ECHO, "args": {"v": 1}}], on_failure=on_failure)
    run = h.run("wf")
    x = h.tasks(run)["x"]
    assert run["state"] == "failed" and x["error"]
    verb = "failed" if on_failure == "stop" else "did not succeed"
    assert run["error"] == f"task 'x' {verb}: {x['error']}"
    ends = [e for e in h.tf.read(_history, run["id"]) if e["task"] is None and e["to"] == "failed"]
    assert [e["reason"] for e in ends] == [run["error"]]
