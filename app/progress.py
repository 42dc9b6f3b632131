"""A run's live progress on a terminal (rich), for ``tideflow run start --wait`` and ``tideflow demo``.

Drawing only: the polling is :meth:`app.client.Tideflow.wait`, which calls a :class:`LiveProgress` with every
view of the run it reads::

    with LiveProgress(console) as show:
        run = tf.wait(run_id, timeout=600, on_progress=show)
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from app.states import TASK_TERMINAL, TaskState

STATE_STYLE: dict[str, str] = {
    TaskState.SUCCEEDED: "green", TaskState.FAILED: "red", TaskState.RUNNING: "cyan", TaskState.SUBMITTED: "yellow",
    TaskState.PENDING: "dim", TaskState.SKIPPED: "magenta", TaskState.CANCELLED: "magenta",
}


def styled(state: str) -> str:
    return f"[{STATE_STYLE.get(state, 'white')}]{state}[/]"


def tasks_table(data: dict[str, Any]) -> Table:
    """A run's tasks (a run view of :mod:`app.services.views`), one row each."""
    t = Table("task", "state", "attempt", "duration", "worker", "error", title=(
        f"run {data['id']} · {data['workflow']} · {styled(data['state'])}"))
    for task in data["tasks"]:
        dur = f"{task['duration']:.2f}s" if task["duration"] is not None else ""
        t.add_row(task["name"], styled(task["state"]), str(task["attempt"]), dur, task["worker"] or "",
                  (task["error"] or "")[:60])
    return t


def progress(data: dict[str, Any], elapsed: float) -> Group:
    """A progress bar (finished / all tasks) above the task table."""
    total = len(data["tasks"])
    done = sum(1 for t in data["tasks"] if t["state"] in TASK_TERMINAL)
    failed = any(t["state"] == TaskState.FAILED for t in data["tasks"])
    line = Table.grid(padding=(0, 1))
    line.add_row(ProgressBar(total=max(total, 1), completed=done, width=40,
                             complete_style="red" if failed else "green", finished_style="red" if failed else "green"),
                 f"{done}/{total} tasks", styled(data["state"]), f"{elapsed:.1f}s")
    return Group(line, tasks_table(data))


class LiveProgress:
    """Context manager; call it with each view of the run (``on_progress``). On a terminal the progress bar and
    table are redrawn in place; elsewhere (a pipe, a file, a dumb terminal) rich's Live prints only the last
    view, once, when the context exits, without control codes (rich/live.py, ``refresh``: it redraws only
    when ``console.is_terminal``, and renders once on stop otherwise)."""

    def __init__(self, console: Console):
        self._live = Live("", console=console, auto_refresh=False)
        self._started = time.monotonic()

    def __enter__(self) -> LiveProgress:
        self._started = time.monotonic()
        self._live.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._live.__exit__(exc_type, exc, tb)

    def __call__(self, view: dict[str, Any]) -> None:
        self._live.update(progress(view, time.monotonic() - self._started), refresh=True)
