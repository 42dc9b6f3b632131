"""Deciders: what runs next in a run, given what changed. The seam between the generic advance loop
(:func:`app.services.master.advance_locked`: lock the run, read what changed, decide, apply, finish the run)
and the kind of workflow. The DAG evaluator is one implementation; the code-workflow replayer
(``app.code.decider``) is the other.

A decider reads (in the caller's transaction, under the run's lock) but never writes: it returns a
:class:`Plan` of task records to submit, skip or cancel, and the run's outcome once it has one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.orm import Session

from app import dag
from app.db import repository as repo
from app.records import RunRecord, TaskRecord
from app.runtime import LoadedWorkflow, Runtime
from app.states import RunKind, RunState


@dataclass(frozen=True)
class Plan:
    submit: list[TaskRecord] = field(default_factory=list)  # ready: start their next attempt (or child run)
    skip: list[TaskRecord] = field(default_factory=list)  # will never run
    cancel: list[TaskRecord] = field(default_factory=list)  # running, to be stopped
    outcome: RunState | None = None  # the run is over (or, a code run, blocked)
    reason: str = ""
    # code runs (``app.code.decider``):
    create: list[Any] = field(default_factory=list)  # new steps (``app.code.engine.NewStep``) to insert and act on
    result: Any = None  # the run's result, with outcome succeeded
    state_values: dict[str, Any] | None = None  # the run's published state, when it changed
    continue_as_new: dict[str, Any] | None = None  # start a fresh run with these params, linked to this one
    notes: list[str] = field(default_factory=list)  # written to the run's history

    @property
    def empty(self) -> bool:
        return not (self.submit or self.skip or self.cancel or self.outcome or self.create
                    or self.state_values is not None or self.notes)


class Decider(Protocol):
    def decide(self, s: Session, run: RunRecord, changed: Sequence[TaskRecord], *, full: bool) -> Plan:
        """What to do now that ``changed`` (tasks that became terminal since the last decision) changed.
        ``full``: decide from the whole run, not only from what changed (at start, after a retry)."""
        ...


class DagDecider:
    """The DAG evaluator (:mod:`app.dag`) over the run's task rows. Incremental on the common path: only the
    children of what changed are read, so a decision costs the same in a 10-task and a 10,000-task run; the
    whole DAG is evaluated at start, after a retry, and when a failure stops the run."""

    def __init__(self, workflow: LoadedWorkflow):
        self.wf = workflow

    def decide(self, s: Session, run: RunRecord, changed: Sequence[TaskRecord], *, full: bool) -> Plan:
        if full or dag.stops_run({t.name: t.state for t in changed}, run.on_failure):
            tasks = {t.name: t for t in repo.run_tasks(s, run.id)}
            return self._plan(dag.evaluate(self.wf.deps, {n: t.state for n, t in tasks.items()}, run.on_failure),
                              tasks)
        names = {t.name for t in changed}
        children = {c for n in names for c in self.wf.children[n]}
        if children:
            needed = children | {d for c in children for d in self.wf.deps[c]}
            tasks = {t.name: t for t in repo.tasks_named(s, run.id, needed)}
            decision = dag.step(self.wf.deps, self.wf.children, {n: t.state for n, t in tasks.items()}, names)
            if not decision.empty:
                return self._plan(decision, tasks)
        if repo.has_live_tasks(s, run.id):
            return Plan()
        states = repo.task_states(s, run.id)
        outcome = dag.run_outcome(states)
        if outcome is None:
            return Plan()
        reason = outcome[1]
        if outcome[0] == RunState.FAILED:  # the run's end: one more read, to name the cause
            name = dag.culprit(states)
            reason = _caused(reason, next(iter(repo.tasks_named(s, run.id, [name] if name else [])), None))
        return Plan(outcome=outcome[0], reason=reason)

    @staticmethod
    def _plan(d: dag.Decision, tasks: dict[str, TaskRecord]) -> Plan:
        reason = d.reason
        if d.outcome == RunState.FAILED:
            reason = _caused(reason, tasks.get(dag.culprit({n: t.state for n, t in tasks.items()}) or ""))
        return Plan(submit=[tasks[n] for n in d.submit], skip=[tasks[n] for n in d.skip],
                    cancel=[tasks[n] for n in d.cancel], outcome=d.outcome, reason=reason)


def _caused(reason: str, task: TaskRecord | None) -> str:
    """A failed DAG run's error names its cause: the failing task's own error, whole ("task 'load' failed:
    command exited with status 3")."""
    return f"{reason}: {task.error}" if task is not None and task.error else reason


def decider_for(s: Session, rt: Runtime, run: RunRecord) -> Decider:
    if run.kind == RunKind.DAG:
        return DagDecider(rt.workflow(s, run.workflow_id))
    if run.kind == RunKind.CODE:
        from app.code.decider import CodeDecider  # the code engine imports users' modules: only where needed

        return CodeDecider(rt)
    raise ValueError(f"run {run.id}: no decider for runs of kind '{run.kind}'")  # pragma: no cover
