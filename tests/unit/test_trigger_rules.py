"""Branching in the pure DAG evaluator (app/dag.py): each trigger rule (Airflow's semantics, skipped upstream tasks
included), a switch's branches, which failures stop a run, and a run's outcome from its leaf tasks."""

from __future__ import annotations

import pytest

from app import dag
from app.dag import Facts, Rules, Skip, TriggerRule, evaluate, run_outcome, stops_run, trigger
from app.states import RunState, TaskState

P, SUB, RUN, OK, F, SK, C = (TaskState.PENDING, TaskState.SUBMITTED, TaskState.RUNNING, TaskState.SUCCEEDED,
                              TaskState.FAILED, TaskState.SKIPPED, TaskState.CANCELLED)
R = TriggerRule
UPS = ["a", "b"]


def verdict(rule: TriggerRule, a: TaskState, b: TaskState, deliberate: tuple[str, ...] = ()) -> bool | Skip | None:
    return trigger("t", rule, UPS, {"a": a, "b": b}, Facts(deliberate=deliberate))


# each rule: (a, b, which skips were deliberate) -> True (run), None (wait), or the skip's (failure, reason)
CASES = [
    # all_success: runs when all succeeded; a failure upstream skips as failed at once, a deliberate skip skips
    (R.ALL_SUCCESS, OK, OK, (), True),
    (R.ALL_SUCCESS, OK, RUN, (), None),
    (R.ALL_SUCCESS, F, RUN, (), (True, "trigger rule all_success: upstream 'a' failed")),
    (R.ALL_SUCCESS, OK, SK, ("b",), (False, "trigger rule all_success: upstream 'b' was skipped")),
    (R.ALL_SUCCESS, OK, SK, (), (True, "trigger rule all_success: upstream 'b' was skipped after a failure")),
    (R.ALL_SUCCESS, C, OK, (), (True, "trigger rule all_success: upstream 'a' was cancelled")),
    # all_done: waits for every upstream, then runs whatever their states; never skipped
    (R.ALL_DONE, F, RUN, (), None),
    (R.ALL_DONE, F, SK, ("b",), True),
    (R.ALL_DONE, F, F, (), True),
    (R.ALL_DONE, SK, SK, ("a", "b"), True),
    # all_failed: runs when every upstream failed (a skip after a failure counts); skipped once one succeeded
    (R.ALL_FAILED, F, SK, (), True),
    (R.ALL_FAILED, F, RUN, (), None),
    (R.ALL_FAILED, F, OK, (), (False, "trigger rule all_failed: upstream 'b' succeeded")),
    (R.ALL_FAILED, SK, F, ("a",), (False, "trigger rule all_failed: upstream 'a' was skipped")),
    # one_success: fires at the first success without waiting; all skipped: skipped; none succeeded: as failed
    (R.ONE_SUCCESS, OK, RUN, (), True),
    (R.ONE_SUCCESS, F, RUN, (), None),
    (R.ONE_SUCCESS, SK, SK, ("a", "b"), (False, "trigger rule one_success: every upstream task was skipped")),
    (R.ONE_SUCCESS, F, SK, ("b",), (True, "trigger rule one_success: no upstream task succeeded")),
    # one_failed: fires at the first failure without waiting; skipped once all finished with no failure
    (R.ONE_FAILED, F, RUN, (), True),
    (R.ONE_FAILED, SK, RUN, (), True),
    (R.ONE_FAILED, OK, RUN, (), None),
    (R.ONE_FAILED, OK, SK, ("b",), (False, "trigger rule one_failed: no upstream task failed")),
    # none_failed: runs when all succeeded or were skipped on purpose; a failure skips it as failed
    (R.NONE_FAILED, OK, SK, ("b",), True),
    (R.NONE_FAILED, SK, SK, ("a", "b"), True),
    (R.NONE_FAILED, OK, RUN, (), None),
    (R.NONE_FAILED, SK, F, ("a",), (True, "trigger rule none_failed: upstream 'b' failed")),
    (R.NONE_FAILED, OK, SK, (), (True, "trigger rule none_failed: upstream 'b' was skipped after a failure")),
]


@pytest.mark.parametrize(("rule", "a", "b", "deliberate", "want"), CASES)
def test_trigger_rule(rule, a, b, deliberate, want):
    got = verdict(rule, a, b, deliberate)
    if isinstance(want, tuple):
        assert got == Skip(want[1], failure=want[0])
    else:
        assert got is want


@pytest.mark.parametrize("rule", list(TriggerRule))
def test_a_task_without_upstream_runs_whatever_its_rule(rule):
    assert trigger("t", rule, [], {}) is True


def test_every_rule_has_cases():
    assert {c[0] for c in CASES} == set(TriggerRule)


# -- evaluate: rules over a whole DAG ---------------------------------------------------------------------------

CLEANUP = {"load": [], "report": ["load"], "cleanup": ["load"], "alert": ["load"]}
CLEANUP_RULES = Rules.of(CLEANUP, {"cleanup": R.ALL_DONE, "alert": R.ONE_FAILED})


def test_a_handled_failure_does_not_stop_the_run_and_its_handlers_run():
    assert CLEANUP_RULES.tolerant == {"load"}
    states = {"load": F, "report": P, "cleanup": P, "alert": P}
    assert not stops_run(states, "stop", CLEANUP_RULES)
    d = evaluate(CLEANUP, states, "stop", CLEANUP_RULES)
    assert sorted(d.submit) == ["alert", "cleanup"] and d.skip == ["report"] and d.cancel == []
    assert d.why["report"] == Skip("trigger rule all_success: upstream 'load' failed", failure=True)
    # the leaf 'report' was skipped because of the failure: the run fails once its handlers are done
    done = {"load": F, "report": SK, "cleanup": OK, "alert": OK}
    assert evaluate(CLEANUP, done, "stop", CLEANUP_RULES).outcome == RunState.FAILED
    assert run_outcome(done, CLEANUP) == (RunState.FAILED, "task 'load' did not succeed")


def test_an_unhandled_failure_still_stops_the_run():
    deps = {"a": [], "b": ["a"], "c": [], "d": ["c"], "e": ["c"]}
    rules = Rules.of(deps, {"e": R.ALL_DONE})
    d = evaluate(deps, {"a": F, "b": P, "c": RUN, "d": P, "e": P}, "stop", rules)
    assert d.outcome == RunState.FAILED and d.cancel == ["c"] and d.skip == ["b", "d", "e"]
    assert d.why["e"] == Skip("run stopped: task 'a' failed", failure=True)


def test_tolerance_reaches_every_ancestor_of_a_handling_task():
    deps = {"a": [], "b": ["a"], "c": ["b"], "x": []}
    assert Rules.of(deps, {"c": R.ALL_DONE}).tolerant == {"a", "b"}
    # a -> b (all_success, skipped after the failure) -> c (all_done) runs: Airflow's upstream_failed is done
    d = evaluate(deps, {"a": F, "b": P, "c": P, "x": OK}, "stop", Rules.of(deps, {"c": R.ALL_DONE}))
    assert d.skip == ["b"] and d.submit == ["c"]


def test_run_succeeds_when_no_leaf_failed():
    deps = {"load": [], "alert": ["load"]}
    states = {"load": F, "alert": OK}  # the failure was handled by a one_failed leaf that succeeded
    assert run_outcome(states, deps) == (RunState.SUCCEEDED, "no leaf task failed (1 succeeded, 1 failed)")
    # a leaf skipped on purpose is fine; one skipped because of a failure is not
    deps = {"a": [], "b": ["a"], "c": ["a"]}
    states = {"a": OK, "b": SK, "c": OK}
    assert run_outcome(states, deps, Facts(deliberate={"b"}))[0] == RunState.SUCCEEDED
    assert run_outcome(states, deps)[0] == RunState.FAILED
    assert run_outcome({"a": OK, "b": RUN, "c": OK}, deps) is None


def test_skips_propagate_by_the_rules_in_one_evaluation():
    # a when: skipped 'eu' on purpose: its all_success child skips on purpose, the none_failed join runs
    deps = {"start": [], "eu": ["start"], "eu_load": ["eu"], "us": ["start"], "join": ["eu_load", "us"]}
    rules = Rules.of(deps, {"join": R.NONE_FAILED})
    d = evaluate(deps, {"start": OK, "eu": SK, "eu_load": P, "us": OK, "join": P}, "stop", rules,
                 Facts(deliberate={"eu"}))
    assert d.skip == ["eu_load"] and d.why["eu_load"] == Skip("trigger rule all_success: upstream 'eu' was skipped")
    assert d.submit == ["join"]


# -- switch ------------------------------------------------------------------------------------------------------

SWITCH = {"route": [], "a": ["route"], "b": ["route"], "a_next": ["a"], "join": ["a_next", "b"]}


def test_a_switch_skips_the_branches_it_did_not_choose_whatever_their_rule():
    rules = Rules.of(SWITCH, {"a": R.ALL_DONE, "join": R.NONE_FAILED})
    facts = Facts(chosen={"route": ["b"]})
    d = evaluate(SWITCH, {"route": OK, "a": P, "b": P, "a_next": P, "join": P}, "stop", rules, facts)
    assert d.submit == ["b"]
    assert d.skip == ["a", "a_next"]
    assert d.why["a"] == Skip("switch 'route' chose 'b'")
    assert d.why["a_next"] == Skip("trigger rule all_success: upstream 'a' was skipped")
    # the join waits for the chosen branch, then runs (none_failed: skipped on purpose is fine)
    done = evaluate(SWITCH, {"route": OK, "a": SK, "b": OK, "a_next": SK, "join": P}, "stop", rules,
                    Facts(deliberate={"a", "a_next"}, chosen={"route": ["b"]}))
    assert done.submit == ["join"]


def test_a_switch_that_chose_nothing_skips_every_branch():
    d = evaluate(SWITCH, {"route": OK, "a": P, "b": P, "a_next": P, "join": P}, "stop", Rules(),
                 Facts(chosen={"route": []}))
    assert sorted(d.skip) == ["a", "a_next", "b", "join"]
    assert d.why["b"] == Skip("switch 'route' chose no branch")
    assert d.outcome == RunState.SUCCEEDED  # every leaf was skipped on purpose


def test_incremental_step_skips_unchosen_branches_too():
    kids = {"route": ["a", "b"], "a": ["a_next"], "b": ["join"], "a_next": ["join"], "join": []}
    d = dag.step(SWITCH, kids, {"route": OK, "a": P, "b": P}, {"route"}, Rules(), Facts(chosen={"route": ["a"]}))
    assert d.submit == ["a"] and d.skip == ["b"] and d.why["b"].reason == "switch 'route' chose 'a'"
