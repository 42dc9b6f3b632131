"""The advance loop and the run lifecycle: start a run, advance it, start child runs, finish and cancel runs.

:func:`advance_locked` is the one advance loop, used by every path that moves a run forward: the master's
``tideflow.advance`` task (:func:`advance_run`), a worker finishing a task when the run's lock is free
(inline, ``app.services.worker``), the reconciler, ``start_run`` and ``retry_run``. Each holds the run's row
lock, so two advances of one run serialise and a join is submitted exactly once. There is no in-memory master
state: everything is re-read.

Nothing is stuck, by one rule with one owner: a task that becomes terminal is *unhandled* until this loop
has applied its consequences (``repository.transition_task`` writes ``handled = false`` on every terminal
transition; only this loop marks tasks handled). The loop keeps going while its own actions end tasks (a child
run that cannot start fails its task, a skip skips the next level), so whatever ends a task, at any position
and on any path, its downstream tasks and its run are decided in the same transaction; and a task ended
elsewhere (a worker, the reconciler, a child run) stays unhandled, which the reconciler sees, until an advance
has acted on it.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from app import templating
from app.clock import utcnow
from app.code import registry
from app.code import runs as code_runs
from app.db import repository as repo
from app.definitions import check_run_params
from app.dispatch import ExecuteMessage, publish_after_commit
from app.errors import DefinitionError, NotFound, TideflowError
from app.params import Parameter, dag_parameters
from app.records import RunRecord, TaskRecord
from app.runtime import Runtime
from app.services import attempts, limits
from app.services.deciders import Plan, decider_for
from app.states import RUN_TERMINAL, TASK_TERMINAL, RunKind, RunState, TaskKind, TaskState

log = logging.getLogger(__name__)

MAX_SUBWORKFLOW_DEPTH = 10


def start_run(
    s: Session, rt: Runtime, workflow_name: str, params: dict[str, Any] | None = None, *,
    priority: int | None = None, version: int | None = None, actor: str = "api", key: str | None = None,
) -> int:
    """Create a run and submit its root tasks in the caller's transaction ``s``. Messages are published
    only when that transaction commits. With a ``key`` an existing run holds, that run's id (nothing new)."""
    return start_run_keyed(s, rt, workflow_name, params, priority=priority, version=version, actor=actor,
                           key=key)[0]


def start_run_keyed(
    s: Session, rt: Runtime, workflow_name: str, params: dict[str, Any] | None = None, *,
    priority: int | None = None, version: int | None = None, actor: str = "api", key: str | None = None,
) -> tuple[int, bool]:
    """:func:`start_run`, saying whether the run is new (False: ``key`` is held by an existing run)."""
    if key is not None:
        existing = repo.run_by_key(s, key)
        if existing is not None:
            return existing.id, False
        try:
            with s.begin_nested():  # racing starts with one key: the unique index lets one insert land
                run = create_run(s, rt, workflow_name, params, priority=priority, version=version, actor=actor,
                                 key=key)
        except IntegrityError:
            existing = repo.run_by_key(s, key)
            if existing is None:
                raise
            return existing.id, False
    else:
        run = create_run(s, rt, workflow_name, params, priority=priority, version=version, actor=actor)
    advance_locked(s, rt, run, actor=actor, full=True)
    return run.id, True


def create_run(
    s: Session, rt: Runtime, workflow_name: str, params: dict[str, Any] | None = None, *,
    priority: int | None = None, version: int | None = None, actor: str = "api",
    parent_task: TaskRecord | None = None, key: str | None = None,
) -> RunRecord:
    """Insert a run and its (pending) task rows; nothing is submitted until it is advanced."""
    wf_row = code_runs.workflow_row(s, workflow_name, version)
    if wf_row is None:
        raise NotFound(f"workflow '{workflow_name}'" + (f" version {version}" if version else "")
                       + " is not registered")
    reason = "started" if parent_task is None else f"started as child of task run {parent_task.id}"
    code = code_runs.is_code(wf_row)
    wf = None if code else rt.workflow(s, wf_row.id)
    merged = dict(params or {}) if wf is None else check_run_params(wf.spec, dict(params or {}))
    concurrency_key = limits.run_key(wf_row.definition, merged)
    queued = limits.admit_run(s, wf_row, concurrency_key)
    state = RunState.QUEUED if queued is not None else RunState.RUNNING
    if queued is not None:
        reason = f"{reason}; queued: {queued}"
    if wf is None:
        return code_runs.insert_run(s, wf_row, params or {}, priority=priority, actor=actor, reason=reason,
                                    parent_task_run_id=parent_task.id if parent_task is not None else None,
                                    key=key, state=state, concurrency_key=concurrency_key)
    if priority is not None and not 0 <= priority <= 9:
        raise DefinitionError([f"priority must be between 0 and 9, not {priority}"])
    prio = wf.spec.priority if priority is None else priority
    run = repo.insert_run(
        s, workflow_row=wf_row, params=merged, priority=prio, on_failure=wf.spec.on_failure,
        parent_task_run_id=parent_task.id if parent_task is not None else None, actor=actor, reason=reason,
        key=key, state=state, concurrency_key=concurrency_key,
    )
    repo.insert_tasks(s, run.id, [
        {**row, "queue": t.queue or rt.settings.default_queue,
         "priority": t.priority if t.priority is not None else prio, **limits.task_key(t.concurrency, merged)}
        for t, row in zip(wf.spec.tasks, wf.task_rows(rt.settings.max_lost_attempts), strict=True)
    ])
    return run


def declared_parameters(s: Session, workflow_name: str) -> list[Parameter] | None:
    """The typed parameters a start of ``workflow_name`` is checked against (:mod:`app.params`): the code workflow
    this process registered, else the latest stored DAG's; None when there is neither (a start says why)."""
    wdef = registry.get_workflow(workflow_name)
    if wdef is not None:
        return wdef.parameters()
    row = repo.workflow(s, workflow_name)
    if row is None or code_runs.is_code(row):
        return None
    return dag_parameters(dict(row.definition.get("params") or {}))[0]


def resolve_params(
    s: Session, rt: Runtime, workflow_name: str, params: dict[str, Any] | None = None, *, version: int | None = None,
) -> dict[str, Any]:
    """What a start would store as the run's parameters, checked exactly as :func:`create_run` checks them, with
    nothing stored (``run start --dry-run``): the workflow exists (a code one is registered in this process) and
    every parameter is declared, given when required and of its type."""
    wdef = registry.get_workflow(workflow_name)
    if wdef is not None and version is None:
        return wdef.check_params(dict(params or {}))
    row = repo.workflow(s, workflow_name, version)
    if row is None:
        raise NotFound(f"workflow '{workflow_name}'" + (f" version {version}" if version else "")
                       + " is not registered")
    if code_runs.is_code(row):
        return code_runs.startable(row.name).check_params(dict(params or {}))
    return check_run_params(rt.workflow(s, row.id).spec, dict(params or {}))


def advance_run(rt: Runtime, run_id: int, *, actor: str, skip_locked: bool = False) -> bool:
    """Advance one run in its own transaction. Returns False if the run was locked (skip_locked) or gone."""
    with rt.db.transaction() as s:
        run = repo.lock_run(s, run_id, skip_locked=skip_locked)
        if run is None:
            return False
        advance_locked(s, rt, run, actor=actor)
        return True


def advance_locked(
    s: Session, rt: Runtime, run: RunRecord, *, actor: str, full: bool = False, finished: TaskRecord | None = None,
    eager: attempts.EagerSlot | None = None,
) -> None:
    """The advance loop. The caller holds the run's lock. ``finished``: the task the caller just ended (and
    wrote as handled), instead of reading the run's unhandled tasks; ``full``: decide from the whole run.
    ``eager``: a worker's offer to claim one submitted task of this run itself (:class:`attempts.EagerSlot`)."""
    changed = [finished] if finished is not None else repo.unhandled_tasks(s, run.id)
    if run.state != RunState.RUNNING:
        repo.mark_handled(s, [t.id for t in changed if not t.handled])  # nothing follows from them
        return
    decider = decider_for(s, rt, run)
    while True:
        repo.mark_handled(s, [t.id for t in changed if not t.handled])
        plan = decider.decide(s, run, changed, full=full)
        if plan.empty:
            return
        ended = _apply(s, rt, run, plan, actor, eager)
        if plan.outcome is not None:
            if plan.continue_as_new is not None:
                code_runs.continue_as_new(s, rt, run, plan.continue_as_new, actor=actor)
            else:
                finish_run(s, rt, run, plan.outcome, actor=actor, reason=plan.reason, result=plan.result)
            return
        if not ended:
            return
        changed, full = ended, False  # the tasks the loop's own actions ended: decided next


def _apply(
    s: Session, rt: Runtime, run: RunRecord, plan: Plan, actor: str, eager: attempts.EagerSlot | None = None,
) -> list[TaskRecord]:
    """Carry out a plan. Returns the tasks that became terminal doing so (skipped, cancelled, or failed to
    start): the loop decides their consequences next."""
    now = utcnow()
    ended: list[TaskRecord] = []
    for task in plan.skip:
        # a skip because of a failure keeps its reason as the task's error: it counts as failed downstream and
        # for the run's outcome (``app.dag.Skip``); a skip on purpose has none
        why = plan.why.get(task.id)
        reason = why.reason if why is not None else plan.reason or "an upstream task did not succeed"
        error = None if why is not None and not why.failure else reason
        if attempts.stop(s, task, TaskState.SKIPPED, actor=actor, now=now, handled=True, reason=reason, error=error):
            ended.append(replace(task, state=TaskState.SKIPPED, handled=True, error=error))
    for task in plan.cancel:
        if stop_task(s, rt, task, TaskState.CANCELLED, actor=actor, reason=f"run stopped: {plan.reason}",
                     handled=True):
            ended.append(replace(task, state=TaskState.CANCELLED, handled=True))
    for task, result, reason in plan.finish:  # a switch: the master runs it, choosing its branch, at once
        attempt = task.attempt + 1
        if repo.transition_task(s, task, TaskState.RUNNING, actor=actor, now=now, attempt=attempt, started_at=now,
                                reason="switch: evaluating its cases") \
                and repo.transition_task(s, replace(task, state=TaskState.RUNNING, attempt=attempt),
                                         TaskState.SUCCEEDED, actor=actor, now=now, reason=reason, result=result,
                                         finished_at=now, handled=True):
            ended.append(replace(task, state=TaskState.SUCCEEDED, attempt=attempt, result=result, handled=True))
    for task, error in plan.fail:  # it cannot start (its condition could not be evaluated)
        if repo.transition_task(s, task, TaskState.FAILED, actor=actor, now=now, reason=error, error=error,
                                attempt=task.attempt + 1, finished_at=now, handled=True):
            ended.append(replace(task, state=TaskState.FAILED, attempt=task.attempt + 1, error=error, handled=True))
    for note in plan.notes:
        repo.add_event(s, run_id=run.id, from_state=run.state, to_state=run.state, actor=actor, reason=note, now=now)
    if plan.state_values is not None:
        repo.set_run_values(s, run.id, state_values=plan.state_values)
    submit = list(plan.submit)
    if plan.create:
        submit += code_runs.insert_steps(s, rt, run, plan.create, actor=actor, now=now)
    messages: list[ExecuteMessage] = []
    for task in submit:
        if task.kind == TaskKind.SUBWORKFLOW:
            done = _start_child(s, rt, run, task, actor)
            if done is not None:
                ended.append(done)
            continue
        message = attempts.submit(s, rt, task, actor=actor, now=now, reason="upstream tasks succeeded",
                                  label=f"{run.workflow_name}/{task.name}", eager=eager)
        if message is not None:
            messages.append(message)
    publish_after_commit(s, rt.dispatcher, execute=messages)
    return ended


def _start_child(s: Session, rt: Runtime, run: RunRecord, task: TaskRecord, actor: str) -> TaskRecord | None:
    """Start a subworkflow task's child run (in a savepoint: a child that cannot start leaves nothing behind).
    Returns the task's record if it ended here: it failed to start (any error but a database outage, which
    must delay work, not fail it), or its child run finished at once."""
    workflow = task.body.workflow or ""
    now = utcnow()
    attempt = task.attempt + 1
    try:
        with s.begin_nested():
            if _depth(s, run) >= MAX_SUBWORKFLOW_DEPTH:
                raise TideflowError(f"subworkflows nested deeper than {MAX_SUBWORKFLOW_DEPTH}")
            if run.kind == RunKind.CODE:  # a code run's child params are values, not templates
                child_params = dict(task.body.params or {})
            else:
                upstream = repo.task_results(s, run.id, task.body.inputs)
                ctx = {"params": run.params, "upstream": upstream,
                       "run": {"id": run.id, "priority": run.priority, "workflow": run.workflow_name},
                       "schedule": templating.schedule_scope(run.schedule_name, run.schedule_time, run.created_at)}
                child_params = templating.render(task.body.params or {}, ctx)
            child = create_run(s, rt, workflow, child_params, priority=run.priority, actor=actor, parent_task=task)
            repo.transition_task(s, task, TaskState.RUNNING, actor=actor, now=now, child_run_id=child.id,
                                 attempt=attempt, started_at=now, lease_token=None, lease_expires_at=None,
                                 reason=f"child run {child.id} of workflow '{workflow}' started")
            advance_locked(s, rt, child, actor=actor, full=True)
    except (OperationalError, InterfaceError):
        raise
    except Exception as exc:  # noqa: BLE001 - whatever stops a child from starting fails its task, not the advance
        expected = isinstance(exc, TideflowError | templating.TemplateError)
        error = str(exc) if expected else f"{type(exc).__name__}: {exc}"
        if not expected:
            log.exception("run %s: starting the child run of task %s failed", run.id, task.name)
        if repo.transition_task(s, task, TaskState.FAILED, actor=actor, now=now, finished_at=now, handled=True,
                                reason=f"could not start child workflow '{workflow}': {error}", error=error,
                                attempt=attempt):
            return replace(task, state=TaskState.FAILED, attempt=attempt, handled=True, error=error)
        return None
    fresh = repo.get_task(s, task.id)
    return fresh if fresh is not None and fresh.state in TASK_TERMINAL else None


def _depth(s: Session, run: RunRecord) -> int:
    depth = 0
    while run.parent_task_run_id is not None and depth <= MAX_SUBWORKFLOW_DEPTH:
        parent_task = repo.get_task(s, run.parent_task_run_id)
        parent = repo.get_run(s, parent_task.run_id) if parent_task is not None else None
        if parent is None:
            break
        run, depth = parent, depth + 1
    return depth


def finish_run(
    s: Session, rt: Runtime, run: RunRecord, outcome: RunState, *, actor: str, reason: str, result: Any = None,
) -> bool:
    """Finish a run and, in the same transaction, finish the parent task of a child run (the child's
    completion cannot be lost: if the parent's advance message is, the reconciler sees the unhandled task).
    ``outcome`` blocked: a code run stops where it is (not finished: its parent task keeps waiting)."""
    error = None if outcome == RunState.SUCCEEDED else reason
    values = {"result": result} if run.kind == RunKind.CODE and outcome == RunState.SUCCEEDED else {}
    if not repo.transition_run(s, run, outcome, actor=actor, reason=reason, error=error, **values):
        return False
    if run.state == RunState.RUNNING:  # it held a place of its workflow's max_active_runs: the next queued starts
        limits.promote_runs(s, rt, run.workflow_name, actor=actor)
    if run.parent_task_run_id is not None and outcome in RUN_TERMINAL:
        parent_task = repo.get_task(s, run.parent_task_run_id)
        if parent_task is not None and parent_task.state == TaskState.RUNNING and parent_task.child_run_id == run.id:
            now = utcnow()
            ok = outcome == RunState.SUCCEEDED
            results = (result if run.kind == RunKind.CODE else repo.task_results(s, run.id)) if ok else None
            if repo.transition_task(
                s, parent_task, TaskState.SUCCEEDED if ok else TaskState.FAILED, actor=actor, now=now,
                reason=f"child run {run.id} {outcome}", finished_at=now, result=results,
                error=None if ok else f"child run {run.id} {outcome}: {reason}",
            ):
                publish_after_commit(s, rt.dispatcher, advance=[parent_task.run_id])
    return True


def stop_task(
    s: Session, rt: Runtime, task: TaskRecord, to: TaskState, *, actor: str, reason: str, **values: Any,
) -> bool:
    """Cancel/skip a live task. A running attempt loses its lease by this (its heartbeat sees it and stops the
    body); a running subworkflow task cancels its child run."""
    now = utcnow()
    if not attempts.stop(s, task, to, actor=actor, reason=reason, now=now, **values):
        return False
    if task.state == TaskState.RUNNING:
        limits.release(s, rt, task, now)
    if task.state == TaskState.RUNNING and task.child_run_id is not None:
        child = repo.lock_run(s, task.child_run_id)
        if child is not None and child.state in (RunState.RUNNING, RunState.BLOCKED, RunState.PAUSED):
            cancel_locked(s, rt, child, actor=actor, reason=f"parent task {task.name} stopped")
    return True


def cancel_locked(s: Session, rt: Runtime, run: RunRecord, *, actor: str, reason: str) -> None:
    """Cancel a run (locked by the caller): its live tasks are cancelled (nothing follows from them: the run
    ends here, so they are handled) and the run ends ``cancelled``. A running code run is asked instead: its
    current wait raises ``tideflow.Cancelled`` (``app.code.runs.request_cancel``)."""
    if run.kind == RunKind.CODE and run.state == RunState.RUNNING:
        code_runs.request_cancel(s, rt, run, actor=actor, reason=reason)
        return
    for task in repo.run_tasks(s, run.id):
        if task.state in (TaskState.PENDING, TaskState.SUBMITTED, TaskState.RUNNING):
            stop_task(s, rt, task, TaskState.CANCELLED, actor=actor, reason=reason, handled=True)
    finish_run(s, rt, run, RunState.CANCELLED, actor=actor, reason=reason)
