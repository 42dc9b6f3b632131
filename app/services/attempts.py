"""Attempts: the one module that submits, claims, fails, finishes and stops a task's attempts.

Every attempt of every task kind goes through here, whoever acts (the advance loop submitting a task whose
dependencies are met, a worker claiming and finishing it, the reconciler re-publishing an unclaimed one or
declaring a lapsed lease lost, a cancel), so the retry policy is applied in one place: failures of the body
count against the task's ``retries`` (with its back-off), lost attempts against its ``max_lost_attempts``
(or fail it at once with ``on_lost: fail``). The policy is read from the task row (snapshotted from the
definition when the run started), never from the workflow definition.

Each function is one guarded transition in the caller's transaction; messages go out after commit, through
the execute messages these return (the caller publishes them in one batch with
:func:`app.dispatch.publish_after_commit`).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from app.clock import after
from app.db import repository as repo
from app.dispatch import ExecuteMessage
from app.records import TaskRecord
from app.runtime import Runtime
from app.scheduling import republish_delay
from app.services import limits
from app.states import AttemptOutcome, OnLost, TaskKind, TaskState

#: the kinds a worker runs (a subworkflow, timer, signal or marker step is never claimed by a worker)
WORKER_KINDS = frozenset({TaskKind.ACTIVITY, TaskKind.PYTHON, TaskKind.SHELL})


@dataclass
class EagerSlot:
    """Room for one eager claim (Temporal's "eager activity execution"): a worker that finishes a task and
    advances its run inline offers this to the advance; the first task of that same run the advance submits on
    ``queue`` (the queue the finished task's message came from, so one this worker process consumes) is claimed
    for this worker in the same transaction instead of being published, and the worker runs it right after
    commit. Should the worker die after that commit, nothing is lost: the attempt is ``running`` with a lease
    like any claimed one, and the reconciler's lost-attempt path retries it once the lease lapses.
    (Temporal: a worker sets ``request_eager_execution`` on a ``ScheduleActivityTaskCommandAttributes``
    (temporalio/api, command/v1) and the server hands that activity task back in the response to the workflow
    task's completion, ``RespondWorkflowTaskCompletedResponse.activity_tasks``, instead of dispatching it
    through the task queue.)"""

    queue: str
    run_id: int
    claimed: TaskRecord | None = None
    token: str = ""
    claimed_at: datetime | None = None

    def takes(self, task: TaskRecord) -> bool:
        return self.claimed is None and task.run_id == self.run_id and task.queue == self.queue \
            and task.kind in WORKER_KINDS and not limits.is_limited(task)  # admitted at its own claim


def _message(task: TaskRecord, attempt: int, label: str, countdown: float = 0.0) -> ExecuteMessage:
    return ExecuteMessage(task.id, attempt, task.queue, task.priority, countdown=countdown, label=label)


def submit(
    s: Session, rt: Runtime, task: TaskRecord, *, actor: str, now: datetime, reason: str, label: str,
    eager: EagerSlot | None = None,
) -> ExecuteMessage | None:
    """``pending -> submitted``: the task's next attempt is ready to run (its dependencies are met).
    With an ``eager`` slot that takes the task, the attempt is also claimed for this worker (``submitted ->
    running``, its own event) in this transaction, and no message is returned: the worker runs it after commit."""
    attempt = task.attempt + 1
    if not repo.transition_task(
        s, task, TaskState.SUBMITTED, actor=actor, now=now, reason=reason, attempt=attempt, publish_count=1,
        not_before=None, next_publish_at=after(rt.settings.orphan_timeout_seconds, now), error=None, result=None,
    ):
        return None
    if eager is not None and eager.takes(task):
        token = str(uuid.uuid4())
        claimed = claim(s, rt, task.id, attempt, now=now, token=token,
                        reason=f"claimed eagerly by {rt.worker_id} (it finished the previous task)")
        if claimed is not None:
            eager.claimed, eager.token, eager.claimed_at = claimed, token, now
            return None
    return _message(task, attempt, label)


def republish(
    s: Session, rt: Runtime, task: TaskRecord, *, actor: str, now: datetime, reason: str = "not claimed in time",
) -> ExecuteMessage | None:
    """``submitted -> submitted``: nobody claimed the attempt in time (its message was lost, or waits behind a
    backlog; or its run was paused and is resumed): publish it again, and check again after an exponentially
    longer wait."""
    n = task.publish_count + 1
    delay = republish_delay(n, rt.settings)
    if not repo.transition_task(
        s, task, TaskState.SUBMITTED, actor=actor, now=now, publish_count=n, next_publish_at=after(delay, now),
        reason=f"{reason}: re-published (publish #{n} of attempt {task.attempt}; next check in {delay:g}s)",
    ):
        return None
    return _message(task, task.attempt, task.label)


def claim(
    s: Session, rt: Runtime, task_run_id: int, attempt: int, *, now: datetime, token: str, reason: str | None = None,
) -> TaskRecord | None:
    """``submitted -> running`` for exactly ``attempt``, holding a lease ``token``; None when there was nothing
    to claim (a duplicate, late or early message, or a row not visible yet) or when a limit keeps the task
    waiting (:mod:`app.services.limits`: it stays submitted, and is re-published when a slot frees)."""
    why = reason or f"claimed by {rt.worker_id}"
    task = repo.claim_task(
        s, task_run_id, attempt, actor=rt.worker_id, now=now, reason=why, unlimited=True, pid=os.getpid(),
        worker=rt.worker_id, lease_token=token, lease_expires_at=after(rt.settings.lease_seconds, now),
        started_at=now,
    )
    if task is None:
        # not claimable, or under a limit: admitted (or not) holding the limit's row lock
        waiting = repo.get_task(s, task_run_id)
        if waiting is None or not limits.is_limited(waiting) or waiting.state != TaskState.SUBMITTED \
                or waiting.attempt != attempt or (waiting.not_before is not None and waiting.not_before > now):
            return None
        refused, now = limits.admit(s, waiting)  # ``now``: read after the limits' locks
        if refused is not None:
            return None
        task = repo.claim_task(
            s, task_run_id, attempt, actor=rt.worker_id, now=now, reason=why, pid=os.getpid(), worker=rt.worker_id,
            lease_token=token, lease_expires_at=after(rt.settings.lease_seconds, now), started_at=now,
        )
    return task


def succeed(
    s: Session, rt: Runtime, task_run_id: int, attempt: int, token: str, *, result: Any, now: datetime,
    handled: bool, log: str | None, started_at: datetime | None, claimed: TaskRecord | None = None,
) -> TaskRecord | None:
    """``running -> succeeded``, fenced by the attempt's lease token (None: the attempt lost its lease, its
    result is discarded). ``handled``: the caller advances the run in this same transaction.

    ``claimed``: the record :func:`claim` returned for this attempt. Then the update returns nothing and the
    succeeded record is the claimed one with what the update wrote: while the fence holds (same id, state
    ``running``, attempt and lease token) nobody else writes the row but the heartbeat, whose one column
    (``lease_expires_at``) this update overwrites. A ``RETURNING *`` of every column (the JSON body included)
    cost the worker more client CPU than the rest of the statement (bench/README.md, docs/benchmarks.md)."""
    values: dict[str, Any] = dict(result=result, finished_at=now, handled=handled, lease_expires_at=None)
    task: TaskRecord | None
    if claimed is not None and claimed.id == task_run_id and claimed.attempt == attempt \
            and claimed.state == TaskState.RUNNING:
        landed = repo.finish_running(s, claimed, TaskState.SUCCEEDED, actor=rt.worker_id, fence=token, now=now,
                                     reason="succeeded", outcome=AttemptOutcome.SUCCEEDED, log=log,
                                     started_at=started_at, **values)
        task = replace(claimed, state=TaskState.SUCCEEDED, updated_at=now, **values) if landed else None
    else:
        task = repo.transition_by_id(s, task_run_id, TaskState.RUNNING, TaskState.SUCCEEDED, attempt=attempt,
                                     fence=token, actor=rt.worker_id, now=now, reason="succeeded", **values)
        if task is not None:
            repo.finish_attempt(s, task_run_id, attempt, outcome=AttemptOutcome.SUCCEEDED, log=log, now=now,
                                started_at=started_at)
    if task is not None:
        limits.release(s, rt, task, now)
    return task


def fail(
    s: Session, rt: Runtime, task: TaskRecord, error: str, *, outcome: AttemptOutcome, actor: str,
    fence: str | None, now: datetime, log: str | None = None, started_at: datetime | None = None,
) -> tuple[TaskState | None, ExecuteMessage | None]:
    """A running attempt ended without success: the body failed or timed out, or the attempt was lost (its
    lease lapsed). Retry it on the matching budget, or fail the task. Returns the state the task moved to
    (None: the transition did not land, e.g. the fence no longer matches) and the retry's message."""
    policy = task.retry
    label = task.label
    if outcome == AttemptOutcome.LOST:
        lost = task.lost_attempts + 1
        counters: dict[str, int] = {"lost_attempts": lost}
        if policy.on_lost == OnLost.FAIL:
            retry, why = False, f"attempt {task.attempt} lost: {error}; not retried (on_lost: fail)"
        elif lost < policy.max_lost_attempts:
            retry, why = True, (f"attempt {task.attempt} lost: {error}; lost attempt {lost} of at most "
                                f"{policy.max_lost_attempts}, retrying")
        else:
            retry, why = False, (f"attempt {task.attempt} lost: {error}; {lost} attempts lost "
                                 f"(max_lost_attempts: {policy.max_lost_attempts}): the body may be killing its "
                                 "worker (out of memory?)")
        delay = 0.0
    else:
        failures = task.failures + 1
        counters = {"failures": failures}
        retry = failures <= policy.retries
        delay = policy.delay_for(failures) if retry else 0.0
        why = (f"attempt {task.attempt} {outcome}: {error}"
               + (f"; retry {failures}/{policy.retries}" + (f" in {delay:g}s" if delay else "") if retry
                  else f"; no retries left ({policy.retries})" if policy.retries else ""))
    message: ExecuteMessage | None = None
    if retry:
        attempt = task.attempt + 1
        landed = repo.transition_task(
            s, task, TaskState.SUBMITTED, actor=actor, fence=fence, now=now, reason=why, attempt=attempt,
            error=error, not_before=after(delay, now) if delay > 0 else None, publish_count=1,
            next_publish_at=after(delay + rt.settings.orphan_timeout_seconds, now), lease_token=None,
            lease_expires_at=None, worker=None, **counters,
        )
        to = TaskState.SUBMITTED
        if landed:
            message = _message(task, attempt, label, countdown=delay)
    else:
        landed = repo.transition_task(
            s, task, TaskState.FAILED, actor=actor, fence=fence, now=now, reason=why, finished_at=now,
            # a lost task's error says why it was not retried; a failed body's is the body's own error
            error=why if outcome == AttemptOutcome.LOST else error,
            lease_expires_at=None, **counters,
        )
        to = TaskState.FAILED
    if not landed:
        return None, None
    repo.finish_attempt(s, task.id, task.attempt, outcome=outcome, error=error, log=log, now=now,
                        started_at=started_at)
    limits.release(s, rt, task, now)
    return to, message


def stop(
    s: Session, task: TaskRecord, to: TaskState, *, actor: str, reason: str, now: datetime, **values: Any,
) -> bool:
    """A live task will not run (skipped) or must stop (cancelled): a running attempt loses its lease by this
    (its heartbeat sees it and stops the body) and ends ``cancelled``."""
    if not repo.transition_task(s, task, to, actor=actor, now=now, reason=reason, finished_at=now, lease_token=None,
                                lease_expires_at=None, **values):
        return False
    if task.state == TaskState.RUNNING:
        repo.finish_attempt(s, task.id, task.attempt, outcome=AttemptOutcome.CANCELLED, error=reason, now=now)
    return True
