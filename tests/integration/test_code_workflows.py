"""Code workflows, in process (the stub broker delivers messages by calling the services): replay, activities,
gather, compensation, timers, signals, cancellation, children, recorded values, continue_as_new, blocked runs and
the replay check, idempotent start keys. PostgreSQL and SQLite. Real Celery workers: test_code_delivery.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from app.errors import InvalidState
from app.services.reconciler import reconcile_once
from tests.support import codeflows
from tests.support.inprocess import StubProcess, reset_codeflows

#: a process with tests/support/codeflows.py (``Code(db_url, **settings)``; tests/integration/test_limits.py too)
Code = StubProcess


@pytest.fixture
def code(db_url: str) -> Iterator[Code]:
    reset_codeflows()
    h = Code(db_url)
    yield h
    h.rt.close()


def test_activities_gather_and_result(code: Code) -> None:
    run_id = code.start("adder", {"x": 2, "y": 3})
    run = code.run(run_id)
    assert run["state"] == "succeeded", run
    assert run["result"] == {"first": 5, "left": 6, "right": 7}
    assert run["state_values"] == {"stage": "added"}
    assert [t["seq"] for t in run["tasks"]] == [0, 1, 2]
    # each activity ran once, whatever the number of replays
    assert sorted(c for c in codeflows.CALLS if c[0] == "add") == [("add", (2, 3)), ("add", (5, 1)), ("add", (5, 2))]


def test_async_workflow(code: Code) -> None:
    run = code.run(code.start("async_adder", {"x": 1}))
    assert run["state"] == "succeeded", run
    assert run["result"] == 3 + 4


def test_activity_failure_raises_activity_error_and_compensates(code: Code) -> None:
    codeflows.FAIL["ship"] = 1
    run = code.run(code.start("saga", {"order_id": 7}))
    assert run["state"] == "succeeded", run
    assert run["result"]["compensated"] == "RuntimeError"
    assert run["result"]["message"] == "no courier"
    assert ("refund", 7) in codeflows.CALLS


def test_retries_apply_to_activities(code: Code, db_url: str) -> None:
    # flaky has retries=2 (no delay): two failures, then success on attempt 3
    codeflows.FAIL["k"] = 2

    @codeflows.tideflow.workflow(name="flaky_once")
    def flaky_once(ctx: Any) -> str:
        return str(ctx.activity(codeflows.flaky, "k"))

    run = code.run(code.start("flaky_once"))
    assert run["state"] == "succeeded", run
    assert run["result"] == "ok k"
    assert run["tasks"][0]["attempt"] == 3


def test_uncaught_activity_error_fails_the_run(code: Code) -> None:
    codeflows.FAIL["charge"] = 1
    run = code.run(code.start("saga", {"order_id": 1}))
    assert run["state"] == "failed"
    assert "card declined for order 1" in run["error"]


def test_timer_is_a_row_fired_by_the_reconciler(code: Code) -> None:
    run_id = code.start("sleeper", {"seconds": 3600})
    run = code.run(run_id)
    assert run["state"] == "running"
    assert run["state_values"] == {"stage": "sleeping"}
    (timer,) = run["tasks"]
    assert timer["type"] == "timer" and timer["state"] == "running" and timer["due_at"]
    assert reconcile_once(code.rt).fired_timers == 0  # not due yet
    code.fire_timers()
    run = code.run(run_id)
    assert run["state"] == "succeeded" and run["result"] == "woke"
    assert run["state_values"] == {"stage": "woke"}


def test_signal_sent_before_the_wait_is_kept_and_keys_deduplicate(code: Code) -> None:
    run_id = code.start("approval")
    assert code.tf.signal(run_id, "approve", {"by": "ann"}, key="k1") > 0
    first = code.tf.signal(run_id, "approve", {"by": "ann"}, key="k1")  # the same key: one signal
    code.stub.drain(code.rt)
    assert code.run(run_id)["state"] == "running"
    assert code.tf.signal(run_id, "approve", {"by": "bob"}, key="k2") != first
    code.stub.drain(code.rt)
    run = code.run(run_id)
    assert run["state"] == "succeeded", run
    assert run["result"] == {"approved": [{"by": "ann"}, {"by": "bob"}]}
    with pytest.raises(InvalidState, match="already succeeded"):
        code.tf.signal(run_id, "approve", 1)


def test_signals_before_the_run_waits_are_delivered_in_arrival_order(code: Code, db_url: str) -> None:
    other = Code(db_url)
    try:
        # signals stored while nothing waits: the wait takes them in order
        run_id = other.tf.start_run("approval")  # not drained yet: the run's first pass already waits
        other.tf.signal(run_id, "approve", 1)
        other.tf.signal(run_id, "approve", 2)
        other.stub.drain(other.rt)
        assert other.run(run_id)["result"] == {"approved": [1, 2]}
    finally:
        other.rt.close()


def test_signal_wait_times_out_with_none(code: Code) -> None:
    run_id = code.start("approval", {"timeout": 60})
    code.fire_timers()
    run = code.run(run_id)
    assert run["state"] == "succeeded" and run["result"] == {"approved": None}


def test_cancel_during_a_sleep_runs_the_compensation(code: Code) -> None:
    run_id = code.start("cancellable", {"order_id": 3})
    assert code.run(run_id)["tasks"][-1]["type"] == "timer"
    code.tf.cancel(run_id)
    code.stub.drain(code.rt)
    run = code.run(run_id)
    assert run["state"] == "cancelled", run
    assert ("refund", 3) in codeflows.CALLS
    assert [t["state"] for t in run["tasks"]] == ["succeeded", "cancelled", "succeeded"]


def test_recorded_values_replay_the_same(code: Code) -> None:
    run = code.run(code.start("values"))
    assert run["state"] == "succeeded"
    assert [t["type"] for t in run["tasks"]] == ["marker"] * 3
    report = code.tf.replay(run["id"])
    assert report.ok, report


def test_children_code_and_their_results(code: Code) -> None:
    run = code.run(code.start("code_parent", {"x": 5}))
    assert run["state"] == "succeeded", run
    assert run["result"] == {"child": {"first": 15, "left": 16, "right": 17},
                             "other": {"first": 2, "left": 3, "right": 4}}


def test_continue_as_new_links_runs(code: Code) -> None:
    run_id = code.start("counter", {"n": 0, "until": 3})
    first = code.run(run_id)
    assert first["state"] == "succeeded" and first["continued_run_id"]
    last = first
    while last["continued_run_id"]:
        last = code.run(last["continued_run_id"])
    assert last["result"] == 3 and last["state"] == "succeeded"


def test_start_key_is_idempotent(code: Code) -> None:
    a = code.start("adder", {"x": 1}, key="order-1")
    b = code.start("adder", {"x": 1}, key="order-1")
    assert a == b
    assert len([c for c in codeflows.CALLS if c == ("add", (1, 1))]) == 1


def test_nondeterministic_change_blocks_then_resume_after_fix(code: Code) -> None:
    state = {"changed": False}

    @codeflows.tideflow.workflow(name="changing")
    def changing(ctx: Any) -> str:
        if state["changed"]:
            ctx.activity(codeflows.refund, 1)  # at position 0, where the history holds another call
        else:
            ctx.activity(codeflows.add, 1, 1)
        ctx.sleep(60)
        return "done"

    run_id = code.start("changing")
    state["changed"] = True
    code.fire_timers()
    run = code.run(run_id)
    assert run["state"] == "blocked", run
    assert "position 0" in run["error"] and "activity 'add'" in run["error"] and "activity 'refund'" in run["error"]
    assert not code.tf.replay(run_id).ok
    state["changed"] = False
    assert code.tf.replay(run_id).ok
    code.tf.resume(run_id)
    code.stub.drain(code.rt)
    assert code.run(run_id)["state"] == "succeeded"


def test_patched_lets_old_runs_replay_the_old_branch(code: Code) -> None:
    state = {"patched": False}

    @codeflows.tideflow.workflow(name="patching")
    def patching(ctx: Any) -> str:
        ctx.sleep(60)
        if state["patched"] and ctx.patched("use-refund"):
            return str(ctx.activity(codeflows.refund, 2))
        return str(ctx.activity(codeflows.add, 2, 2))

    old = code.start("patching")
    code.fire_timers()  # the old run recorded add at position 1
    state["patched"] = True
    new = code.start("patching")
    code.fire_timers()
    assert code.run(old)["result"] == "4"
    assert code.tf.replay(old).ok
    assert code.run(new)["result"] == "refunded 2"


def test_a_dag_subworkflow_task_starts_a_code_workflow(code: Code) -> None:
    code.tf.register({"name": "dag-parent", "params": {"x": 1}, "tasks": [
        {"name": "kid", "type": "subworkflow", "workflow": "adder", "params": {"x": "{{ params.x }}"}},
    ]})
    run = code.run(code.start("dag-parent", {"x": 4}))
    assert run["state"] == "succeeded", run
    assert run["tasks"][0]["result"] == {"first": 5, "left": 6, "right": 7}


def test_registration_checks_a_code_child_s_parameters(code: Code) -> None:
    from app.errors import DefinitionError

    with pytest.raises(DefinitionError, match="'nope' is not a parameter of workflow 'adder'"):
        code.tf.register({"name": "bad-parent", "tasks": [
            {"name": "kid", "type": "subworkflow", "workflow": "adder", "params": {"nope": 1}}]})


def test_cancelling_a_parent_cancels_its_code_children(code: Code) -> None:
    @codeflows.tideflow.workflow(name="waits_for_sleeper")
    def waits_for_sleeper(ctx: Any) -> Any:
        return ctx.child("sleeper", seconds=3600)

    run_id = code.start("waits_for_sleeper")
    child_id = code.run(run_id)["tasks"][0]["child_run_id"]
    assert code.run(child_id)["state"] == "running"
    code.tf.cancel(run_id)
    code.stub.drain(code.rt)
    assert code.run(run_id)["state"] == "cancelled"
    assert code.run(child_id)["state"] == "cancelled"


def test_history_past_the_cap_fails_clearly(db_url: str) -> None:
    h = Code(db_url, history_warn_steps=3, history_max_steps=5)
    try:
        run = h.run(h.start("looper", {"n": 10}))
        assert run["state"] == "failed"
        assert "past the cap of 5" in run["error"] and "continue_as_new" in run["error"]
        history = h.tf.read(__import__("app.services.views", fromlist=["run_history"]).run_history, run["id"])
        assert any("warning at 3" in e["reason"] for e in history)
    finally:
        h.rt.close()


def test_bad_parameters_are_one_clear_error_and_store_nothing(code: Code) -> None:
    from app.errors import DefinitionError

    with pytest.raises(DefinitionError, match="parameter 'x' is required"):
        code.tf.start_run("adder", {})
    with pytest.raises(DefinitionError, match="'z' is not a parameter"):
        code.tf.start_run("adder", {"x": 1, "z": 2})
    assert code.tf.read(__import__("app.services.views", fromlist=["list_runs"]).list_runs) == []


def test_a_dag_start_key_is_idempotent_too(code: Code) -> None:
    code.tf.register({"name": "one", "tasks": [{"name": "a", "type": "python",
                                                "function": "tests.support.jobs_unit:echo"}]})
    a = code.tf.start_run_keyed("one", key="k")
    b = code.tf.start_run_keyed("one", key="k")
    assert a == (a[0], True) and b == (a[0], False)


def test_a_signal_in_the_caller_s_transaction_exists_only_if_it_commits(code: Code) -> None:
    run_id = code.start("approval")
    with pytest.raises(RuntimeError), code.rt.db.transaction() as s:
        code.tf.signal(run_id, "approve", "rolled back", session=s)
        raise RuntimeError("the caller's transaction fails")
    code.stub.drain(code.rt)
    assert code.run(run_id)["tasks"][0]["state"] == "running"  # still waiting: nothing was delivered
    with code.rt.db.transaction() as s:
        code.tf.signal(run_id, "approve", "one", session=s)
        code.tf.signal(run_id, "approve", "two", session=s)
    code.stub.drain(code.rt)
    assert code.run(run_id)["result"] == {"approved": ["one", "two"]}


def test_a_signal_to_a_dag_run_or_a_missing_run_is_a_clear_error(code: Code) -> None:
    from app.errors import NotFound

    code.tf.register({"name": "one", "tasks": [{"name": "a", "type": "python",
                                                "function": "tests.support.jobs_unit:echo"}]})
    dag_run = code.tf.start_run("one")
    with pytest.raises(InvalidState, match="DAG run"):
        code.tf.signal(dag_run, "approve")
    with pytest.raises(NotFound):
        code.tf.signal(999_999, "approve")


def test_non_json_arguments_fail_at_the_call_site(code: Code) -> None:
    @codeflows.tideflow.workflow(name="not_json")
    def not_json(ctx: Any) -> Any:
        return ctx.activity(codeflows.add, object(), 1)

    run = code.run(code.start("not_json"))
    assert run["state"] == "failed"
    assert "the arguments of activity 'add' must be JSON" in run["error"]


def test_a_process_without_the_code_cannot_start_it_and_one_without_it_blocks_runs(code: Code, db_url: str) -> None:
    from app.code import registry
    from app.errors import TideflowError

    run_id = code.start("sleeper", {"seconds": 60})
    saved = registry._workflows.pop("sleeper")
    try:
        with pytest.raises(TideflowError, match="not registered in this process"):
            code.tf.start_run("sleeper", {"seconds": 1})
        code.fire_timers()  # the advance runs in a process without the code: blocked, saying why
        run = code.run(run_id)
        assert run["state"] == "blocked" and "TIDEFLOW_WORKFLOW_MODULES" in run["error"]
    finally:
        registry._workflows["sleeper"] = saved
    assert code.tf.resume(run_id) == "succeeded"


def test_an_activity_knows_its_run_position_and_attempt(code: Code) -> None:
    run = code.run(code.start("introspect"))
    assert run["state"] == "succeeded", run
    step = run["tasks"][1]
    assert run["result"] == {"activity": "whoami", "run_id": run["id"], "seq": 1, "attempt": 1,
                             "key": f"{run['id']}-{step['id']}"}
    with pytest.raises(RuntimeError, match="only available while an activity runs"):
        codeflows.tideflow.activity_info()


def test_a_name_is_one_kind_of_workflow(code: Code) -> None:
    from app.errors import DefinitionError

    with pytest.raises(DefinitionError, match="'adder' is a code workflow in this process"):
        code.tf.register({"name": "adder", "tasks": [{"name": "a", "type": "shell", "command": "true"}]})

    code.tf.register({"name": "clash", "tasks": [{"name": "a", "type": "shell", "command": "true"}]})

    @codeflows.tideflow.workflow(name="clash")
    def clash(ctx: Any) -> None:
        return None

    try:
        with pytest.raises(DefinitionError, match="'clash' is registered as a DAG"):
            code.tf.start_run("clash")
    finally:
        from app.code import registry

        registry._workflows.pop("clash", None)
