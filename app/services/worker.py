"""The worker side of the protocol: claim, run with a lease, finish with a fence.

``execute`` is called by the ``tideflow.execute`` Celery task for each message and says what happened;
the task glue maps the outcome to Celery (retry later for a missing row, acknowledge otherwise).
A task body runs at most once per attempt: the claim is a guarded ``submitted -> running`` update of that
exact attempt, so duplicate, late and redelivered messages find nothing to claim and are dropped.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from app.clock import after, utcnow
from app.db import repository as repo
from app.dispatch import ExecuteMessage, publish_after_commit
from app.errors import TaskFailure, TaskStopped
from app.executors.base import ExecutionContext, executor_for
from app.executors.logbuffer import LogBuffer
from app.runtime import Runtime
from app.states import TaskState

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    MISSING_ROW = "missing_row"  # the row is not visible (yet): retry the message later
    TOO_EARLY = "too_early"  # a retry delay has not passed: retry the message later
    IGNORED = "ignored"  # duplicate / stale message: nothing to claim
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRYING = "retrying"
    STOPPED = "stopped"  # the body stopped because the attempt lost its lease
    FENCED = "fenced"  # the body finished but its attempt no longer held the lease: result discarded


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    delay: float = 0.0
    detail: str = ""


def execute(rt: Runtime, task_run_id: int, attempt: int, *, hard_kill: bool = False) -> Result:
    with rt.db.read() as s:
        task = repo.get_task(s, task_run_id)
    if task is None:
        return Result(Outcome.MISSING_ROW, detail=f"task run {task_run_id} is not visible")
    if task.attempt != attempt or task.state != TaskState.SUBMITTED:
        return Result(Outcome.IGNORED, detail=f"task run {task_run_id} is {task.state} at attempt {task.attempt}; "
                                               f"message for attempt {attempt} ignored")
    now = utcnow()
    if task.not_before is not None and task.not_before > now:
        return Result(Outcome.TOO_EARLY, delay=(task.not_before - now).total_seconds())

    token = str(uuid.uuid4())
    with rt.db.transaction() as s:
        claimed = repo.transition_task(
            s, task, TaskState.RUNNING, actor=rt.worker_id, now=now, reason=f"claimed by {rt.worker_id}",
            worker=rt.worker_id, lease_token=token, lease_expires_at=after(rt.settings.lease_seconds, now),
            started_at=now,
        )
        if claimed:
            repo.insert_attempt(s, task, attempt=attempt, worker=rt.worker_id, pid=os.getpid(), now=now)
        run = repo.get_run(s, task.run_id)
        wf = rt.workflow(s, run.workflow_id) if run is not None else None
        upstream = repo.task_results(s, task.run_id, wf.ancestors_of(task.name)) if wf is not None else {}
    if not claimed:
        return Result(Outcome.IGNORED, detail=f"task run {task_run_id} attempt {attempt} was claimed elsewhere")
    assert run is not None and wf is not None
    spec = wf.spec.task(task.name)

    ctx = ExecutionContext(
        run_id=run.id, task_run_id=task.id, task_name=task.name, attempt=attempt, workflow=run.workflow_name,
        priority=run.priority, params=dict(run.params), upstream=upstream, stop=threading.Event(),
        log=LogBuffer(rt.settings.log_max_bytes), allowed_python_modules=rt.settings.allowed_python_modules,
    )
    from app.services.lease import LeaseKeeper  # local: keeps signal handling out of import time

    keeper = LeaseKeeper(rt, task.id, token, timeout=spec.timeout, stop=ctx.stop,
                         interrupt_main=spec.type == "python", hard_kill=hard_kill)
    started = time.monotonic()
    result: Any = None
    error: str | None = None
    try:
        with keeper:
            result = executor_for(spec.type).run(spec, ctx)
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
    return _durably(rt, lambda: finish(rt, task_run_id, attempt, token, result=result, error=error,
                                       log_text=ctx.log.getvalue(), timed_out=keeper.timed_out))


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
    log_text: str | None = None, timed_out: bool = False,
) -> Result:
    """Record an attempt's end, fenced by its lease token. Does nothing (FENCED) if the attempt lost its lease."""
    with rt.db.transaction() as s:
        task = repo.get_task(s, task_run_id)
        if task is None or task.state != TaskState.RUNNING or task.attempt != attempt or task.lease_token != token:
            log.warning("task run %s attempt %s lost its lease; its result is discarded", task_run_id, attempt)
            return Result(Outcome.FENCED)
        now = utcnow()
        if error is None:
            landed = repo.transition_task(
                s, task, TaskState.SUCCEEDED, actor=rt.worker_id, fence=token, now=now, reason="succeeded",
                result=result, finished_at=now, handled=False, lease_expires_at=None,
            )
            outcome = Outcome.SUCCEEDED
        else:
            landed, outcome = fail_attempt(s, rt, task, error, actor=rt.worker_id, fence=token, now=now,
                                           attempt_outcome="timed_out" if timed_out else "failed")
        if not landed:
            return Result(Outcome.FENCED)
        repo.finish_attempt(s, task.id, attempt, outcome="succeeded" if error is None else
                            ("timed_out" if timed_out else "failed"), error=error, log=log_text, now=now)
        if outcome != Outcome.RETRYING:
            publish_after_commit(s, rt.dispatcher, advance=[task.run_id])
    return Result(outcome, detail=error or "")


def fail_attempt(
    s: Session, rt: Runtime, task: repo.TaskRow, error: str, *, actor: str, fence: str | None, now: datetime,
    attempt_outcome: str,
) -> tuple[bool, Outcome]:
    """A running attempt failed (or was lost): retry per the task's policy, or fail the task."""
    run = repo.get_run(s, task.run_id)
    assert run is not None
    spec = rt.workflow(s, run.workflow_id).spec.task(task.name)
    failures = task.failures + 1
    if failures <= spec.retries:
        delay = spec.retry_delay_for(failures)
        not_before = after(delay, now) if delay > 0 else None
        landed = repo.transition_task(
            s, task, TaskState.SUBMITTED, actor=actor, fence=fence, now=now,
            reason=f"attempt {task.attempt} {attempt_outcome}: {error}; retry {failures}/{spec.retries}"
                   + (f" in {delay:g}s" if delay else ""),
            attempt=task.attempt + 1, failures=failures, error=error, not_before=not_before, publish_count=1,
            next_publish_at=after(delay + rt.settings.orphan_timeout_seconds, now), lease_token=None,
            lease_expires_at=None, worker=None,
        )
        if landed:
            publish_after_commit(s, rt.dispatcher, execute=[ExecuteMessage(
                task.id, task.attempt + 1, task.queue, task.priority, countdown=delay,
                label=f"{run.workflow_name}/{task.name}")])
        return landed, Outcome.RETRYING
    landed = repo.transition_task(
        s, task, TaskState.FAILED, actor=actor, fence=fence, now=now, failures=failures, error=error,
        reason=f"attempt {task.attempt} {attempt_outcome}: {error}"
               + (f"; no retries left ({spec.retries})" if spec.retries else ""),
        finished_at=now, handled=False, lease_expires_at=None,
    )
    return landed, Outcome.FAILED
