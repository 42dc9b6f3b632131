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


class Run:
    """A run's states plus what the decider keeps beside them (which skips were deliberate, what switches chose)."""

    def __init__(self, deps: dict[str, list[str]], rules: dag.Rules, switches: dict[str, list[str]]):
        self.deps, self.rules, self.switches = deps, rules, switches
        self.states = {n: TaskState.PENDING for n in deps}
        self.deliberate: set[str] = set()
        self.chosen: dict[str, list[str]] = {}

    def facts(self) -> dag.Facts:
        return dag.Facts(set(self.deliberate), dict(self.chosen))

    def apply(self, d: dag.Decision) -> None:
        apply(self.states, d)
        self.deliberate |= {n for n in d.skip if not d.why[n].failure}

    def finish(self, name: str, result: TaskState) -> None:
        self.states[name] = result
        if name in self.switches and result == TaskState.SUCCEEDED:
            self.chosen[name] = self.switches[name]

    def same(self, other: Run) -> bool:
        return (self.states, self.deliberate, self.chosen) == (other.states, other.deliberate, other.chosen)


def full(r: Run, on_failure: str) -> RunState | None:
    for _ in range(len(r.deps) + 2):
        d = dag.evaluate(r.deps, r.states, on_failure, r.rules, r.facts())
        if d.empty:
            return None
        r.apply(d)
        if d.outcome is not None:
            return d.outcome
    raise AssertionError("did not settle")


def incremental(r: Run, on_failure: str, changed: set[str]) -> RunState | None:
    """What ``master.advance_locked`` does on its common path."""
    if dag.stops_run({n: r.states[n] for n in changed}, on_failure, r.rules):
        return full(r, on_failure)
    kids = children_of(r.deps)
    while changed:
        d = dag.step(r.deps, kids, r.states, changed, r.rules, r.facts())
        r.apply(d)
        changed = set(d.skip)
    if not any(s in LIVE for s in r.states.values()):
        outcome = dag.run_outcome(r.states, r.deps, r.facts())
        assert outcome is not None
        return outcome[0]
    return None


@settings(max_examples=400, deadline=None)
@given(deps=dags(), on_failure=st.sampled_from(["stop", "continue"]), data=st.data())
def test_incremental_advance_decides_like_full_evaluation(deps, on_failure, data):
    rules = dag.Rules.of(deps, {n: data.draw(st.sampled_from(list(dag.TriggerRule))) for n in deps})
    kids = children_of(deps)
    # some tasks with children are switches: when they succeed, they choose some of their children
    switches = {n: sorted(data.draw(st.sets(st.sampled_from(kids[n])))) for n in deps
                if kids[n] and data.draw(st.booleans())}
    a = Run(deps, rules, switches)
    out_a = full(a, on_failure)  # start_run uses the full evaluator on both paths
    b = Run(deps, rules, switches)
    b.states, b.deliberate = dict(a.states), set(a.deliberate)
    out_b = out_a
    while out_a is None:
        submitted = sorted(n for n, s in a.states.items() if s == TaskState.SUBMITTED)
        assert submitted, f"a running run with nothing submitted: {a.states}"
        name = data.draw(st.sampled_from(submitted))
        result = data.draw(st.sampled_from([TaskState.SUCCEEDED, TaskState.FAILED]))
        a.finish(name, result)
        b.finish(name, result)
        out_a = full(a, on_failure)
        out_b = incremental(b, on_failure, {name})
        assert b.same(a)
        assert out_b == out_a
    assert all(s not in LIVE for s in a.states.values())


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
