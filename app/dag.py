"""The DAG evaluator: the one narrow piece that decides a run's next step.

Pure: given the definition's dependencies, the tasks' current states and the failure strategy, it returns
a :class:`Decision`. ``app.services.deciders.DagDecider`` adapts it to the advance loop's ``Decider`` interface
(the seam a code-workflow replayer plugs into).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from app.states import TASK_LIVE, TASK_UNSUCCESSFUL, RunState, TaskState


@dataclass(frozen=True)
class Decision:
    submit: list[str] = field(default_factory=list)  # pending tasks whose upstream all succeeded
    skip: list[str] = field(default_factory=list)  # pending/submitted tasks that will never run
    cancel: list[str] = field(default_factory=list)  # running tasks to stop (run stops at a failure)
    outcome: RunState | None = None  # set when the run is finished
    reason: str = ""

    @property
    def empty(self) -> bool:
        return not (self.submit or self.skip or self.cancel or self.outcome)


def evaluate(
    deps: Mapping[str, Sequence[str]], states: Mapping[str, TaskState], on_failure: str = "stop",
) -> Decision:
    """Decide what to do next. ``deps``: task -> upstream names; ``states``: task -> state."""
    if on_failure == "stop" and any(st == TaskState.FAILED for st in states.values()):
        return Decision(
            skip=sorted(n for n, st in states.items() if st in (TaskState.PENDING, TaskState.SUBMITTED)),
            cancel=sorted(n for n, st in states.items() if st == TaskState.RUNNING),
            outcome=RunState.FAILED,
            reason=f"task '{culprit(states)}' failed",
        )

    submit: list[str] = []
    skip: list[str] = []
    # Skipping propagates down the DAG in one pass: walk in dependency order.
    effective = dict(states)
    for name in topological_order(deps):
        if effective[name] != TaskState.PENDING:
            continue
        ups = [effective[d] for d in deps[name]]
        if any(u in TASK_UNSUCCESSFUL for u in ups):
            skip.append(name)
            effective[name] = TaskState.SKIPPED
        elif all(u == TaskState.SUCCEEDED for u in ups):
            submit.append(name)
            effective[name] = TaskState.SUBMITTED

    outcome, reason = run_outcome(effective) or (None, "")
    return Decision(submit=submit, skip=skip, outcome=outcome, reason=reason)


def step(
    deps: Mapping[str, Sequence[str]], children: Mapping[str, Sequence[str]], states: Mapping[str, TaskState],
    changed: Iterable[str],
) -> Decision:
    """The incremental form of :func:`evaluate`, for the master's common path (cost independent of the DAG's
    size): only the children of tasks that ``changed`` (finished or were skipped since the last step) can
    become ready or be skipped. ``states`` must hold those children and their dependencies. It decides
    submit/skip only; a run whose failure stops it, and the run's outcome once nothing is live, are decided
    by :func:`evaluate` and :func:`run_outcome`. Skips propagate one level per step (the caller loops with
    the skipped tasks as the next ``changed``). Property-tested against :func:`evaluate`."""
    submit: list[str] = []
    skip: list[str] = []
    for name in sorted({c for n in changed for c in children[n]}):
        if states[name] != TaskState.PENDING:
            continue
        ups = [states[d] for d in deps[name]]
        if any(u in TASK_UNSUCCESSFUL for u in ups):
            skip.append(name)
        elif all(u == TaskState.SUCCEEDED for u in ups):
            submit.append(name)
    return Decision(submit=submit, skip=skip)


def stops_run(states: Mapping[str, TaskState], on_failure: str) -> bool:
    """Does a failure among ``states`` stop the run (``on_failure: stop``)?"""
    return on_failure == "stop" and any(st == TaskState.FAILED for st in states.values())


def run_outcome(states: Mapping[str, TaskState]) -> tuple[RunState, str] | None:
    """The run's outcome once no task is live (None while one is)."""
    if any(st in TASK_LIVE for st in states.values()):
        return None
    if all(st == TaskState.SUCCEEDED for st in states.values()):
        return RunState.SUCCEEDED, "all tasks succeeded"
    return RunState.FAILED, f"task '{culprit(states)}' did not succeed"


def culprit(states: Mapping[str, TaskState]) -> str | None:
    """The task a failed run names as its cause: the first failed one (by name), else the first that did not
    succeed."""
    failed = sorted(n for n, st in states.items() if st == TaskState.FAILED)
    bad = failed or sorted(n for n, st in states.items() if st != TaskState.SUCCEEDED)
    return bad[0] if bad else None


def topological_order(deps: Mapping[str, Sequence[str]]) -> list[str]:
    """Dependencies first; iterative, so deep DAGs do not hit the recursion limit."""
    done: set[str] = set()
    order: list[str] = []
    for root in deps:
        stack = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if node in done:
                continue
            if expanded:
                done.add(node)
                order.append(node)
                continue
            stack.append((node, True))
            stack.extend((d, False) for d in deps[node] if d not in done)
    return order
