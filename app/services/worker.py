"""The worker side of the protocol: claim, run with a lease, finish with a fence.

``execute`` is called by the ``tideflow.execute`` Celery task for each message and says what happened;
the task glue maps the outcome to Celery (retry later for a missing row, acknowledge otherwise).
A task body runs at most once per attempt: the claim is a guarded ``submitted -> running`` update of that
exact attempt, so duplicate, late and redelivered messages find nothing to claim and are dropped.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from app.clock import utcnow
from app.db import repository as repo
from app.dispatch import publish_after_commit
from app.errors import TaskFailure, TaskStopped
from app.executors import ExecutionContext, executor_for
from app.executors.logbuffer import LogBuffer
from app.records import TaskRecord
from app.runtime import RunInfo, Runtime
from app.services import attempts, limits
from app.services.master import advance_locked
from app.states import AttemptOutcome, TaskKind, TaskState

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    MISSING_ROW = "missing_row"  # the row is not visible (yet): retry the message later
    TOO_EARLY = "too_early"  # a retry delay has not passed: retry the message later
    IGNORED = "ignored"  # duplicate / stale message: nothing to claim
    #: a limit is full (app/services/limits.py): the task stays submitted, re-published when a slot frees
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRYING = "retrying"
    STOPPED = "stopped"  # the body stopped because the attempt lost its lease
    FENCED = "fenced"  # the body finished but its attempt no longer held the lease: result discarded


@dataclass(frozen=True)
class Claimed:
    """An attempt this worker holds (claimed from a message, or eagerly in its previous task's finish), with
    what its body needs."""

    task: TaskRecord
    token: str
    claimed_at: datetime
    run: RunInfo
    upstream: dict[str, Any]


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    delay: float = 0.0
    detail: str = ""
    #: the attempt this worker claimed eagerly while finishing (runs next, in this process, without a message)
    then: Claimed | None = None
    #: how many eager executions followed the message's own (``execute``)
    eager: int = 0


def execute(rt: Runtime, task_run_id: int, attempt: int, *, hard_kill: bool = False) -> Result:
    """Claim and run the attempt of one message, then the attempts its finishes claimed eagerly (at most
    ``eager_max_chain`` of them, none started after ``eager_max_seconds``). The result is the message's own."""
    began = time.monotonic()
    now = utcnow()
    token = str(uuid.uuid4())
    with rt.db.transaction() as s:
        task = attempts.claim(s, rt, task_run_id, attempt, now=now, token=token)
        if task is None:
            missed = repo.get_task(s, task_run_id)
            paused = missed is not None and repo.run_is_paused(s, missed.run_id)
            return _not_claimed(missed, task_run_id, attempt, now, s, paused)
        run = rt.run_info(s, task.run_id)
        upstream = repo.task_results(s, task.run_id, task.body.inputs)
    settings = rt.settings
    # the chain's bound (documented in app/config.py): the n+1st body's finish may claim another while n is
    # under eager_max_chain and until eager_max_seconds after the message came (checked at the finish)
    until = began + settings.eager_max_seconds if settings.eager_activities else None

    first = result = run_claimed(rt, Claimed(task, token, now, run, upstream), hard_kill=hard_kill,
                                 eager_until=until if settings.eager_max_chain > 0 else None)
    n = 0
    while result.then is not None:
        n += 1
        result = run_claimed(rt, result.then, hard_kill=hard_kill,
                             eager_until=until if n < settings.eager_max_chain else None)
    return replace(first, then=None, eager=n)


def run_claimed(
    rt: Runtime, claimed: Claimed, *, hard_kill: bool = False, eager_until: float | None = None,
) -> Result:
    """Run a claimed attempt's body under its lease and record its end. ``eager_until`` (a ``time.monotonic``
    deadline): if the body ends before it, its finish may claim the run's next task for this worker
    (:class:`app.services.attempts.EagerSlot`), returned as ``then``."""
    task, token, now, run, attempt = claimed.task, claimed.token, claimed.claimed_at, claimed.run, claimed.task.attempt
    ctx = ExecutionContext(
        run_id=run.id, task_run_id=task.id, task_name=task.name, attempt=attempt, workflow=run.workflow_name,
        priority=run.priority, params=dict(run.params), upstream=claimed.upstream, stop=threading.Event(),
        log=LogBuffer(rt.settings.log_max_bytes), allowed_python_modules=rt.settings.allowed_python_modules,
        schedule=run.schedule,
    )
    from app.services.lease import LeaseKeeper  # local: keeps signal handling out of import time

    keeper = LeaseKeeper(rt, task.id, token, timeout=task.timeout, stop=ctx.stop,
                         interrupt_main=task.kind in (TaskKind.PYTHON, TaskKind.ACTIVITY), hard_kill=hard_kill,
                         attempt=attempt, output=ctx.log)
    started = time.monotonic()
    result: Any = None
    error: str | None = None
    try:
        with keeper:
            result = executor_for(task.kind).run(task.body, ctx)
    except TaskStopped:
        error = keeper.reason or "stopped"
    except TaskFailure as exc:
        error = str(exc)
    except Exception as exc:  # noqa: BLE001 - a bug in a body must fail the task, not the worker
        log.exception("task run %s: unexpected error", task.id)
        error = f"{type(exc).__name__}: {exc}"
    if keeper.reason and not keeper.timed_out:
        with rt.db.transaction() as s:
            repo.keep_attempt_log(s, task.id, attempt, ctx.log.getvalue())
        return Result(Outcome.STOPPED, detail=keeper.reason)
    log.info("task run %s attempt %s finished in %.3fs: %s", task.id, attempt, time.monotonic() - started,
             error or "ok")
    return _durably(rt, lambda: finish(rt, task.id, attempt, token, result=result, error=error,
                                       log_text=ctx.log.getvalue(), timed_out=keeper.timed_out, started_at=now,
                                       run_id=run.id, workflow_name=run.workflow_name, claimed=task,
                                       eager=eager_until is not None and time.monotonic() < eager_until))


def _not_claimed(
    task: TaskRecord | None, task_run_id: int, attempt: int, now: datetime, s: Session, paused: bool = False,
) -> Result:
    """Why a claim did not land: the row is not visible (yet), the message is stale, it came early, its run is
    ``paused``, or a limit holds it back."""
    if task is None:
        return Result(Outcome.MISSING_ROW, detail=f"task run {task_run_id} is not visible")
    if task.attempt != attempt or task.state != TaskState.SUBMITTED:
        return Result(Outcome.IGNORED, detail=f"task run {task_run_id} is {task.state} at attempt {task.attempt}; "
                                               f"message for attempt {attempt} ignored")
    if task.not_before is not None and task.not_before > now:
        return Result(Outcome.TOO_EARLY, delay=(task.not_before - now).total_seconds())
    if paused:
        return Result(Outcome.IGNORED, detail=f"run {task.run_id} is paused: task run {task_run_id} attempt {attempt} "
                                              "not started ('run resume' re-publishes it)")
    if limits.is_limited(task):
        wait = limits.rate_wait(s, task, now)
        if wait is not None:  # a rate limit: the message comes back when the window lets one more start
            return Result(Outcome.TOO_EARLY, delay=wait, detail=f"task run {task_run_id}: rate limit reached")
        return Result(Outcome.WAITING, detail=f"task run {task_run_id} attempt {attempt} waits for a limit "
                                              f"(pool {task.pool}, concurrency key {task.concurrency_key}); "
                                              "re-published when there is room")
    return Result(Outcome.IGNORED, detail=f"task run {task_run_id} attempt {attempt} was claimed elsewhere")


def count_missing_row_retry(rt: Runtime) -> None:
    """Count one retry of a message whose task row was not visible (``/metrics``), in a short transaction of
    its own. Best effort: the message carries no row to count on, and failing to count must never stop it
    from being retried, so any error is logged and swallowed."""
    try:
        with rt.db.transaction() as s:
            repo.increment_counter(s, repo.MISSING_ROW_RETRIES)
    except Exception as exc:  # noqa: BLE001 - see above
        log.warning("could not count a missing-row retry (%s: %s)", type(exc).__name__, exc)


def _durably(rt: Runtime, fn: Callable[[], Result]) -> Result:
    """Retry recording an outcome through a database outage, for as long as the lease could still be ours
    (after that the reconciler has declared the attempt lost and the fence would refuse it anyway)."""
    deadline = time.monotonic() + rt.settings.lease_seconds
    delay = 0.2
    while True:
        try:
            return fn()
        except (OperationalError, InterfaceError) as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("database unavailable while recording an outcome (%s); retrying in %.1fs", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def finish(
    rt: Runtime, task_run_id: int, attempt: int, token: str, *, result: Any = None, error: str | None = None,
    log_text: str | None = None, timed_out: bool = False, started_at: datetime | None = None,
    run_id: int | None = None, workflow_name: str | None = None, claimed: TaskRecord | None = None,
    eager: bool = False,
) -> Result:
    """Record an attempt's end, fenced by its lease token, and advance the run in the same transaction when
    it is free (no hop through the master queue). Does nothing (FENCED) if the attempt lost
    its lease. Should the inline advance fail, the outcome is recorded alone and the master advances.
    ``claimed``: the attempt's record as its claim returned it (a success then reads nothing back).
    ``eager``: the inline advance may claim the run's next task on this task's queue for this worker (returned
    as ``Result.then``: the caller must run it, see :func:`execute`)."""
    kw: dict[str, Any] = dict(result=result, error=error, log_text=log_text, timed_out=timed_out,
                              started_at=started_at, run_id=run_id, workflow_name=workflow_name, claimed=claimed)
    try:
        return _finish(rt, task_run_id, attempt, token, inline=rt.settings.inline_advance, eager=eager, **kw)
    except (OperationalError, InterfaceError):
        raise
    except Exception:  # noqa: BLE001 - the transaction rolled back: record the outcome without the advance
        log.exception("task run %s: inline advance failed; recording the outcome alone", task_run_id)
        return _finish(rt, task_run_id, attempt, token, inline=False, eager=False, **kw)


def _finish(
    rt: Runtime, task_run_id: int, attempt: int, token: str, *, inline: bool, eager: bool, result: Any,
    error: str | None, log_text: str | None, timed_out: bool, started_at: datetime | None, run_id: int | None,
    workflow_name: str | None, claimed: TaskRecord | None,
) -> Result:
    then: Claimed | None = None
    with rt.db.transaction() as s:
        now = utcnow()
        # Take the run first (SKIP LOCKED: never waits, so never deadlocks): holding it, the run is advanced
        # in this transaction (no hop through the master queue) and a succeeded task is born handled; when a
        # sibling's advance, the master or the reconciler holds it, the master is asked after commit.
        run = repo.lock_run(s, run_id, skip_locked=True) if inline and run_id is not None else None
        finished: TaskRecord | None = None
        if error is None:
            finished = attempts.succeed(s, rt, task_run_id, attempt, token, result=result, now=now,
                                        handled=run is not None, log=log_text, started_at=started_at,
                                        claimed=claimed)
            to: TaskState | None = TaskState.SUCCEEDED if finished is not None else None
            owner = finished.run_id if finished is not None else run_id
        else:
            task = repo.get_task(s, task_run_id)
            to, owner = None, task.run_id if task is not None else run_id
            if task is not None and task.state == TaskState.RUNNING and task.attempt == attempt \
                    and task.lease_token == token:
                to, message = attempts.fail(
                    s, rt, replace(task, workflow_name=workflow_name), error, actor=rt.worker_id, fence=token,
                    now=now, outcome=AttemptOutcome.TIMED_OUT if timed_out else AttemptOutcome.FAILED,
                    log=log_text, started_at=started_at)
                if message is not None:
                    publish_after_commit(s, rt.dispatcher, execute=[message])
        if to is None:
            log.warning("task run %s attempt %s lost its lease; its result is discarded", task_run_id, attempt)
            return Result(Outcome.FENCED)
        if to != TaskState.SUBMITTED:
            if run is not None:
                # eager: the next task of this run on this task's queue (one this worker consumes) is claimed here
                queue = claimed.queue if claimed is not None else None
                slot = attempts.EagerSlot(queue, run.id) if eager and queue is not None else None
                advance_locked(s, rt, run, actor=rt.worker_id, finished=finished, eager=slot)
                if slot is not None and slot.claimed is not None and slot.claimed_at is not None:
                    nxt = slot.claimed
                    then = Claimed(nxt, slot.token, slot.claimed_at, rt.run_info(s, nxt.run_id),
                                   repo.task_results(s, nxt.run_id, nxt.body.inputs))
            elif owner is not None:
                publish_after_commit(s, rt.dispatcher, advance=[owner],
                                     advance_labels={owner: workflow_name} if workflow_name else None)
    outcome = {TaskState.SUCCEEDED: Outcome.SUCCEEDED, TaskState.SUBMITTED: Outcome.RETRYING}.get(to, Outcome.FAILED)
    return Result(outcome, detail=error or "", then=then)
