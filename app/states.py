"""Task and run states, and the only table of transitions allowed between them.

Every state change goes through :mod:`app.db.repository` (``transition_task`` / ``transition_run``),
which checks this table and writes a guarded ``UPDATE ... WHERE state = expected`` plus an event row in
the same transaction. If you are looking for "who may change a state": it is this table and that module.
"""

from __future__ import annotations

from enum import StrEnum

from app.errors import IllegalTransition


class TaskState(StrEnum):
    PENDING = "pending"  # waiting for its upstream tasks
    SUBMITTED = "submitted"  # committed as ready to run; an execute message is (or will be re-)published
    RUNNING = "running"  # claimed by one attempt holding a lease (or: a child run is in progress)
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # never ran: an upstream task failed, or the run stopped at a failure
    CANCELLED = "cancelled"  # the run was cancelled


class RunState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TASK_TERMINAL = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.SKIPPED, TaskState.CANCELLED})
TASK_LIVE = frozenset({TaskState.PENDING, TaskState.SUBMITTED, TaskState.RUNNING})
RUN_TERMINAL = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED})

TASK_TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.PENDING: frozenset(
        {
            TaskState.SUBMITTED,  # upstream met: dispatch
            TaskState.RUNNING,  # subworkflow task: its child run starts in the same transaction
            TaskState.FAILED,  # could not be started (e.g. a subworkflow whose child cannot start)
            TaskState.SKIPPED,
            TaskState.CANCELLED,
        }
    ),
    TaskState.SUBMITTED: frozenset(
        {
            TaskState.SUBMITTED,  # re-published by the reconciler (same state, recorded as an event)
            TaskState.RUNNING,  # claimed by a worker
            TaskState.FAILED,  # the worker could not even start it (e.g. unknown python function)
            TaskState.SKIPPED,
            TaskState.CANCELLED,
        }
    ),
    TaskState.RUNNING: frozenset(
        {
            TaskState.SUCCEEDED,
            TaskState.FAILED,
            TaskState.SUBMITTED,  # the attempt failed or lost its lease, and a retry is left
            TaskState.CANCELLED,
        }
    ),
    TaskState.FAILED: frozenset({TaskState.PENDING}),  # run retry
    TaskState.SKIPPED: frozenset({TaskState.PENDING}),  # run retry
    TaskState.CANCELLED: frozenset({TaskState.PENDING}),  # run retry
    TaskState.SUCCEEDED: frozenset(),
}

RUN_TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    RunState.RUNNING: frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED}),
    RunState.FAILED: frozenset({RunState.RUNNING}),  # retry from the failed tasks
    RunState.CANCELLED: frozenset({RunState.RUNNING}),  # retry a cancelled run
    RunState.SUCCEEDED: frozenset(),
}


def check_task_transition(src: TaskState, dst: TaskState) -> None:
    if dst not in TASK_TRANSITIONS[src]:
        raise IllegalTransition(f"task state {src} -> {dst} is not allowed")


def check_run_transition(src: RunState, dst: RunState) -> None:
    if dst not in RUN_TRANSITIONS[src]:
        raise IllegalTransition(f"run state {src} -> {dst} is not allowed")
