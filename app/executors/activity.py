"""The ``activity`` executor: a code run's activity step calls its registered function (by the name the workflow
recorded; never a path a caller wrote) with the step's recorded arguments."""

from __future__ import annotations

from typing import Any

from app.errors import TaskFailure
from app.executors.base import Body, ExecutionContext
from app.executors.python import call_captured


class ActivityExecutor:
    def run(self, spec: Body, ctx: ExecutionContext) -> Any:
        from app.code import registry

        name = getattr(spec, "activity", None) or ""
        adef = registry.get_activity(name)
        if adef is None:
            raise TaskFailure(f"activity '{name}' is not registered in this worker (is its module in "
                              "TIDEFLOW_WORKFLOW_MODULES?)")
        return call_captured(adef.fn, list(getattr(spec, "argv", None) or []), dict(spec.args or {}), ctx)
