"""The replay engine alone (``app.code.engine``): no database, histories built by hand."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

import pytest

import tideflow
from app.code.engine import Context, PassOutcome, Step, parse_divergence, run_pass
from app.code.registry import get_workflow
from app.states import TaskKind, TaskState

NOW = datetime(2026, 12, 1, tzinfo=UTC)
A, T, S, M = TaskKind.ACTIVITY, TaskKind.TIMER, TaskKind.SIGNAL, TaskKind.MARKER
OK, RUN, FAIL, CANC = TaskState.SUCCEEDED, TaskState.RUNNING, TaskState.FAILED, TaskState.CANCELLED


@tideflow.activity(name="unit_a")
def unit_a(x: int) -> int:
    return x


@tideflow.activity(name="unit_b")
def unit_b(x: int) -> int:
    return x


def _pass(fn: Any, history: list[Step], params: dict[str, Any] | None = None, **ctx: Any) -> Any:
    wf = get_workflow(fn.__tideflow_workflow__.name)
    assert wf is not None
    c = Context(run_id=1, workflow=wf.name, params=params or {}, history=history, now=NOW, **ctx)
    return run_pass(wf, params or {}, c)


@tideflow.workflow(name="unit_seq")
def unit_seq(ctx: tideflow.Context) -> int:
    return int(ctx.activity(unit_a, 1)) + int(ctx.activity(unit_b, 2))


def test_first_pass_records_the_first_call_and_suspends() -> None:
    res = _pass(unit_seq, [])
    assert res.outcome == PassOutcome.SUSPENDED
    assert [(n.seq, n.kind, n.name, n.state) for n in res.new_steps] == [(0, A, "unit_a", TaskState.PENDING)]
    assert res.new_steps[0].body == {"activity": "unit_a", "argv": [1], "args": {}}


def test_recorded_results_are_returned_and_the_function_finishes() -> None:
    res = _pass(unit_seq, [Step(0, A, "unit_a", OK, 1), Step(1, A, "unit_b", OK, 2)])
    assert (res.outcome, res.value, res.new_steps) == (PassOutcome.RETURNED, 3, [])


def test_a_different_call_at_a_position_is_a_divergence_naming_it() -> None:
    res = _pass(unit_seq, [Step(0, A, "unit_b", OK, 1)])
    assert res.outcome == PassOutcome.DIVERGED
    assert res.error == "position 0: the history holds activity 'unit_b', the code asked for activity 'unit_a'"


def test_returning_before_the_history_ends_is_a_divergence() -> None:
    res = _pass(unit_seq, [Step(0, A, "unit_a", OK, 1), Step(1, A, "unit_b", OK, 2), Step(2, T, "sleep", OK)])
    assert res.outcome == PassOutcome.DIVERGED and "position 2" in res.error and "timer" in res.error


def test_parse_divergence_reads_back_what_the_engine_wrote() -> None:
    """A blocked run's view (``blocked``) parses the message its divergence was recorded with (run.error)."""
    asked = _pass(unit_seq, [Step(0, A, "unit_b", OK, 1)]).error
    blocked = f"nondeterministic code: {asked}. The run is kept as it is: deploy code that replays its history"
    assert parse_divergence(blocked) == {"position": 0, "history": "activity 'unit_b'",
                                         "asked": "activity 'unit_a'"}
    returned = _pass(unit_seq, [Step(0, A, "unit_a", OK, 1), Step(1, A, "unit_b", OK, 2), Step(2, T, "sleep", OK)])
    assert parse_divergence(returned.error) == {"position": 2, "history": "a timer (ctx.sleep)",
                                                "asked": "nothing (the code returned before it)"}
    assert parse_divergence("workflow 'x' is not registered in process w1") == {
        "position": None, "history": None, "asked": None}


def test_a_failed_activity_raises_activity_error_with_its_cause() -> None:
    @tideflow.workflow(name="unit_catch")
    def unit_catch(ctx: tideflow.Context) -> Any:
        try:
            ctx.activity(unit_a, 1)
        except tideflow.ActivityError as exc:
            return [exc.activity, exc.type, exc.message]
        return None

    res = _pass(unit_catch, [Step(0, A, "unit_a", FAIL, error="ValueError: bad card")])
    assert res.value == ["unit_a", "ValueError", "bad card"]


@tideflow.workflow(name="unit_gather")
def unit_gather(ctx: tideflow.Context) -> Any:
    a = ctx.start_activity(unit_a, 1)
    b = ctx.start_activity(unit_b, 2)
    return ctx.gather(a, b)


def test_gather_waits_for_all_and_raises_the_first_failure_in_argument_order() -> None:
    # b failed first, a is still running: gather waits (whatever order they end in, the error raised is a's)
    assert _pass(unit_gather, [Step(0, A, "unit_a", RUN), Step(1, A, "unit_b", FAIL, error="E: b")]).outcome \
        == PassOutcome.SUSPENDED
    res = _pass(unit_gather, [Step(0, A, "unit_a", FAIL, error="E: a"), Step(1, A, "unit_b", FAIL, error="E: b")])
    assert res.outcome == PassOutcome.FAILED and "'unit_a' failed: E: a" in res.error
    res = _pass(unit_gather, [Step(0, A, "unit_a", OK, 1), Step(1, A, "unit_b", OK, 2)])
    assert res.value == [1, 2]


def test_both_parallel_calls_are_recorded_in_one_pass() -> None:
    res = _pass(unit_gather, [])
    assert [(n.seq, n.name) for n in res.new_steps] == [(0, "unit_a"), (1, "unit_b")]


def test_finally_blocks_that_run_while_suspending_record_nothing() -> None:
    @tideflow.workflow(name="unit_finally")
    def unit_finally(ctx: tideflow.Context) -> None:
        try:
            ctx.sleep(10)
        finally:
            ctx.set_state("cleaned", True)
            ctx.activity(unit_b, 9)

    res = _pass(unit_finally, [])
    assert res.outcome == PassOutcome.SUSPENDED
    assert [n.kind for n in res.new_steps] == [T] and res.state_values == {}


def test_a_function_that_swallows_the_suspension_is_still_suspended() -> None:
    @tideflow.workflow(name="unit_swallow")
    def unit_swallow(ctx: tideflow.Context) -> str:
        with contextlib.suppress(BaseException):  # what a careless workflow does
            ctx.activity(unit_a, 1)
        return "returned anyway"

    assert _pass(unit_swallow, []).outcome == PassOutcome.SUSPENDED


def test_patched_is_true_for_new_histories_and_false_when_replaying_an_old_one() -> None:
    @tideflow.workflow(name="unit_patch")
    def unit_patch(ctx: tideflow.Context) -> Any:
        if ctx.patched("v2"):
            return ctx.activity(unit_b, 2)
        return ctx.activity(unit_a, 1)

    new = _pass(unit_patch, [])
    assert [(n.kind, n.name) for n in new.new_steps] == [(M, "patch:v2"), (A, "unit_b")]
    old = _pass(unit_patch, [Step(0, A, "unit_a", OK, 1)])
    assert (old.outcome, old.value) == (PassOutcome.RETURNED, 1)
    patched = _pass(unit_patch, [Step(0, M, "patch:v2", OK, True), Step(1, A, "unit_b", OK, 2)])
    assert patched.value == 2


def test_recorded_values_come_back_from_the_history() -> None:
    @tideflow.workflow(name="unit_values")
    def unit_values(ctx: tideflow.Context) -> Any:
        return [ctx.now().isoformat(), str(ctx.uuid4()), ctx.random()]

    first = _pass(unit_values, [])
    assert first.outcome == PassOutcome.RETURNED and first.value[0] == NOW.isoformat()
    history = [Step(n.seq, n.kind, n.name, n.state, n.result) for n in first.new_steps]
    again = _pass(unit_values, history)
    assert again.value == first.value and again.new_steps == []


def test_signals_waiting_before_the_wait_are_taken_in_order() -> None:
    @tideflow.workflow(name="unit_signals")
    def unit_signals(ctx: tideflow.Context) -> Any:
        return [ctx.wait_signal("go"), ctx.wait_signal("go")]

    res = _pass(unit_signals, [], signals=[(7, "go", "first"), (8, "other", 0), (9, "go", "second")])
    assert res.value == ["first", "second"]
    assert [n.signal_id for n in res.new_steps] == [7, 9]


def test_a_pending_cancel_is_raised_at_the_next_wait() -> None:
    @tideflow.workflow(name="unit_cancel")
    def unit_cancel(ctx: tideflow.Context) -> str:
        try:
            ctx.sleep(60)
        except tideflow.Cancelled:
            ctx.activity(unit_b, 0)  # compensation runs normally once the cancel was delivered
            raise
        return "slept"

    res = _pass(unit_cancel, [], cancel_requested=True)
    assert [(n.kind, n.state) for n in res.new_steps] == [(T, CANC), (A, TaskState.PENDING)]
    done = _pass(unit_cancel, [Step(0, T, "sleep", CANC), Step(1, A, "unit_b", OK, 0)], cancel_requested=True)
    assert done.outcome == PassOutcome.CANCELLED


def test_non_json_values_are_clear_errors_at_the_call_site() -> None:
    @tideflow.workflow(name="unit_json")
    def unit_json(ctx: tideflow.Context) -> Any:
        return {"when": datetime.now(UTC)}

    res = _pass(unit_json, [])
    assert res.outcome == PassOutcome.FAILED and "the result of workflow 'unit_json' must be JSON" in res.error
    with pytest.raises(tideflow.NotJSON, match="state value 'k' must be JSON"):
        Context(run_id=1, workflow="x", params={}, history=[], now=NOW).set_state("k", object())


def test_continue_as_new_ends_the_pass_with_its_params() -> None:
    @tideflow.workflow(name="unit_can")
    def unit_can(ctx: tideflow.Context, n: int) -> None:
        ctx.continue_as_new(n=n + 1)

    res = _pass(unit_can, [], {"n": 1})
    assert (res.outcome, res.params) == (PassOutcome.CONTINUE_AS_NEW, {"n": 2})


def test_registration_errors_are_clear() -> None:
    from app.errors import DefinitionError

    with pytest.raises(DefinitionError, match="first parameter must be the context"):
        tideflow.workflow(lambda: None)
    with pytest.raises(DefinitionError, match="registered twice"):
        @tideflow.activity(name="unit_a")
        def other(x: int) -> int:
            return x
    with pytest.raises(DefinitionError, match="retries"):
        tideflow.activity(retries=-1)(lambda: None)


def test_activity_error_types_for_timeouts_and_lost_attempts() -> None:
    assert tideflow.ActivityError("a", "timed out after 5s").type == "TimeoutError"
    lost = tideflow.ActivityError("a", "attempt 3 lost: lease expired; 3 attempts lost (max_lost_attempts: 3)")
    assert lost.type == "LostAttempts"
    assert tideflow.ActivityError("a", "KeyError: 'x'").type == "KeyError"


# -- an activity's concurrency key (@tideflow.activity(concurrency=...); app/services/limits.py) ----------------


@tideflow.activity(name="unit_keyed", concurrency={"key": "cust-{{ args.customer_id }}-{{ params.region }}",
                                                  "limit": 2})
def unit_keyed(customer_id: int, amount: int = 0, region: str = "eu") -> int:
    return amount


@tideflow.activity(name="unit_plain_key", concurrency={"key": "the-api", "limit": 1})
def unit_plain_key(x: int) -> int:
    return x


@tideflow.activity(name="unit_deep_key", concurrency={"key": "{{ args.order.customer }}", "limit": 1})
def unit_deep_key(order: dict) -> int:
    return 0


@tideflow.workflow(name="unit_keys")
def unit_keys(ctx: tideflow.Context, region: str = "us") -> Any:
    a = ctx.start_activity(unit_keyed, 42, amount=5)
    b = ctx.start_activity(unit_keyed, customer_id=7)
    c = ctx.start_activity(unit_plain_key, 1)
    return ctx.gather(a, b, c)


def test_an_activity_concurrency_key_is_rendered_from_its_arguments_by_name_and_the_runs_params() -> None:
    res = _pass(unit_keys, [], {"region": "ap"})
    assert [(n.name, n.state, n.concurrency_key) for n in res.new_steps] == [
        ("unit_keyed", TaskState.PENDING, "cust-42-ap"), ("unit_keyed", TaskState.PENDING, "cust-7-ap"),
        ("unit_plain_key", TaskState.PENDING, "the-api")]
    # the workflow's default fills a parameter the run was not given, as a DAG's declared default does
    assert _pass(unit_keys, []).new_steps[0].concurrency_key == "cust-42-us"
    # replay never renders again: a recorded step keeps the key its row carries
    history = [Step(0, A, "unit_keyed", OK, 5), Step(1, A, "unit_keyed", OK, 0), Step(2, A, "unit_plain_key", OK, 1)]
    assert _pass(unit_keys, history).value == [5, 0, 1]


def test_an_activity_key_that_does_not_render_fails_that_activity_without_running_it() -> None:
    @tideflow.workflow(name="unit_bad_key")
    def unit_bad_key(ctx: tideflow.Context) -> Any:
        try:
            ctx.activity(unit_deep_key, {"id": 1})  # no 'customer' in the argument
        except tideflow.ActivityError as exc:
            ctx.set_state("caught", [exc.type, exc.message])
        return ctx.activity(unit_deep_key, {"customer": "c9"})

    res = _pass(unit_bad_key, [])
    assert res.outcome == PassOutcome.SUSPENDED
    first, second = res.new_steps
    assert (first.state, first.concurrency_key) == (FAIL, None)
    assert first.error == ("TemplateError: concurrency key '{{ args.order.customer }}' of activity 'unit_deep_key' "
                           "does not render: 'args.order.customer' has no value")
    assert "failed without running" in first.reason
    assert (second.state, second.concurrency_key) == (TaskState.PENDING, "c9")
    assert res.state_values["caught"][0] == "TemplateError"
    # the failure is history: replayed, it raises the same error where it was caught
    again = _pass(unit_bad_key, [Step(0, A, "unit_deep_key", FAIL, error=first.error),
                                 Step(1, A, "unit_deep_key", OK, 0)])
    assert again.outcome == PassOutcome.RETURNED and again.state_values["caught"][0] == "TemplateError"

    @tideflow.workflow(name="unit_no_param")
    def unit_no_param(ctx: tideflow.Context) -> Any:  # no 'region' parameter: params.region has no value
        return ctx.activity(unit_keyed, 1)

    (step,) = _pass(unit_no_param, []).new_steps
    assert step.state == FAIL and "'params.region' has no value" in str(step.error)

    @tideflow.workflow(name="unit_unbound")
    def unit_unbound(ctx: tideflow.Context) -> Any:  # the arguments do not fit: no key can be rendered
        return ctx.activity(unit_keyed, amount=1)

    (step,) = _pass(unit_unbound, []).new_steps
    assert step.state == FAIL and "do not fit the activity's parameters: missing a required argument" in str(step.error)


@pytest.mark.parametrize(("concurrency", "message"), [
    ({"limit": 1}, "activity 'bad': concurrency.key: Field required"),
    ({"key": "k"}, "activity 'bad': concurrency.limit: Field required"),
    ({"key": "k", "limit": 0}, "activity 'bad': concurrency.limit: Input should be greater than or equal to 1"),
    ({"key": "k", "limit": "2"}, "activity 'bad': concurrency.limit: Input should be a valid integer"),
    ({"key": "", "limit": 1}, "activity 'bad': concurrency.key: String should have at least 1 character"),
    ({"key": "k", "limit": 1, "lmit": 2}, "activity 'bad': concurrency.lmit: Extra inputs are not permitted"),
    ("k", "activity 'bad': concurrency must be a dict {'key': ..., 'limit': N}, not str"),
    ({"key": "{{ run.id }}", "limit": 1}, "activity 'bad': concurrency.key: unsupported placeholder '{{ run.id }}': "
                                          "use {{ args.NAME }} or {{ params.NAME }}"),
    ({"key": "{{ args.nope }}-{{ args.x }}", "limit": 1},
     "activity 'bad': concurrency.key: args.nope is not a parameter of bad(x, y)"),
])
def test_a_malformed_activity_concurrency_is_a_one_line_error_at_decoration(concurrency: Any, message: str) -> None:
    from app.code.registry import get_activity
    from app.errors import DefinitionError

    def bad(x: int, y: int = 0) -> int:
        return x

    with pytest.raises(DefinitionError) as exc:
        tideflow.activity(concurrency=concurrency)(bad)
    assert str(exc.value) == message and "\n" not in str(exc.value)
    assert get_activity("bad") is None  # nothing registered
