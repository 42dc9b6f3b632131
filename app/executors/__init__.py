"""Task bodies: ``shell`` (a command in its own process group), ``python`` (an imported callable) and ``activity``
(a code run's registered activity)."""

from app.errors import TaskFailure
from app.executors.activity import ActivityExecutor
from app.executors.base import Body, ExecutionContext, Executor
from app.executors.logbuffer import LogBuffer
from app.executors.python import PythonExecutor
from app.executors.shell import ShellExecutor

__all__ = ["Body", "ExecutionContext", "Executor", "LogBuffer", "executor_for"]

_EXECUTORS: dict[str, Executor] = {"shell": ShellExecutor(), "python": PythonExecutor(),
                                   "activity": ActivityExecutor()}


def executor_for(task_type: str) -> Executor:
    """The executor for a task type; :class:`TaskFailure` for a type that has none (e.g. subworkflow)."""
    try:
        return _EXECUTORS[task_type]
    except KeyError:
        raise TaskFailure(f"no executor for task type '{task_type}'") from None
