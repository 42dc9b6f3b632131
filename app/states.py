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
    #: a code run whose code asked, on replay, for a different durable call than its history holds: kept as it
    #: is (nothing retried, nothing changed) until ``run resume`` after a fix is deployed
    BLOCKED = "blocked"
    #: ``run pause``: no new task starts (nothing is submitted, a submitted task's claim is refused and it waits for
    #: ``run resume``, which re-publishes it); tasks already running finish. A code run is not replayed while paused
    PAUSED = "paused"
    #: limits (app/services/limits.py): its workflow's ``max_active_runs`` are running; it starts (-> running) when
    #: one ends, by priority then first come. Nothing of it has run yet.
    QUEUED = "queued"


class TaskKind(StrEnum):
    """What a task row runs (``task_runs.type``). A worker runs shell and python bodies; a subworkflow task is
    run by the master, as a child run."""

    SHELL = "shell"
    PYTHON = "python"
    SUBWORKFLOW = "subworkflow"
    SWITCH = "switch"  # a DAG's branch choice: decided by the master (``app.conditions.choose``), never by a worker
    # the steps of a code run (``task_runs.seq`` is their position in its history):
    ACTIVITY = "activity"  # a registered activity function, run by a worker like a python task
    TIMER = "timer"  # ``ctx.sleep``: running until ``due_at``, fired by the reconciler
    SIGNAL = "signal"  # ``ctx.wait_signal``: running until a signal arrives (or ``due_at``, its timeout)
    MARKER = "marker"  # a recorded value (``ctx.now/uuid4/random``, a patch marker): born succeeded


class RunKind(StrEnum):
    """Which decider advances a run (``workflow_runs.kind``, see ``app.services.deciders``)."""

    DAG = "dag"
    CODE = "code"  # a Python function replayed against its history (``app.code``)


class AttemptOutcome(StrEnum):
    """How one attempt ended (``task_attempts.outcome``)."""

    RUNNING = "running"  # not ended yet
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the body failed: counts against ``retries``
    TIMED_OUT = "timed_out"  # the body ran past its timeout: counts against ``retries``
    LOST = "lost"  # its lease lapsed (worker killed, OOM, host lost, partition): counts against ``max_lost_attempts``
    CANCELLED = "cancelled"  # the task was cancelled or skipped while it ran


class OnLost(StrEnum):
    """What a lost attempt leads to (a task's ``on_lost``)."""

    RETRY = "retry"  # a new attempt, on the ``max_lost_attempts`` budget (separate from ``retries``)
    FAIL = "fail"  # the task fails: for bodies that must never run twice


TASK_TERMINAL = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.SKIPPED, TaskState.CANCELLED})
TASK_LIVE = frozenset({TaskState.PENDING, TaskState.SUBMITTED, TaskState.RUNNING})
#: in the enum's order (and ``ix_task_runs_live``'s), so SQL built from it is the same text in every process
TASK_LIVE_ORDERED = tuple(st for st in TaskState if st in TASK_LIVE)
#: a task in one of these did not succeed, so its downstream tasks never run
TASK_UNSUCCESSFUL = frozenset({TaskState.FAILED, TaskState.SKIPPED, TaskState.CANCELLED})
RUN_TERMINAL = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED})
#: a run in one of these will not move without a person: terminal, or blocked (``run resume``)
RUN_SETTLED = RUN_TERMINAL | {RunState.BLOCKED}

TASK_TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.PENDING: frozenset(
        {
            TaskState.SUBMITTED,  # upstream met: dispatch
            TaskState.RUNNING,  # subworkflow task: its child run starts in the same transaction (a switch: chosen now)
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
    TaskState.FAILED: frozenset(
        {TaskState.PENDING, TaskState.SUCCEEDED}),  # run retry, task rerun; task force-success
    TaskState.SKIPPED: frozenset({TaskState.PENDING}),  # run retry, task rerun
    TaskState.CANCELLED: frozenset({TaskState.PENDING}),  # run retry, task rerun
    TaskState.SUCCEEDED: frozenset({TaskState.PENDING}),  # task rerun ("start from this node")
}

RUN_TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    RunState.RUNNING: frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.BLOCKED,
                                 RunState.PAUSED}),  # run pause
    RunState.BLOCKED: frozenset({RunState.RUNNING, RunState.CANCELLED}),  # run resume; cancel
    RunState.PAUSED: frozenset({RunState.RUNNING, RunState.CANCELLED}),  # run resume; cancel
    RunState.FAILED: frozenset({RunState.RUNNING}),  # retry from the failed tasks; task force-success or rerun
    RunState.CANCELLED: frozenset({RunState.RUNNING}),  # retry a cancelled run; task rerun
    RunState.SUCCEEDED: frozenset({RunState.RUNNING}),  # task rerun ("start from this node")
    RunState.QUEUED: frozenset({RunState.RUNNING, RunState.CANCELLED}),  # a slot of max_active_runs freed; cancel
}


def check_task_transition(src: TaskState, dst: TaskState) -> None:
    if dst not in TASK_TRANSITIONS[src]:
        raise IllegalTransition(f"task state {src} -> {dst} is not allowed")


def check_run_transition(src: RunState, dst: RunState) -> None:
    if dst not in RUN_TRANSITIONS[src]:
        raise IllegalTransition(f"run state {src} -> {dst} is not allowed")
