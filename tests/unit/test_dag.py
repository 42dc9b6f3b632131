from app.dag import evaluate
from app.states import RunState, TaskState

P, SUB, RUN, OK, F, SK, C = (TaskState.PENDING, TaskState.SUBMITTED, TaskState.RUNNING, TaskState.SUCCEEDED,
                              TaskState.FAILED, TaskState.SKIPPED, TaskState.CANCELLED)
DIAMOND = {"a": [], "b": ["a"], "c": ["a"], "join": ["b", "c"]}


def test_roots_are_submitted_first():
    d = evaluate(DIAMOND, {"a": P, "b": P, "c": P, "join": P})
    assert d.submit == ["a"] and d.outcome is None


def test_join_waits_for_every_branch():
    assert evaluate(DIAMOND, {"a": OK, "b": OK, "c": RUN, "join": P}).submit == []
    assert evaluate(DIAMOND, {"a": OK, "b": OK, "c": OK, "join": P}).submit == ["join"]


def test_already_submitted_join_is_not_submitted_again():
    d = evaluate(DIAMOND, {"a": OK, "b": OK, "c": OK, "join": SUB})
    assert d.empty


def test_all_succeeded_finishes_run():
    d = evaluate(DIAMOND, dict.fromkeys(DIAMOND, OK))
    assert d.outcome == RunState.SUCCEEDED and not d.submit


def test_stop_strategy_fails_run_and_stops_everything_live():
    d = evaluate(DIAMOND, {"a": OK, "b": F, "c": RUN, "join": P}, "stop")
    assert d.outcome == RunState.FAILED
    assert d.cancel == ["c"] and d.skip == ["join"]
    assert "b" in d.reason


def test_continue_strategy_runs_independent_branches_and_skips_downstream():
    deps = {"a": [], "b": ["a"], "x": [], "y": ["x"]}
    d = evaluate(deps, {"a": F, "b": P, "x": OK, "y": P}, "continue")
    assert d.skip == ["b"] and d.submit == ["y"] and d.outcome is None
    d = evaluate(deps, {"a": F, "b": SK, "x": OK, "y": OK}, "continue")
    assert d.outcome == RunState.FAILED


def test_skip_propagates_through_chain_in_one_decision():
    deps = {"a": [], "b": ["a"], "c": ["b"], "d": ["c"]}
    d = evaluate(deps, {"a": C, "b": P, "c": P, "d": P}, "continue")
    assert d.skip == ["b", "c", "d"]
    assert d.outcome == RunState.FAILED
