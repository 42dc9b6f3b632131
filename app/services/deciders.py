"""Deciders: what runs next in a run, given what changed. The seam between the generic advance loop
(:func:`app.services.master.advance_locked`: lock the run, read what changed, decide, apply, finish the run)
and the kind of workflow. The DAG evaluator is one implementation; the code-workflow replayer
(``app.code.decider``) is the other.

A decider reads (in the caller's transaction, under the run's lock) but never writes: it returns a
:class:`Plan` of task records to submit, skip or cancel, and the run's outcome once it has one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.orm import Session

from app import conditions, dag
from app.db import repository as repo
from app.records import RunRecord, TaskRecord
from app.runtime import LoadedWorkflow, Runtime
from app.states import RunKind, RunState, TaskKind, TaskState
from app.templating import schedule_scope


@dataclass(frozen=True)
class Plan:
    submit: list[TaskRecord] = field(default_factory=list)  # ready: start their next attempt (or child run)
    skip: list[TaskRecord] = field(default_factory=list)  # will never run
    why: dict[int, dag.Skip] = field(default_factory=dict)  # a DAG task's skip reason, by task run id
    finish: list[tuple[TaskRecord, Any, str]] = field(default_factory=list)  # the master ran it: (switch, result, why)
    fail: list[tuple[TaskRecord, str]] = field(default_factory=list)  # cannot start (a condition errs): (task, error)
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
        return not (self.submit or self.skip or self.cancel or self.outcome or self.create or self.finish
                    or self.fail or self.state_values is not None or self.notes)


class Decider(Protocol):
    def decide(self, s: Session, run: RunRecord, changed: Sequence[TaskRecord], *, full: bool) -> Plan:
        """What to do now that ``changed`` (tasks that became terminal since the last decision) changed.
        ``full``: decide from the whole run, not only from what changed (at start, after a retry)."""
        ...


class DagDecider:
    """The DAG evaluator (:mod:`app.dag`) over the run's task rows. Incremental on the common path: only the
    children of what changed are read, so a decision costs the same in a 10-task and a 10,000-task run; the
    whole DAG is evaluated at start, after a retry, and when a failure stops the run.

    A task whose trigger rule is met and that has a ``when:`` condition, or is a ``switch``, is decided here before
    anything is submitted (:meth:`_gate`): a false condition skips it, a switch succeeds with its choice (the
    evaluator then skips the branches it did not choose), and a condition that cannot be evaluated fails it."""

    def __init__(self, workflow: LoadedWorkflow):
        self.wf = workflow

    def decide(self, s: Session, run: RunRecord, changed: Sequence[TaskRecord], *, full: bool) -> Plan:
        rules = self.wf.rules
        if full or dag.stops_run({t.name: t.state for t in changed}, run.on_failure, rules):
            tasks = {t.name: t for t in repo.run_tasks(s, run.id)}
            return self._plan(s, run, dag.evaluate(self.wf.deps, {n: t.state for n, t in tasks.items()},
                                                   run.on_failure, rules, facts(tasks.values())), tasks)
        names = {t.name for t in changed}
        children = {c for n in names for c in self.wf.children[n]}
        if children:
            needed = children | {d for c in children for d in self.wf.deps[c]}
            tasks = {t.name: t for t in repo.tasks_named(s, run.id, needed)}
            decision = dag.step(self.wf.deps, self.wf.children, {n: t.state for n, t in tasks.items()}, names,
                                rules, facts(tasks.values()))
            if not decision.empty:
                return self._plan(s, run, decision, tasks)
        if repo.has_live_tasks(s, run.id):
            return Plan()
        states = repo.task_states(s, run.id)
        outcome = dag.run_outcome(states, self.wf.deps, dag.Facts(repo.deliberate_skips(s, run.id)))
        if outcome is None:
            return Plan()
        reason = outcome[1]
        if outcome[0] == RunState.FAILED:  # the run's end: one more read, to name the cause
            name = dag.culprit(states, rules)
            reason = _caused(reason, next(iter(repo.tasks_named(s, run.id, [name] if name else [])), None))
        return Plan(outcome=outcome[0], reason=reason)

    def _plan(self, s: Session, run: RunRecord, d: dag.Decision, tasks: dict[str, TaskRecord]) -> Plan:
        reason = d.reason
        if d.outcome == RunState.FAILED:
            reason = _caused(reason, tasks.get(dag.culprit({n: t.state for n, t in tasks.items()}, self.wf.rules)
                                               or ""))
        skip = [tasks[n] for n in d.skip]
        why = {tasks[n].id: w for n, w in d.why.items()}
        submit: list[TaskRecord] = []
        finish: list[tuple[TaskRecord, Any, str]] = []
        fail: list[tuple[TaskRecord, str]] = []
        gated = [n for n in d.submit if self.wf.task(n).when is not None or self.wf.task(n).type == "switch"]
        context = self._context(s, run, gated) if gated else {}
        for name in d.submit:
            task = tasks[name]
            if name not in gated:
                submit.append(task)
                continue
            verdict = self._gate(name, context)
            if isinstance(verdict, dag.Skip):
                skip.append(task)
                why[task.id] = verdict
            elif isinstance(verdict, Failed):
                fail.append((task, verdict.error))
            elif verdict is None:
                submit.append(task)
            else:
                finish.append((task, verdict[0], verdict[1]))
        return Plan(submit=submit, skip=skip, why=why, finish=finish, fail=fail,
                    cancel=[tasks[n] for n in d.cancel], outcome=d.outcome, reason=reason)

    def _context(self, s: Session, run: RunRecord, names: Sequence[str]) -> dict[str, Any]:
        """What the conditions of tasks ``names`` read: the run's parameters and the results of the upstream tasks
        they name (those that succeeded), in one query."""
        wanted: set[str] = set()
        for n in names:
            t = self.wf.task(n)
            for source in ([t.when] if t.when is not None else []) + [when for when, _ in t.branches()]:
                wanted.update(conditions.upstream_names(source))
        return {"params": run.params, "upstream": repo.task_results(s, run.id, wanted) if wanted else {},
                "run": {"id": run.id, "priority": run.priority, "workflow": run.workflow_name},
                "schedule": schedule_scope(run.schedule_name, run.schedule_time, run.created_at)}

    def _gate(self, name: str, context: dict[str, Any]) -> dag.Skip | Failed | tuple[Any, str] | None:
        """A ready task's condition and, for a switch, its choice: a :class:`~app.dag.Skip` (its ``when:`` is
        false), :class:`Failed` (a condition could not be evaluated), (result, reason) for a switch, or None: run
        it."""
        t = self.wf.task(name)
        if t.when is not None:
            try:
                if not conditions.evaluate(t.when, context):
                    return dag.Skip(f"when: {t.when} was false")
            except conditions.ConditionError as exc:
                return Failed(f"when: {t.when}: {exc}")
        if t.type != "switch":
            return None
        try:
            chosen, case = conditions.choose(t.branches(), t.default_branch(), context)
        except conditions.ConditionError as exc:
            return Failed(f"switch '{name}': {exc}")
        picked = ", ".join(f"'{c}'" for c in chosen) or "no branch"
        why = (f"case {case + 1} holds: {t.branches()[case][0]}" if case is not None
               else "no case holds: the default branch" if chosen else "no case holds and there is no default")
        return {"next": chosen, "case": case}, f"switch '{name}' chose {picked} ({why})"


@dataclass(frozen=True)
class Failed:
    """A task that fails before it starts (its condition cannot be evaluated)."""

    error: str


def facts(tasks: Iterable[TaskRecord]) -> dag.Facts:
    """What :mod:`app.dag` needs of task rows besides their states: the skipped tasks skipped on purpose (a skip
    because of a failure carries its reason as its ``error``), and what each succeeded switch chose (its
    ``result``)."""
    deliberate: set[str] = set()
    chosen: dict[str, list[str]] = {}
    for t in tasks:
        if t.state == TaskState.SKIPPED and t.error is None:
            deliberate.add(t.name)
        elif t.kind == TaskKind.SWITCH and t.state == TaskState.SUCCEEDED and isinstance(t.result, dict):
            chosen[t.name] = list(t.result.get("next") or [])
    return dag.Facts(deliberate, chosen)


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
