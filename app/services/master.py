"""The master: starts runs and advances them. Runs as the ``tideflow.advance`` Celery task on its own
queue, inline in ``start_run``/``retry_run``, and from the reconciler; all three call :func:`advance_locked`
under the run's row lock, so two advances of one run (e.g. two branches finishing together) serialise and
the join is submitted exactly once. There is no in-memory master state: everything is re-read.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session

from app import dag, templating
from app.clock import after, utcnow
from app.db import repository as repo
from app.definitions import check_run_params
from app.dispatch import ExecuteMessage, publish_after_commit
from app.errors import DefinitionError, NotFound, TideflowError
from app.runtime import LoadedWorkflow, Runtime
from app.states import RunState, TaskState

log = logging.getLogger(__name__)

MAX_SUBWORKFLOW_DEPTH = 10


def start_run(
    s: Session, rt: Runtime, workflow_name: str, params: dict[str, Any] | None = None, *,
    priority: int | None = None, version: int | None = None, actor: str = "api",
    parent_task: repo.TaskRow | None = None,
) -> int:
    """Create a run and submit its root tasks in the caller's transaction ``s``. Messages are published
    only when that transaction commits."""
    wf_row = repo.workflow(s, workflow_name, version)
    if wf_row is None:
        raise NotFound(f"workflow '{workflow_name}'" + (f" version {version}" if version else "")
                       + " is not registered")
    wf = rt.workflow(s, wf_row.id)
    merged = check_run_params(wf.spec, dict(params or {}))
    if priority is not None and not 0 <= priority <= 9:
        raise DefinitionError([f"priority must be between 0 and 9, not {priority}"])
    prio = wf.spec.priority if priority is None else priority
    reason = "started" if parent_task is None else f"started as child of task run {parent_task.id}"
    run_id = repo.insert_run(
        s, workflow_row=wf_row, params=merged, priority=prio, on_failure=wf.spec.on_failure,
        parent_task_run_id=parent_task.id if parent_task is not None else None, actor=actor, reason=reason,
    )
    repo.insert_tasks(s, run_id, [
        {"name": t.name, "type": t.type, "queue": t.queue or rt.settings.default_queue,
         "priority": t.priority if t.priority is not None else prio}
        for t in wf.spec.tasks
    ])
    run = repo.get_run(s, run_id)
    assert run is not None
    advance_locked(s, rt, run, actor=actor, full=True)
    return run_id


def advance_run(rt: Runtime, run_id: int, *, actor: str, skip_locked: bool = False) -> bool:
    """Advance one run in its own transaction. Returns False if the run was locked (skip_locked) or gone."""
    with rt.db.transaction() as s:
        run = repo.lock_run(s, run_id, skip_locked=skip_locked)
        if run is None:
            return False
        advance_locked(s, rt, run, actor=actor)
        return True


def advance_locked(
    s: Session, rt: Runtime, run: repo.RunRow, *, actor: str, full: bool = False,
    finished: repo.TaskRow | None = None,
) -> None:
    """Apply DAG decisions until there is nothing left to do. The caller holds the run's lock.

    Common path (incremental, cost independent of the DAG's size): look only at the tasks that finished
    since the last advance (the unhandled ones, or ``finished``: the task the caller just finished) and at
    their children. ``full`` re-evaluates the whole DAG: at start, after a retry, and when a failure stops
    the run."""
    changed_rows = [finished] if finished is not None else list(repo.unhandled_tasks(s, run.id))
    repo.mark_handled(s, [t.id for t in changed_rows if not t.handled])
    if run.state != RunState.RUNNING:
        return
    wf = rt.workflow(s, run.workflow_id)
    if full or dag.stops_run({t.name: TaskState(t.state) for t in changed_rows}, run.on_failure):
        _advance_full(s, rt, run, wf, actor)
        return
    changed = {t.name for t in changed_rows}
    submitted = False
    while changed:
        children = {c for n in changed for c in wf.children[n]}
        needed = children | {d for c in children for d in wf.deps[c]}
        tasks = {t.name: t for t in repo.tasks_named(s, run.id, needed)}
        decision = dag.step(wf.deps, wf.children, {n: TaskState(t.state) for n, t in tasks.items()}, changed)
        _apply(s, rt, run, wf, tasks, decision, actor)
        submitted = submitted or bool(decision.submit)
        changed = set(decision.skip)
    if not submitted and not repo.has_live_tasks(s, run.id):
        outcome = dag.run_outcome(repo.task_states(s, run.id))
        if outcome is not None:
            finish_run(s, rt, run, outcome[0], actor=actor, reason=outcome[1])


def _advance_full(s: Session, rt: Runtime, run: repo.RunRow, wf: LoadedWorkflow, actor: str) -> None:
    tasks = {t.name: t for t in repo.run_tasks(s, run.id)}
    for _ in range(len(tasks) + 2):
        decision = dag.evaluate(wf.deps, {n: TaskState(t.state) for n, t in tasks.items()}, run.on_failure)
        if decision.empty:
            return
        _apply(s, rt, run, wf, tasks, decision, actor)
        if decision.outcome is not None:
            return
        tasks = {t.name: t for t in repo.run_tasks(s, run.id)}
    raise RuntimeError(f"run {run.id}: the DAG evaluator did not settle")  # pragma: no cover


def _apply(
    s: Session, rt: Runtime, run: repo.RunRow, wf: LoadedWorkflow, tasks: dict[str, repo.TaskRow],
    decision: dag.Decision, actor: str,
) -> None:
    now = utcnow()
    for name in decision.skip:
        repo.transition_task(s, tasks[name], TaskState.SKIPPED, actor=actor, now=now,
                             reason=decision.reason or "an upstream task did not succeed", finished_at=now)
    for name in decision.cancel:
        stop_task(s, rt, tasks[name], TaskState.CANCELLED, actor=actor, reason=f"run stopped: {decision.reason}")
    messages: list[ExecuteMessage] = []
    for name in decision.submit:
        task = tasks[name]
        spec = wf.task(name)
        if spec.type == "subworkflow":
            _start_child(s, rt, run, wf, task, actor)
            continue
        attempt = task.attempt + 1
        if repo.transition_task(
            s, task, TaskState.SUBMITTED, actor=actor, now=now, reason="upstream tasks succeeded",
            attempt=attempt, publish_count=1, not_before=None,
            next_publish_at=after(rt.settings.orphan_timeout_seconds, now), error=None, result=None,
        ):
            messages.append(ExecuteMessage(task.id, attempt, task.queue, task.priority,
                                           label=f"{run.workflow_name}/{name}"))
    publish_after_commit(s, rt.dispatcher, execute=messages)
    if decision.outcome is not None:
        finish_run(s, rt, run, decision.outcome, actor=actor, reason=decision.reason)


def _start_child(
    s: Session, rt: Runtime, run: repo.RunRow, wf: LoadedWorkflow, task: repo.TaskRow, actor: str,
) -> None:
    spec = wf.task(task.name)
    assert spec.workflow is not None
    now = utcnow()
    try:
        if _depth(s, run) >= MAX_SUBWORKFLOW_DEPTH:
            raise TideflowError(f"subworkflows nested deeper than {MAX_SUBWORKFLOW_DEPTH}")
        upstream = repo.task_results(s, run.id, wf.inputs_of(task.name))
        ctx = {"params": run.params, "upstream": upstream,
               "run": {"id": run.id, "priority": run.priority, "workflow": run.workflow_name}}
        child_params = templating.render(spec.params or {}, ctx)
        with s.begin_nested():
            child_id = start_run(s, rt, spec.workflow, child_params, priority=run.priority, actor=actor,
                                 parent_task=task)
    except (TideflowError, templating.TemplateError) as exc:
        repo.transition_task(s, task, TaskState.FAILED, actor=actor, now=now, finished_at=now, handled=True,
                             reason=f"could not start child workflow '{spec.workflow}': {exc}", error=str(exc),
                             attempt=task.attempt + 1)
        return
    repo.transition_task(s, task, TaskState.RUNNING, actor=actor, now=now, child_run_id=child_id,
                         attempt=task.attempt + 1, started_at=now, lease_token=None, lease_expires_at=None,
                         reason=f"child run {child_id} of workflow '{spec.workflow}' started")


def _depth(s: Session, run: repo.RunRow) -> int:
    depth = 0
    while run.parent_task_run_id is not None and depth <= MAX_SUBWORKFLOW_DEPTH:
        parent_task = repo.get_task(s, run.parent_task_run_id)
        parent = repo.get_run(s, parent_task.run_id) if parent_task is not None else None
        if parent is None:
            break
        run, depth = parent, depth + 1
    return depth


def finish_run(s: Session, rt: Runtime, run: repo.RunRow, outcome: RunState, *, actor: str, reason: str) -> bool:
    """Finish a run and, in the same transaction, finish the parent task of a child run (the child's
    completion cannot be lost: if the parent's advance message is, the reconciler sees the unhandled task)."""
    error = None if outcome == RunState.SUCCEEDED else reason
    if not repo.transition_run(s, run, outcome, actor=actor, reason=reason, error=error):
        return False
    if run.parent_task_run_id is not None:
        parent_task = repo.get_task(s, run.parent_task_run_id)
        if parent_task is not None and parent_task.state == TaskState.RUNNING and parent_task.child_run_id == run.id:
            now = utcnow()
            ok = outcome == RunState.SUCCEEDED
            results = repo.task_results(s, run.id) if ok else None
            if repo.transition_task(
                s, parent_task, TaskState.SUCCEEDED if ok else TaskState.FAILED, actor=actor, now=now,
                reason=f"child run {run.id} {outcome}", finished_at=now, handled=False, result=results,
                error=None if ok else f"child run {run.id} {outcome}: {reason}",
            ):
                publish_after_commit(s, rt.dispatcher, advance=[parent_task.run_id])
    return True


def stop_task(s: Session, rt: Runtime, task: repo.TaskRow, to: TaskState, *, actor: str, reason: str) -> bool:
    """Cancel/skip a live task. A running attempt loses its lease by this (its heartbeat sees it and stops the
    body); a running subworkflow task cancels its child run."""
    now = utcnow()
    if not repo.transition_task(s, task, to, actor=actor, now=now, reason=reason, finished_at=now,
                                lease_token=None, lease_expires_at=None):
        return False
    if task.state == TaskState.RUNNING:
        repo.finish_attempt(s, task.id, task.attempt, outcome="cancelled", error=reason, now=now)
        if task.child_run_id is not None:
            child = repo.lock_run(s, task.child_run_id)
            if child is not None and child.state == RunState.RUNNING:
                cancel_locked(s, rt, child, actor=actor, reason=f"parent task {task.name} stopped")
    return True


def cancel_locked(s: Session, rt: Runtime, run: repo.RunRow, *, actor: str, reason: str) -> None:
    for task in repo.run_tasks(s, run.id):
        if task.state in (TaskState.PENDING, TaskState.SUBMITTED, TaskState.RUNNING):
            stop_task(s, rt, task, TaskState.CANCELLED, actor=actor, reason=reason)
    finish_run(s, rt, run, RunState.CANCELLED, actor=actor, reason=reason)
