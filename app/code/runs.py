"""Code runs' side of the lifecycle: their workflow rows, their new steps, signals, cancel requests, resume,
``continue_as_new`` and timers. Called by the advance loop (``app.services.master``), the control services and
the reconciler; every change is a guarded transition or an insert in the caller's transaction, under the run's
lock where the run is touched.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.clock import utcnow
from app.code import registry
from app.code.engine import NewStep, describe, to_json
from app.db import repository as repo
from app.dispatch import publish_after_commit
from app.errors import DefinitionError, InvalidState, NotFound, TideflowError
from app.records import RunRecord, TaskRecord, WorkflowRecord
from app.runtime import Runtime
from app.states import RUN_TERMINAL, RunKind, RunState, TaskKind, TaskState

log = logging.getLogger(__name__)


# -- workflow rows ---------------------------------------------------------------------------------------------


def is_code(row: WorkflowRecord) -> bool:
    return row.definition.get("kind") == "code"


def workflow_row(s: Session, name: str, version: int | None = None) -> WorkflowRecord | None:
    """The workflow row a start names. A code workflow registered in this process is stored (a new version
    when its definition changed) the first time it is started, so every run points at a row."""
    wdef = registry.get_workflow(name)
    if wdef is None or version is not None:
        return repo.workflow(s, name, version)
    latest = repo.workflow(s, name)
    if latest is not None and not is_code(latest):
        raise DefinitionError([f"workflow '{name}' is registered as a DAG, and {wdef.module}.{wdef.qualname} is a "
                               "code workflow of the same name: rename one (a name is one kind of workflow)"])
    digest = wdef.digest()
    if latest is not None and latest.digest == digest:
        return latest
    try:
        with s.begin_nested():  # two processes storing the same new version: one insert lands
            return repo.insert_workflow(s, name, digest, wdef.definition())
    except IntegrityError:
        return repo.workflow(s, name)


def startable(name: str) -> registry.WorkflowDef:
    """The code workflow ``name`` as this process registered it. A run's first pass runs in the starting
    transaction: a process without the code cannot start it (nor should the run wait, blocked, for a process that
    has it)."""
    wdef = registry.get_workflow(name)
    if wdef is None:
        raise TideflowError(f"workflow '{name}' is a code workflow not registered in this process: import its "
                            "module (TIDEFLOW_WORKFLOW_MODULES) to start it")
    return wdef


def insert_run(
    s: Session, row: WorkflowRecord, params: dict[str, Any], *, priority: int | None, actor: str, reason: str,
    parent_task_run_id: int | None, key: str | None, state: RunState = RunState.RUNNING,
    concurrency_key: str | None = None,
) -> RunRecord:
    wdef = startable(row.name)
    d = row.definition
    checked = wdef.check_params(params)  # the code that runs: its signature's names, hints and required ones
    prio = int(d.get("priority", 5)) if priority is None else priority
    if not 0 <= prio <= 9:
        raise DefinitionError([f"priority must be between 0 and 9, not {prio}"])
    return repo.insert_run(s, workflow_row=row, params=checked, priority=prio, on_failure="stop",
                           parent_task_run_id=parent_task_run_id, actor=actor, reason=reason, kind=RunKind.CODE,
                           key=key, state=state, concurrency_key=concurrency_key)


# -- steps -----------------------------------------------------------------------------------------------------


def _row(rt: Runtime, run: RunRecord, step: NewStep, now: datetime) -> dict[str, Any]:
    done = step.done
    # every row has every key (one multi-row insert)
    row: dict[str, Any] = {
        "run_id": run.id, "name": f"{step.name}#{step.seq}", "seq": step.seq, "type": step.kind,
        "state": step.state, "body": step.body, "queue": rt.settings.default_queue, "priority": run.priority,
        "max_lost_attempts": rt.settings.max_lost_attempts, "due_at": step.due_at, "timeout": None, "retries": 0,
        "retry_delay": 0.0, "retry_backoff": 2.0, "max_retry_delay": 3600.0, "on_lost": "retry", "pool": None,
        "rate_limit": None, "rate_key": None, "concurrency_key": None, "concurrency_limit": None,
        "result": step.result if done else None, "error": step.error if done else None,
        "finished_at": now if done else None, "started_at": now if step.state == TaskState.RUNNING else None,
    }
    a = step.activity
    if a is not None:
        row.update(queue=a.queue or rt.settings.default_queue, priority=run.priority if a.priority is None else
                   a.priority, timeout=a.timeout, retries=a.retries, retry_delay=a.retry_delay,
                   retry_backoff=a.retry_backoff, max_retry_delay=a.max_retry_delay, on_lost=a.on_lost,
                   max_lost_attempts=a.max_lost_attempts or rt.settings.max_lost_attempts, pool=a.pool,
                   rate_limit=a.rate_limit, rate_key=f"activity:{a.name}" if a.rate_limit else None)
        if step.concurrency_key is not None and a.concurrency is not None:
            row.update(concurrency_key=step.concurrency_key, concurrency_limit=a.concurrency.limit)
    return row


def insert_steps(
    s: Session, rt: Runtime, run: RunRecord, steps: list[NewStep], *, actor: str, now: datetime,
) -> list[TaskRecord]:
    """Store a pass's new steps (one event each) and deliver the signals it consumed. Returns the steps to start
    (pending activities and children): the advance loop submits them like DAG tasks."""
    tasks = repo.insert_steps(s, [_row(rt, run, st, now) for st in steps])
    start: list[TaskRecord] = []
    for step, task in zip(steps, tasks, strict=True):
        repo.add_event(s, run_id=run.id, task_run_id=task.id, task_name=task.name, attempt=0, from_state=None,
                       to_state=task.state, actor=actor, now=now,
                       reason=step.reason or f"position {step.seq}: {describe(step.kind, step.name)}")
        if step.signal_id is not None:
            repo.deliver_signal(s, step.signal_id, task.id)
        if task.state == TaskState.PENDING:
            start.append(task)
    return start


# -- signals ---------------------------------------------------------------------------------------------------


def send_signal(
    s: Session, rt: Runtime, run_id: int, name: str, data: Any = None, *, key: str | None = None,
    actor: str = "api",
) -> tuple[int, bool]:
    """Store a signal for a code run, in the caller's transaction (it exists only if that commits), and deliver
    it to a wait for it if the run is waiting. Returns (signal id, created); a ``key`` already sent returns the
    first signal's id and created False. A signal to a finished run is an :class:`InvalidState` error."""
    if not registry.NAME_PATTERN.match(name):
        raise InvalidState(f"signal name '{name}' must match {registry.NAME_RE}")
    payload = to_json(data, f"the data of signal '{name}'")
    run = repo.lock_run(s, run_id)  # serialised with the run's advances
    if run is None:
        raise NotFound(f"run {run_id} does not exist")
    if run.kind != RunKind.CODE:
        raise InvalidState(f"run {run_id} is a DAG run: only code runs take signals")
    if run.state in RUN_TERMINAL:
        raise InvalidState(f"run {run_id} is already {run.state}: signal '{name}' was not delivered")
    if key is not None:
        existing = repo.signal_by_key(s, run_id, key)
        if existing is not None:
            return existing.id, False
    now = utcnow()
    signal = repo.insert_signal(s, run_id, name, payload, key=key, actor=actor, now=now)
    waiting = repo.waiting_signal_step(s, run_id, name)
    if waiting is not None and repo.transition_task(
        s, waiting, TaskState.SUCCEEDED, actor=actor, now=now, result=payload, due_at=None, finished_at=now,
        reason=f"signal '{name}' #{signal.id} delivered",
    ):
        repo.deliver_signal(s, signal.id, waiting.id)
        publish_after_commit(s, rt.dispatcher, advance=[run_id], advance_labels={run_id: run.workflow_name})
    else:
        repo.add_event(s, run_id=run_id, from_state=run.state, to_state=run.state, actor=actor, now=now,
                       reason=f"signal '{name}' #{signal.id} received (kept until the workflow waits for it)")
    return signal.id, True


# -- cancel, resume, continue as new -----------------------------------------------------------------------


def request_cancel(s: Session, rt: Runtime, run: RunRecord, *, actor: str, reason: str) -> None:
    """Ask a running code run to cancel: every live step is stopped (activities lose their lease, children are
    cancelled), and the replay that follows raises ``tideflow.Cancelled`` at the workflow's current wait."""
    from app.services.master import advance_locked, stop_task

    repo.set_run_values(s, run.id, cancel_requested=True)
    now = utcnow()
    repo.add_event(s, run_id=run.id, from_state=run.state, to_state=run.state, actor=actor, now=now,
                   reason=f"cancel requested: {reason}")
    for task in repo.live_steps(s, run.id):
        stop_task(s, rt, task, TaskState.CANCELLED, actor=actor, reason=f"run cancel requested: {reason}")
    fresh = repo.get_run(s, run.id)
    assert fresh is not None
    advance_locked(s, rt, fresh, actor=actor, full=True)


def resume(rt: Runtime, run_id: int, *, actor: str = "api") -> str:
    """Continue a ``blocked`` run with the code deployed now. Returns the run's state after the replay (blocked
    again if the code still does not replay its history)."""
    from app.services.master import advance_locked

    with rt.db.transaction() as s:
        run = repo.lock_run(s, run_id)
        if run is None:
            raise NotFound(f"run {run_id} does not exist")
        if run.state != RunState.BLOCKED:
            raise InvalidState(f"run {run_id} is {run.state}; only a blocked run can be resumed")
        repo.transition_run(s, run, RunState.RUNNING, actor=actor, reason="resumed")
        fresh = repo.get_run(s, run_id)
        assert fresh is not None
        advance_locked(s, rt, fresh, actor=actor, full=True)
        after = repo.get_run(s, run_id)
        return str(after.state if after is not None else RunState.RUNNING)


def continue_as_new(s: Session, rt: Runtime, run: RunRecord, params: dict[str, Any], *, actor: str) -> int:
    """End ``run`` succeeded and start a fresh run of its workflow with ``params``, linked both ways; a child
    run's parent task waits for the continuation instead."""
    from app.services.master import advance_locked, create_run, finish_run

    new = create_run(s, rt, run.workflow_name, params, priority=run.priority, actor=actor)
    repo.set_run_values(s, run.id, continued_run_id=new.id)
    if run.parent_task_run_id is not None:
        repo.set_run_values(s, new.id, parent_task_run_id=run.parent_task_run_id)
        repo.set_child_run(s, run.parent_task_run_id, run.id, new.id)
        new = repo.get_run(s, new.id) or new
    repo.add_event(s, run_id=new.id, from_state=RunState.RUNNING, to_state=RunState.RUNNING, actor=actor,
                   reason=f"continues run {run.id}")
    finish_run(s, rt, run, RunState.SUCCEEDED, actor=actor, reason=f"continued as new: run {new.id}")
    advance_locked(s, rt, new, actor=actor, full=True)
    return new.id


# -- timers (the reconciler) -------------------------------------------------------------------------------


def fire_due(rt: Runtime, actor: str) -> int:
    """Fire the timers and signal timeouts that are due: each becomes succeeded (a timed-out wait's result is
    None), and its run is advanced (after commit, through the master queue; the reconciler's own scan of
    unhandled steps covers a lost message)."""
    now = utcnow()
    fired = 0
    with rt.db.transaction() as s:
        runs: dict[int, str] = {}  # run id -> its workflow's name (the advance message's label)
        for task in repo.due_steps(s, now, rt.settings.reconcile_batch_size):
            what = ("timer fired" if task.kind == TaskKind.TIMER
                    else f"wait for signal '{task.body.signal}' timed out")
            due = f"{task.due_at:%Y-%m-%d %H:%M:%S}" if task.due_at is not None else "?"
            if repo.transition_task(s, task, TaskState.SUCCEEDED, actor=actor, now=now, result=None,
                                    finished_at=now, reason=f"{what} (due {due} UTC)"):
                fired += 1
                runs[task.run_id] = task.workflow_name or ""
        publish_after_commit(s, rt.dispatcher, advance=sorted(runs), advance_labels=runs)
    return fired
