"""Typed records of the rows the services work with (procrastinate's ``Job.from_row``): the repository returns
these, never raw SQLAlchemy rows, so a service reads ``task.retry.retries`` with its type, not ``row.retries``.

A :class:`TaskRecord` carries everything needed to run, retry and fence an attempt (it describes itself:
what to run, timeout, retry policy, queue, priority, snapshotted from the definition at creation), so the
worker, lease keeper and reconciler never read the workflow definition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.states import OnLost, RunKind, RunState, TaskKind, TaskState


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retries: int = 0
    retry_delay: float = 0.0
    retry_backoff: float = 2.0
    max_retry_delay: float = 3600.0
    max_lost_attempts: int = 3
    on_lost: OnLost = OnLost.RETRY

    def delay_for(self, failures: int) -> float:
        """Delay before the retry that follows the ``failures``-th failed attempt (1-based)."""
        return float(min(self.retry_delay * self.retry_backoff ** max(failures - 1, 0), self.max_retry_delay))


@dataclass(frozen=True, slots=True)
class TaskBody:
    """What a task runs, unrendered (placeholders are rendered by the executor, at each attempt)."""

    name: str
    command: str | None = None
    env: dict[str, str] | None = None
    function: str | None = None
    args: dict[str, Any] | None = None
    workflow: str | None = None
    params: dict[str, Any] | None = None
    #: the upstream tasks whose results the body receives
    inputs: tuple[str, ...] = ()
    #: a code run's step: the activity it runs and its positional arguments (``args``: keyword ones), or the
    #: signal it waits for
    activity: str | None = None
    argv: list[Any] | None = None
    signal: str | None = None

    @classmethod
    def from_json(cls, name: str, body: dict[str, Any] | None) -> TaskBody:
        b = body or {}
        return cls(name=name, command=b.get("command"), env=b.get("env"), function=b.get("function"),
                   args=b.get("args"), workflow=b.get("workflow"), params=b.get("params"),
                   inputs=tuple(b.get("inputs") or ()), activity=b.get("activity"), argv=b.get("argv"),
                   signal=b.get("signal"))


@dataclass(frozen=True, slots=True)
class TaskRecord:
    id: int
    run_id: int
    name: str
    kind: TaskKind
    state: TaskState
    attempt: int
    failures: int
    lost_attempts: int
    queue: str
    priority: int
    body: TaskBody
    timeout: float | None
    retry: RetryPolicy
    handled: bool
    worker: str | None = None
    lease_token: str | None = None
    lease_expires_at: datetime | None = None
    not_before: datetime | None = None
    ready_at: datetime | None = None
    publish_count: int = 0
    next_publish_at: datetime | None = None
    child_run_id: int | None = None
    result: Any = None
    error: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    #: a code run's step: its position in the history, and when a timer fires / a signal wait times out
    seq: int | None = None
    due_at: datetime | None = None
    #: limits: the pool whose slot each attempt takes (``app.services.limits``)
    pool: str | None = None
    concurrency_key: str | None = None
    concurrency_limit: int | None = None
    rate_key: str | None = None
    rate_limit: str | None = None
    #: a code run's step discarded by a reset (``task rerun`` / ``force-success``): kept, out of the history
    superseded_at: datetime | None = None
    #: the run's workflow name, when the query joined it (message labels)
    workflow_name: str | None = field(default=None, compare=False)

    @property
    def type(self) -> str:
        """``task_runs.type`` (read models show it under this name)."""
        return str(self.kind)

    @property
    def label(self) -> str:
        """``workflow/task``: the name Flower shows for its messages."""
        return f"{self.workflow_name}/{self.name}" if self.workflow_name else self.name

    @classmethod
    def from_row(cls, row: Any) -> TaskRecord:
        m = row._mapping
        return cls(
            id=m["id"], run_id=m["run_id"], name=m["name"], kind=TaskKind(m["type"]), state=TaskState(m["state"]),
            attempt=m["attempt"], failures=m["failures"], lost_attempts=m["lost_attempts"] or 0,
            queue=m["queue"], priority=m["priority"], body=TaskBody.from_json(m["name"], m["body"]),
            timeout=m["timeout"],
            retry=RetryPolicy(m["retries"], m["retry_delay"], m["retry_backoff"], m["max_retry_delay"],
                              m["max_lost_attempts"], OnLost(m["on_lost"])),
            handled=bool(m["handled"]), worker=m["worker"], lease_token=m["lease_token"],
            lease_expires_at=m["lease_expires_at"], not_before=m["not_before"], ready_at=m["ready_at"],
            publish_count=m["publish_count"], next_publish_at=m["next_publish_at"], child_run_id=m["child_run_id"],
            result=m["result"], error=m["error"], created_at=m["created_at"], updated_at=m["updated_at"],
            started_at=m["started_at"], finished_at=m["finished_at"], seq=m["seq"], due_at=m["due_at"],
            pool=m["pool"], concurrency_key=m["concurrency_key"], concurrency_limit=m["concurrency_limit"],
            rate_key=m["rate_key"], rate_limit=m["rate_limit"], superseded_at=m["superseded_at"],
            # ``in``, not ``m.get``: a missing key costs RowMapping a raised and caught KeyError
            workflow_name=m["workflow_name"] if "workflow_name" in m else None,  # noqa: SIM401
        )


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: int
    workflow_id: int
    workflow_name: str
    kind: RunKind
    state: RunState
    params: dict[str, Any]
    priority: int
    on_failure: str
    parent_task_run_id: int | None = None
    error: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None
    key: str | None = None
    result: Any = None
    state_values: dict[str, Any] | None = None
    cancel_requested: bool = False
    continued_run_id: int | None = None
    #: the schedule that started the run and its logical fire time (``{{ schedule.time }}``, ``ctx.schedule_time``)
    schedule_name: str | None = None
    schedule_time: datetime | None = None
    #: limits: its rendered workflow concurrency key
    concurrency_key: str | None = None
    #: the run of the parent task (a child run's parent run), when the query joined it (read models)
    parent_run_id: int | None = field(default=None, compare=False)

    @classmethod
    def from_row(cls, row: Any) -> RunRecord:
        m = row._mapping
        return cls(
            id=m["id"], workflow_id=m["workflow_id"], workflow_name=m["workflow_name"], kind=RunKind(m["kind"]),
            state=RunState(m["state"]), params=dict(m["params"] or {}), priority=m["priority"],
            on_failure=m["on_failure"], parent_task_run_id=m["parent_task_run_id"], error=m["error"],
            created_at=m["created_at"], updated_at=m["updated_at"], finished_at=m["finished_at"],
            key=m["key"], result=m["result"], state_values=m["state_values"],
            cancel_requested=bool(m["cancel_requested"]), continued_run_id=m["continued_run_id"],
            schedule_name=m["schedule_name"] if "schedule_name" in m else None,  # noqa: SIM401
            schedule_time=m["schedule_time"] if "schedule_time" in m else None,  # noqa: SIM401
            concurrency_key=m["concurrency_key"],
            parent_run_id=m["parent_run_id"] if "parent_run_id" in m else None,  # noqa: SIM401
        )


@dataclass(frozen=True, slots=True)
class SignalRecord:
    id: int
    run_id: int
    name: str
    data: Any
    key: str | None
    actor: str
    task_run_id: int | None
    created_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Any) -> SignalRecord:
        m = row._mapping
        return cls(id=m["id"], run_id=m["run_id"], name=m["name"], data=m["data"], key=m["key"], actor=m["actor"],
                   task_run_id=m["task_run_id"], created_at=m["created_at"])


@dataclass(frozen=True, slots=True)
class WorkflowRecord:
    """One registered version of a definition (never changes once stored)."""

    id: int
    name: str
    version: int
    digest: str
    definition: dict[str, Any]
    created_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Any) -> WorkflowRecord:
        m = row._mapping
        return cls(id=m["id"], name=m["name"], version=m["version"], digest=m["digest"],
                   definition=dict(m["definition"]), created_at=m["created_at"])
