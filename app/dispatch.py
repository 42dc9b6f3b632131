"""The broker boundary: everything Tideflow sends to the broker goes through a :class:`Dispatcher`.

Services never publish directly: they call :func:`publish_after_commit`, which defers the publish to the
session's on-commit hook (``app.db.oncommit``). ``app.broker.CeleryDispatcher`` is the real one.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.orm import Session

from app.db.oncommit import on_commit


@dataclass(frozen=True)
class ExecuteMessage:
    task_run_id: int
    attempt: int
    queue: str
    priority: int  # Tideflow priority 0..9, 9 most urgent
    countdown: float = 0.0
    label: str = ""  # "workflow/task", shown by Flower as the task name


class Dispatcher(Protocol):
    def execute(self, messages: Sequence[ExecuteMessage]) -> None: ...

    def advance(self, run_ids: Sequence[int], labels: Mapping[int, str] | None = None) -> None:
        """Ask the master to advance each run; ``labels``: run id -> its workflow's name, where the caller knows
        it (Flower shows the message as ``tideflow.advance[NAME #ID]``)."""
        ...

    def ping(self) -> bool:
        """Can the broker be reached right now? (Health checks; never raises.)"""
        ...

    def queue_depths(self, queues: Collection[str]) -> dict[str, int | None]:
        """Messages waiting in each of ``queues`` (not those a worker has reserved); None where that cannot be
        told, e.g. the broker cannot be reached. (``/metrics``; never raises.)"""
        ...


def publish_after_commit(
    session: Session, dispatcher: Dispatcher, *, execute: Sequence[ExecuteMessage] = (),
    advance: Sequence[int] = (), advance_labels: Mapping[int, str] | None = None,
) -> None:
    if execute:
        msgs = list(execute)
        on_commit(session, lambda: dispatcher.execute(msgs))
    if advance:
        runs = list(advance)
        labels = dict(advance_labels) if advance_labels else None
        on_commit(session, lambda: dispatcher.advance(runs, labels))


class RecordingDispatcher:
    """Keeps messages in lists: for unit tests of pure logic and for in-process use (never for a test
    of delivery)."""

    def __init__(self) -> None:
        self.executed: list[ExecuteMessage] = []
        self.advanced: list[int] = []

    def execute(self, messages: Sequence[ExecuteMessage]) -> None:
        self.executed.extend(messages)

    def advance(self, run_ids: Sequence[int], labels: Mapping[int, str] | None = None) -> None:
        self.advanced.extend(run_ids)

    def ping(self) -> bool:
        return True

    def queue_depths(self, queues: Collection[str]) -> dict[str, int | None]:
        """No broker, so no depth to tell: every one is unknown."""
        return dict.fromkeys(queues)
