"""The error tree, by layer. The CLI prints ``str(error)`` of a :class:`TideflowError` as one line."""

from __future__ import annotations


class TideflowError(Exception):
    """Base of every error Tideflow raises on purpose."""


class DefinitionError(TideflowError):
    """A workflow definition is invalid; nothing was stored."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


class NotFound(TideflowError):
    """A workflow, run or task named by the caller does not exist."""


class InvalidState(TideflowError):
    """The requested operation does not apply in the object's current state (e.g. retry a running run)."""


class InvalidRequest(TideflowError):
    """A request's values do not make sense (e.g. a backfill whose end is before its start); nothing changed."""


class IllegalTransition(TideflowError):
    """Code asked for a state change the transition table forbids: a bug, never user input."""


class TaskFailure(TideflowError):
    """Raised by executors: the task body failed (non-zero exit, exception, timeout)."""

    def __init__(self, message: str, *, timed_out: bool = False):
        self.timed_out = timed_out
        super().__init__(message)


class TaskStopped(TideflowError):
    """The task body was stopped because its attempt lost its lease (failed over or cancelled)."""


class MissingExtra(TideflowError):
    """An optional dependency (one of pyproject.toml's extras) is not installed."""

    def __init__(self, package: str, extra: str):
        self.package = package
        self.extra = extra
        super().__init__(f"{package} is not installed: pip install 'tideflow[{extra}]'")
