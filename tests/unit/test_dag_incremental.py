"""The master's incremental path (``dag.step`` + ``dag.run_outcome``, cost independent of DAG size) must make
exactly the decisions of the full evaluator (``dag.evaluate``), for any DAG and any order of completions."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from app import dag
from app.states import RunState, TaskState

LIVE = (TaskState.PENDING, TaskState.SUBMITTED, TaskState.RUNNING)


@st.composite
def dags(draw: st.DrawFn) -> dict[str, list[str]]:
    n = draw(st.integers(1, 10))
    deps: dict[str, list[str]] = {}
    for i in range(n):
        ups = draw(st.lists(st.integers(0, i - 1), unique=True, max_size=3)) if i else []
        deps[f"t{i}"] = [f"t{j}" for j in ups]
    return deps


def children_of(deps: dict[str, list[str]]) -> dict[str, list[str]]:
    kids: dict[str, list[str]] = {n: [] for n in deps}
    for n, ups in deps.items():
        for u in ups:
            kids[u].append(n)
    return kids


def apply(states: dict[str, TaskState], d: dag.Decision) -> None:
    for n in d.submit:
        states[n] = TaskState.SUBMITTED
    for n in d.skip:
        states[n] = TaskState.SKIPPED
    for n in d.cancel:
        states[n] = TaskState.CANCELLED


def full(deps: dict[str, list[str]], states: dict[str, TaskState], on_failure: str) -> RunState | None:
    for _ in range(len(deps) + 2):
        d = dag.evaluate(deps, states, on_failure)
        if d.empty:
            return None
        apply(states, d)
        if d.outcome is not None:
            return d.outcome
    raise AssertionError("did not settle")


def incremental(deps: dict[str, list[str]], states: dict[str, TaskState], on_failure: str,
                changed: set[str]) -> RunState | None:
    """What ``master.advance_locked`` does on its common path."""
    if dag.stops_run({n: states[n] for n in changed}, on_failure):
        return full(deps, states, on_failure)
    kids = children_of(deps)
    while changed:
        d = dag.step(deps, kids, states, changed)
        apply(states, d)
        changed = set(d.skip)
    if not any(s in LIVE for s in states.values()):
        outcome = dag.run_outcome(states)
        assert outcome is not None
        return outcome[0]
    return None


@settings(max_examples=400, deadline=None)
@given(deps=dags(), on_failure=st.sampled_from(["stop", "continue"]), data=st.data())
def test_incremental_advance_decides_like_full_evaluation(deps, on_failure, data):
    a = {n: TaskState.PENDING for n in deps}
    out_a = full(deps, a, on_failure)  # start_run uses the full evaluator on both paths
    b = dict(a)
    out_b = out_a
    while out_a is None:
        submitted = sorted(n for n, s in a.items() if s == TaskState.SUBMITTED)
        assert submitted, f"a running run with nothing submitted: {a}"
        name = data.draw(st.sampled_from(submitted))
        result = data.draw(st.sampled_from([TaskState.SUCCEEDED, TaskState.FAILED]))
        a[name] = b[name] = result
        out_a = full(deps, a, on_failure)
        out_b = incremental(deps, b, on_failure, {name})
        assert b == a
        assert out_b == out_a
    assert all(s not in LIVE for s in a.values())


def test_step_only_looks_at_children_of_changed_tasks():
    deps = {"a": [], "b": ["a"], "c": [], "d": ["c"]}
    kids = children_of(deps)
    states = {"a": TaskState.SUCCEEDED, "b": TaskState.PENDING}  # c and d are not even loaded
    assert dag.step(deps, kids, states, {"a"}) == dag.Decision(submit=["b"])


def test_run_outcome_waits_for_live_tasks_and_names_the_failure():
    assert dag.run_outcome({"a": TaskState.SUCCEEDED, "b": TaskState.RUNNING}) is None
    assert dag.run_outcome({"a": TaskState.SUCCEEDED}) == (RunState.SUCCEEDED, "all tasks succeeded")
    assert dag.run_outcome({"a": TaskState.SKIPPED, "b": TaskState.FAILED}) == (
        RunState.FAILED, "task 'b' did not succeed")
