"""What an executor gets (:class:`ExecutionContext`) and what it must do (:class:`Executor`).

An executor runs one attempt of one task body. It returns a JSON-serialisable result, raises
:class:`~app.errors.TaskFailure` when the body failed and :class:`~app.errors.TaskStopped` when it stopped
the body because ``ctx.stop`` was set (the caller knows why it was set: lease lost, cancel or timeout).
Everything the body prints goes to ``ctx.log``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.executors.logbuffer import LogBuffer


class Body(Protocol):
    """What an executor runs: a task row's body (``app.records.TaskBody``), unrendered."""

    @property
    def name(self) -> str: ...
    @property
    def command(self) -> str | None: ...
    @property
    def env(self) -> Mapping[str, str] | None: ...
    @property
    def function(self) -> str | None: ...
    @property
    def args(self) -> Mapping[str, Any] | None: ...


@dataclass
class ExecutionContext:
    run_id: int
    task_run_id: int
    task_name: str
    attempt: int
    workflow: str
    priority: int
    #: the run's parameters (declared defaults merged with the run's own)
    params: dict[str, Any]
    #: results of the succeeded upstream tasks, by task name
    upstream: dict[str, Any]
    #: set (by the lease keeper) when the body must stop: lease lost, cancel or timeout
    stop: threading.Event
    log: LogBuffer
    #: module prefixes a python task may name; empty means any module
    allowed_python_modules: tuple[str, ...] = ()
    #: ``{{ schedule.time }}`` / ``{{ schedule.name }}`` (``app.templating.schedule_scope``)
    schedule: dict[str, Any] = field(default_factory=dict)

    def template_context(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "upstream": self.upstream,
            "run": {"id": self.run_id, "priority": self.priority, "workflow": self.workflow},
            "schedule": self.schedule,
        }

    def should_stop(self) -> bool:
        return self.stop.is_set()


class Executor(Protocol):
    def run(self, spec: Body, ctx: ExecutionContext) -> Any: ...

