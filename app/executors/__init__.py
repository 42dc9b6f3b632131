"""Task bodies: ``shell`` (a command in its own process group) and ``python`` (an imported callable)."""

from app.executors.base import ExecutionContext, Executor, executor_for
from app.executors.logbuffer import LogBuffer

__all__ = ["ExecutionContext", "Executor", "LogBuffer", "executor_for"]
