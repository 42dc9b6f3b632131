"""Operator actions: register a workflow, cancel a run, retry a run from its failed tasks, and the run-control
commands (DolphinScheduler's): pause and resume a run, force-success a failed task, rerun a task and everything
downstream of it. Each is a guarded transition of :mod:`app.states` under the run's row lock, with its event."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from app import templating
from app.clock import utcnow
from app.db import repository as repo
from app.definitions import WorkflowSpec, parse_definition
from app.dispatch import publish_after_commit
from app.errors import DefinitionError, InvalidState, NotFound
from app.params import ARTICLE, Parameter, Unfit, check_value, dag_parameters, json_type
from app.records import RunRecord, TaskRecord, WorkflowRecord
from app.runtime import Runtime
from app.services import attempts
from app.services.master import advance_locked, cancel_locked
from app.states import RUN_TERMINAL, TASK_LIVE, RunKind, RunState, TaskKind, TaskState


def check_definition(
    s: Session, definition: WorkflowSpec | dict[str, Any], *, python_modules: tuple[str, ...] = (),
) -> tuple[WorkflowSpec, list[str]]:
    """Every check a registration makes, storing nothing (``tideflow workflow validate``): the definition, its
    name against the code workflows, its subworkflows, and each ``python`` task's function against its ``args``
    (imported when this process can; ``python_modules``: ``TIDEFLOW_PYTHON_MODULES``, never crossed). Returns the
    spec and the warnings (what could not be checked here); a problem is a :class:`DefinitionError`."""
    spec = parse_definition(definition)
    from app.code import registry
    from app.executors.python import check_call

    code = registry.get_workflow(spec.name)
    if code is not None:
        raise DefinitionError([f"workflow '{spec.name}' is a code workflow in this process ({code.module}."
                               f"{code.qualname}): a DAG cannot take its name (a name is one kind of workflow)"])
    problems = _child_problems(s, spec)
    warnings: list[str] = []
    for t in spec.tasks:
        if t.type == "python" and t.function is not None:
            problem, warning = check_call(t.function, t.args or {}, python_modules)
            problems += [f"task '{t.name}': {problem}"] if problem else []
            warnings += [f"task '{t.name}': {warning}"] if warning else []
    if problems:
        raise DefinitionError(problems)
    return spec, warnings


def register_workflow(
    s: Session, definition: WorkflowSpec | dict[str, Any], *, python_modules: tuple[str, ...] = (),
) -> tuple[WorkflowRecord, bool, list[str]]:
    """Store a definition. Same content as the latest version: returns it (created=False); anything else
    becomes the new latest version. Invalid: :class:`DefinitionError` and nothing is stored. Also returns the
    warnings of :func:`check_definition`."""
    spec, warnings = check_definition(s, definition, python_modules=python_modules)
    digest = spec.digest()
    from app.services import scheduler

    scheduler.sync(s, spec.name, spec.schedules())  # its schedules (paused ones stay paused)
    latest = repo.workflow(s, spec.name)
    if latest is not None and latest.digest == digest:
        return latest, False, warnings
    return repo.insert_workflow(s, spec.name, digest, spec.canonical()), True, warnings


def _child_problems(s: Session, spec: WorkflowSpec) -> list[str]:
    """What can be checked of a subworkflow task before anything runs: its child is registered, every parameter it
    passes is declared by the child (its latest version: the one a run would start), every required one is passed,
    and each passed value whose type is known now is of the declared type (:func:`_passed_type`)."""
    problems: list[str] = []
    children: dict[str, list[Parameter] | None] = {}
    parent = {p.name: p for p in dag_parameters(spec.params)[0]}
    for t in spec.tasks:
        if t.type != "subworkflow" or not t.workflow:
            continue
        if t.workflow not in children:
            children[t.workflow] = _declared_params(s, t.workflow)
        child = children[t.workflow]
        if child is None:
            problems.append(f"task '{t.name}': subworkflow '{t.workflow}' is not registered (register it first, or "
                            "for a code workflow import its module in this process: TIDEFLOW_WORKFLOW_MODULES)")
            continue
        declared = ", ".join(sorted(p.name for p in child)) or "none"
        passed = t.params or {}
        problems.extend(
            f"task '{t.name}': params: '{p}' is not a parameter of workflow '{t.workflow}' (declared: {declared})"
            for p in sorted(set(passed) - {p.name for p in child}))
        problems.extend(f"task '{t.name}': params: workflow '{t.workflow}' requires parameter '{p.name}'"
                        for p in child if p.required and p.name not in passed)
        for p in child:
            if p.name in passed:
                problem = _passed_type(p, passed[p.name], parent)
                if problem:
                    problems.append(f"task '{t.name}': params: '{p.name}' ({p.type} in workflow '{t.workflow}'): "
                                    f"{problem}")
    return problems


#: the types of the run placeholders (``{{ run.id }}`` ...), kept by a value that is one placeholder
_RUN_TYPES = {"id": "integer", "priority": "integer", "workflow": "string"}


def _passed_type(p: Parameter, value: Any, parent: dict[str, Parameter]) -> str | None:
    """Why ``value``, passed to the child's parameter ``p``, cannot fit it, when that is known at registration: a
    literal is checked as a start would check it; a value that is one placeholder keeps the type of what it names
    (a parent parameter's declared type, ``run.id``'s integer); text around a placeholder makes a string. An
    upstream result's type is not known before it runs."""
    refs = templating.references(value)
    if not refs:
        try:
            check_value(p, value)
        except Unfit as exc:
            return f"{json.dumps(value)} is not {exc}"
        return None
    if p.type == "any":
        return None
    if isinstance(value, str) and len(refs) == 1 and value.strip().startswith("{{") and value.strip().endswith("}}"):
        scope, path = refs[0]
        if scope == "params" and len(path) == 1 and path[0] in parent:
            source = parent[path[0]].type
        elif scope == "run":
            source = _RUN_TYPES.get(path[0], "any")
        else:
            return None
    else:
        source = json_type(value)  # text around placeholders: a string; a list or mapping holding some
    if source in ("any", p.type) or (source, p.type) == ("integer", "number"):
        return None
    return f"{value!r} is {ARTICLE[source]}"


def _declared_params(s: Session, name: str) -> list[Parameter] | None:
    """The typed parameters a workflow declares: a code workflow's (registered in this process; stored: its names,
    untyped), or the latest DAG version's. None: no such workflow."""
    from app.code import registry

    code = registry.get_workflow(name)
    if code is not None:
        return code.parameters()
    row = repo.workflow(s, name)
    if row is None:
        return None
    if row.definition.get("kind") == "code":
        required = set(row.definition.get("required", []))
        return [Parameter(n, required=n in required, nullable=True) for n in row.definition.get("params", [])]
    return dag_parameters(dict(row.definition.get("params") or {}))[0]


def cancel_run(rt: Runtime, run_id: int, *, actor: str = "api", reason: str = "cancelled by request") -> None:
    """Cancel: pending tasks never start, running ones lose their lease and stop, child runs are cancelled."""
    with rt.db.transaction() as s:
        run = repo.lock_run(s, run_id)
        if run is None:
            raise NotFound(f"run {run_id} does not exist")
        if run.state in RUN_TERMINAL:
            raise InvalidState(f"run {run_id} is already {run.state}")
        cancel_locked(s, rt, run, actor=actor, reason=reason)


def retry_run(rt: Runtime, run_id: int, *, actor: str = "api") -> int:
    """Re-run a failed or cancelled run from the tasks that did not succeed (their retry budget resets).
    Returns how many tasks were reset."""
    with rt.db.transaction() as s:
        run = repo.lock_run(s, run_id)
        if run is None:
            raise NotFound(f"run {run_id} does not exist")
        if run.state not in (RunState.FAILED, RunState.CANCELLED):
            raise InvalidState(f"run {run_id} is {run.state}; only failed or cancelled runs can be retried")
        if run.parent_task_run_id is not None:
            raise InvalidState(f"run {run_id} is a child run; retry its parent run instead")
        if run.kind == RunKind.CODE:
            raise InvalidState(f"run {run_id} is a code run: start it again (a code run's history is replayed, "
                               "not retried from a task)")
        reset = 0
        for task in repo.run_tasks(s, run.id):
            if task.state in (TaskState.FAILED, TaskState.SKIPPED, TaskState.CANCELLED):
                reset += _reset(s, task, actor=actor, reason="run retried")
        repo.transition_run(s, run, RunState.RUNNING, actor=actor, reason=f"retried ({reset} tasks reset)")
        fresh = repo.get_run(s, run.id)
        assert fresh is not None
        advance_locked(s, rt, fresh, actor=actor, full=True)
        return reset


def _reset(s: Session, task: TaskRecord, *, actor: str, reason: str) -> bool:
    """A finished task back to ``pending``, to run again as a new attempt (its retry budget resets; its attempts
    and events are kept: the history is append-only)."""
    return repo.transition_task(s, task, TaskState.PENDING, actor=actor, reason=reason, failures=0, lost_attempts=0,
                                error=None, result=None, finished_at=None, handled=True, child_run_id=None)


def _locked_run(s: Session, run_id: int) -> RunRecord:
    run = repo.lock_run(s, run_id)
    if run is None:
        raise NotFound(f"run {run_id} does not exist")
    return run


def pause_run(rt: Runtime, run_id: int, *, actor: str = "api", reason: str = "paused by request") -> None:
    """``running -> paused``: no new task starts (the decider is not consulted, a submitted task's claim is
    refused); running tasks finish. A code run: no step is started and nothing is replayed until resumed."""
    with rt.db.transaction() as s:
        run = _locked_run(s, run_id)
        if run.state != RunState.RUNNING:
            raise InvalidState(f"run {run_id} is {run.state}; only a running run can be paused")
        repo.transition_run(s, run, RunState.PAUSED, actor=actor, reason=reason)


def resume_run(rt: Runtime, run_id: int, *, actor: str = "api") -> tuple[RunState, str]:
    """``run resume``: a paused run (any kind) or a blocked code run continues. Returns which it was (``paused``
    or ``blocked``) and the run's state after (a blocked run is blocked again if its code still diverges)."""
    with rt.db.read() as s:
        run = repo.get_run(s, run_id)
        if run is None:
            raise NotFound(f"run {run_id} does not exist")
    if run.state == RunState.BLOCKED:
        from app.code.runs import resume

        return RunState.BLOCKED, resume(rt, run_id, actor=actor)
    with rt.db.transaction() as s:
        run = _locked_run(s, run_id)
        if run.state != RunState.PAUSED:
            raise InvalidState(f"run {run_id} is {run.state}; only a paused run or a blocked code run can be resumed")
        repo.transition_run(s, run, RunState.RUNNING, actor=actor, reason="resumed")
        # the claims refused while paused dropped their messages: publish each submitted task again
        now = utcnow()
        messages = [m for task in repo.live_steps(s, run_id) if task.state == TaskState.SUBMITTED
                    if (m := attempts.republish(s, rt, replace(task, workflow_name=run.workflow_name), actor=actor,
                                                now=now, reason="run resumed")) is not None]
        publish_after_commit(s, rt.dispatcher, execute=messages)
        fresh = repo.get_run(s, run_id)
        assert fresh is not None
        # what ended while paused was marked handled without a decision: decide from the whole run
        advance_locked(s, rt, fresh, actor=actor, full=True)
        after = repo.get_run(s, run_id)
        return RunState.PAUSED, str(after.state if after is not None else RunState.RUNNING)


def _task_of(s: Session, task_run_id: int) -> tuple[RunRecord, TaskRecord]:
    """The task run and its run (locked; the task read again under that lock) for a task command."""
    found = repo.get_task(s, task_run_id)
    if found is None:
        raise NotFound(f"task run {task_run_id} does not exist")
    run = _locked_run(s, found.run_id)
    task = repo.get_task(s, task_run_id)
    assert task is not None
    return run, task


def _descendants(rt: Runtime, s: Session, run: RunRecord, name: str) -> set[str]:
    children = rt.workflow(s, run.workflow_id).children
    found: set[str] = set()
    todo = list(children.get(name, []))
    while todo:
        n = todo.pop()
        if n not in found:
            found.add(n)
            todo.extend(children.get(n, []))
    return found


def force_success_task(
    rt: Runtime, task_run_id: int, *, actor: str = "api", reason: str = "by request", result: Any = None,
) -> tuple[int, str]:
    """``failed -> succeeded`` by an operator, with ``result`` (JSON; default null). A DAG run: its downstream
    tasks that were skipped (or, in a failed run, every task the failure skipped or cancelled) go back to
    ``pending`` and the run continues: a failed run is running again; a paused run continues when resumed. A code
    run: :func:`_force_success_step`. Returns the run's id and its state after."""
    from app.code.engine import to_json

    result = to_json(result, "the forced result")
    with rt.db.transaction() as s:
        run, task = _task_of(s, task_run_id)
        if run.kind == RunKind.CODE:
            return run.id, _force_success_step(s, rt, run, task, actor=actor, reason=reason, result=result)
        if task.state != TaskState.FAILED:
            raise InvalidState(f"task '{task.name}' (task run {task.id}) of run {run.id} is {task.state}; only a "
                               "failed task can be forced to success")
        if run.state not in (RunState.RUNNING, RunState.PAUSED, RunState.FAILED):
            raise InvalidState(f"run {run.id} is {run.state}; retry it instead")
        if run.state == RunState.FAILED and run.parent_task_run_id is not None:
            raise InvalidState(f"run {run.id} is a failed child run; act on its parent run instead")
        now = utcnow()
        if not repo.transition_task(s, task, TaskState.SUCCEEDED, actor=actor, now=now, finished_at=now,
                                    handled=True, result=result, error=None,
                                    reason=f"forced to success by {actor}: {reason}"):
            raise InvalidState(f"task run {task.id} changed meanwhile; try again")
        downstream = _descendants(rt, s, run, task.name)
        for other in repo.run_tasks(s, run.id):
            if other.state in (TaskState.SKIPPED, TaskState.CANCELLED) and \
                    (other.name in downstream or run.state == RunState.FAILED):
                _reset(s, other, actor=actor, reason=f"task '{task.name}' was forced to success")
        return run.id, _continue(s, rt, run, actor=actor, reason=f"task '{task.name}' forced to success")


# -- a code run's steps: force-success and rerun are resets of its history (Temporal's reset) -------------------


def _step_label(task: TaskRecord) -> str:
    from app.code.engine import describe, step_name

    return f"position {task.seq} ({describe(task.kind, step_name(task.name))}, task run {task.id})"


def _check_code_step(run: RunRecord, task: TaskRecord) -> None:
    if task.superseded_at is not None:
        raise InvalidState(f"task run {task.id} of code run {run.id} was superseded by a reset: act on the step "
                           f"now at position {task.seq}")
    if run.parent_task_run_id is not None and run.state in RUN_TERMINAL:
        raise InvalidState(f"run {run.id} is a finished child run; act on its parent run instead")
    if run.continued_run_id is not None:
        raise InvalidState(f"run {run.id} continued as new (run {run.continued_run_id}): act on that run instead")


def _reset_code_run(s: Session, rt: Runtime, run: RunRecord, from_seq: int, *, actor: str, why: str) -> int:
    """Supersede the run's steps at positions ``>= from_seq`` (kept, out of the history; the signals they consumed
    are pending again) and clear what the run's end left behind (its cancel request, result, published state: the
    replay rebuilds them). Returns how many steps were superseded."""
    now = utcnow()
    gone = repo.supersede_steps(s, run.id, from_seq, actor=actor, reason=why, now=now)
    if run.state in RUN_TERMINAL:
        repo.set_run_values(s, run.id, cancel_requested=False, result=None, state_values={})
    return len(gone)


def _force_success_step(
    s: Session, rt: Runtime, run: RunRecord, task: TaskRecord, *, actor: str, reason: str, result: Any,
) -> str:
    """A code run's failed activity step becomes succeeded with ``result`` (its failed attempts stay), so the
    replay's ``ctx.activity`` returns ``result`` at its position. The positions recorded after it were recorded by
    a function that saw the failure: they are superseded as by :func:`_rerun_step` (and replayed anew), which is
    refused while one of them is still live. A finished run is running again and replayed; a paused one waits for
    resume."""
    _check_code_step(run, task)
    if task.kind != TaskKind.ACTIVITY:
        raise InvalidState(f"{_step_label(task)} of code run {run.id} is not an activity; only a failed activity "
                           "step can be forced to success")
    if task.state != TaskState.FAILED:
        raise InvalidState(f"{_step_label(task)} of code run {run.id} is {task.state}; only a failed activity step "
                           "can be forced to success")
    if run.state not in RUN_TERMINAL | {RunState.RUNNING, RunState.PAUSED}:
        raise InvalidState(f"run {run.id} is {run.state}; resume it first")
    later = [t for t in repo.run_steps(s, run.id) if (t.seq or 0) > (task.seq or 0)]
    live = [t for t in later if t.state in TASK_LIVE]
    if live:
        raise InvalidState(f"run {run.id} is {run.state} with steps after position {task.seq} still live (from "
                           f"position {live[0].seq}): forcing it would discard them; wait until they end, or cancel "
                           "the run, then force it")
    now = utcnow()
    if not repo.transition_task(s, task, TaskState.SUCCEEDED, actor=actor, now=now, finished_at=now, handled=True,
                                result=result, error=None,
                                reason=f"forced to success by {actor} with result {json.dumps(result)[:200]}: "
                                       f"{reason}"):
        raise InvalidState(f"task run {task.id} changed meanwhile; try again")
    _reset_code_run(s, rt, run, (task.seq or 0) + 1, actor=actor, why=f"position {task.seq} forced to success")
    return _continue(s, rt, run, actor=actor, reason=f"{_step_label(task)} forced to success")


def _rerun_step(s: Session, rt: Runtime, run: RunRecord, task: TaskRecord, *, actor: str) -> tuple[str, int]:
    """Temporal's reset: in a finished code run, the step at ``task``'s position and every one after it are
    superseded (kept, out of the history) and the run is replayed: earlier positions return their recorded
    results, this one and the rest run anew."""
    _check_code_step(run, task)
    if run.state not in RUN_TERMINAL:
        raise InvalidState(f"run {run.id} is {run.state}; a step can be rerun only in a finished run")
    live = [t for t in repo.run_steps(s, run.id) if (t.seq or 0) >= (task.seq or 0) and t.state in TASK_LIVE]
    if live:  # a finished run's steps all ended (its end stopped them): this is a guard, not a case
        raise InvalidState(f"run {run.id} has a live step at position {live[0].seq}; try again when it has ended")
    why = f"rerun from position {task.seq}"
    reset = _reset_code_run(s, rt, run, task.seq or 0, actor=actor, why=why)
    return _continue(s, rt, run, actor=actor, reason=f"{why} ({reset} steps superseded)"), reset


def rerun_task(rt: Runtime, task_run_id: int, *, actor: str = "api") -> tuple[int, str, int]:
    """"Start from this node": in a finished DAG run, the task and every task downstream of it go back to
    ``pending`` (new attempts; earlier ones stay in the history) and the run is running again; in a finished code
    run, a reset to the step's position (:func:`_rerun_step`). Returns the run's id, its state after and how many
    tasks were reset (a code run: steps superseded)."""
    with rt.db.transaction() as s:
        run, task = _task_of(s, task_run_id)
        if run.kind == RunKind.CODE:
            state, reset = _rerun_step(s, rt, run, task, actor=actor)
            return run.id, state, reset
        if run.state not in RUN_TERMINAL:
            raise InvalidState(f"run {run.id} is {run.state}; a task can be rerun only in a finished run")
        if run.parent_task_run_id is not None:
            raise InvalidState(f"run {run.id} is a child run; rerun its parent's task instead")
        names = {task.name} | _descendants(rt, s, run, task.name)
        reset = sum(_reset(s, t, actor=actor, reason=f"rerun from task '{task.name}'")
                    for t in repo.run_tasks(s, run.id) if t.name in names and t.state != TaskState.PENDING)
        why = f"rerun from task '{task.name}' ({reset} tasks reset)"
        return run.id, _continue(s, rt, run, actor=actor, reason=why), reset


def _continue(s: Session, rt: Runtime, run: RunRecord, *, actor: str, reason: str) -> str:
    """After a task command: a finished run is running again; a running one is advanced from the whole run; a
    paused one stays paused (its resume decides). Returns the run's state after."""
    if run.state in RUN_TERMINAL:
        repo.transition_run(s, run, RunState.RUNNING, actor=actor, reason=reason)
    elif run.state == RunState.PAUSED:
        return str(run.state)
    fresh = repo.get_run(s, run.id)
    assert fresh is not None
    advance_locked(s, rt, fresh, actor=actor, full=True)
    after = repo.get_run(s, run.id)
    return str(after.state if after is not None else RunState.RUNNING)


# -- retention ---------------------------------------------------------------------------------------------------

#: the shortest ``older_than`` a prune accepts: a message for a task of a run may still arrive (and must find its
#: row, or be retried until TIDEFLOW_MISSING_ROW_DEADLINE_SECONDS) well after the run has finished
PRUNE_MIN_AGE = timedelta(hours=1)


@dataclass
class PruneReport:
    cutoff: datetime
    runs: int = 0
    tasks: int = 0
    attempts: int = 0
    events: int = 0
    signals: int = 0
    kept_live_trees: int = 0  #: finished top-level runs kept because a child run of theirs is not finished
    dry_run: bool = False


def prune_history(rt: Runtime, older_than: timedelta, *, batch_size: int = 500, dry_run: bool = False) -> PruneReport:
    """Delete the runs that finished more than ``older_than`` ago, with everything recorded about them (tasks,
    attempts, events, signals): top-level runs in a terminal state, each with its whole tree of child runs, all of
    them terminal; one transaction per batch of ``batch_size`` top-level runs. A run that a running backfill
    counts, or whose tree holds a run that is not finished, stays. ``dry_run``: count, delete nothing."""
    if older_than < PRUNE_MIN_AGE:
        raise ValueError(f"older_than must be at least {PRUNE_MIN_AGE} (messages of a recently finished run may "
                         "still be in flight)")
    report = PruneReport(cutoff=utcnow() - older_than, dry_run=dry_run)
    after = 0
    while True:
        with rt.db.transaction() as s:  # a dry run too: it locks what it counts, as the prune would
            roots = repo.prunable_runs(s, report.cutoff, batch_size, after=after)
            if not roots:
                return report
            after = roots[-1]
            ids, live = repo.run_trees(s, roots)
            report.kept_live_trees += len(live)
            if dry_run:
                report.runs += len(ids)
                report.tasks += repo.count_tasks(s, ids)
                continue
            deleted = repo.delete_runs(s, ids)
        for key, n in deleted.items():
            setattr(report, key, getattr(report, key) + n)
