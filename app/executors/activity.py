"""The ``activity`` executor: a code run's activity step calls its registered function (by the name the workflow
recorded; never a path a caller wrote) with the step's recorded arguments."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any

from app.errors import TaskFailure
from app.executors.base import Body, ExecutionContext
from app.executors.python import call_captured


@dataclass(frozen=True)
class ActivityInfo:
    """What an activity can know about the attempt running it (``tideflow.activity_info()``): e.g. to build an
    idempotency key for a payment API from ``run_id`` and ``seq`` (the same across retries)."""

    activity: str
    run_id: int
    workflow: str
    task_run_id: int
    seq: int | None
    attempt: int

    @property
    def idempotency_key(self) -> str:
        """Stable across the attempts of this activity step: ``<run id>-<task run id>``."""
        return f"{self.run_id}-{self.task_run_id}"


_current: contextvars.ContextVar[ActivityInfo | None] = contextvars.ContextVar("tideflow_activity", default=None)


def activity_info() -> ActivityInfo:
    """The running activity's :class:`ActivityInfo`; ``RuntimeError`` outside an activity."""
    info = _current.get()
    if info is None:
        raise RuntimeError("tideflow.activity_info() is only available while an activity runs")
    return info


class ActivityExecutor:
    def run(self, spec: Body, ctx: ExecutionContext) -> Any:
        from app.code import registry

        name = getattr(spec, "activity", None) or ""
        adef = registry.get_activity(name)
        if adef is None:
            raise TaskFailure(f"activity '{name}' is not registered in this worker (is its module in "
                              "TIDEFLOW_WORKFLOW_MODULES?)")
        seq = name_seq(spec.name)
        token = _current.set(ActivityInfo(name, ctx.run_id, ctx.workflow, ctx.task_run_id, seq, ctx.attempt))
        try:
            return call_captured(adef.fn, list(getattr(spec, "argv", None) or []), dict(spec.args or {}), ctx)
        finally:
            _current.reset(token)


def name_seq(row_name: str) -> int | None:
    """A step row is named ``<name>#<seq>``."""
    _, sep, tail = row_name.rpartition("#")
    return int(tail) if sep and tail.isdigit() else None
