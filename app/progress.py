"""A run's live progress on a terminal (rich), for ``tideflow run start --wait`` and ``tideflow demo``.

Drawing only: the polling is :meth:`app.client.Tideflow.wait`, which calls a :class:`LiveProgress` with every
view of the run it reads::

    with LiveProgress(console) as show:
        run = tf.wait(run_id, timeout=600, on_progress=show)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Column, Table

from app.states import TASK_TERMINAL, RunKind, RunState, TaskKind, TaskState

STATE_STYLE: dict[str, str] = {
    TaskState.SUCCEEDED: "green", TaskState.FAILED: "red", TaskState.RUNNING: "cyan", TaskState.SUBMITTED: "yellow",
    TaskState.PENDING: "dim", TaskState.SKIPPED: "magenta", TaskState.CANCELLED: "magenta",
}
#: the order finished tasks are counted in on the progress line
TERMINAL_ORDER = (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.SKIPPED, TaskState.CANCELLED)


def styled(state: str) -> str:
    return f"[{STATE_STYLE.get(state, 'white')}]{state}[/]"


def tasks_table(data: dict[str, Any]) -> Table:
    """A run's tasks (a run view of :mod:`app.services.views`), one row each, with the task run id that
    ``tideflow task logs`` takes. The error (a skipped task: why it was skipped) is shown whole (folded over lines,
    never cut)."""
    t = Table(Column("id", no_wrap=True), Column("task", no_wrap=True), "state", "attempt", "duration", "worker",
              Column("error", overflow="fold", ratio=1),
              title=f"run {data['id']} · {data['workflow']} · {styled(data['state'])}")
    for task in data["tasks"]:
        dur = f"{task['duration']:.2f}s" if task["duration"] is not None else ""
        name = task["name"] + (" (superseded)" if task.get("superseded_at") else "")  # by a code run's reset
        t.add_row(str(task["id"]), name, styled(task["state"]), str(task["attempt"]), dur,
                  task["worker"] or "", escape(task["error"] or task.get("skip_reason") or ""))
    return t


def counts_line(tasks: list[dict[str, Any]]) -> str:
    """The tasks by outcome, each counted apart: ``4/6 tasks done: 2 succeeded, 1 failed, 1 skipped``."""
    done = [t["state"] for t in tasks if t["state"] in TASK_TERMINAL]
    parts = [f"{n} {styled(st)}" for st in TERMINAL_ORDER if (n := done.count(st))]
    return f"{len(done)}/{len(tasks)} tasks done" + (f": {', '.join(parts)}" if parts else "")


def progress(data: dict[str, Any], elapsed: float) -> Group:
    """A progress bar (finished / all tasks) and the finished ones by outcome, above the task table."""
    total = len(data["tasks"])
    done = sum(1 for t in data["tasks"] if t["state"] in TASK_TERMINAL)
    failed = any(t["state"] == TaskState.FAILED for t in data["tasks"])
    line = Table.grid(padding=(0, 1))
    line.add_row(ProgressBar(total=max(total, 1), completed=done, width=30,
                             complete_style="red" if failed else "green", finished_style="red" if failed else "green"),
                 counts_line(data["tasks"]), f"run {styled(data['state'])}", f"{elapsed:.1f}s")
    return Group(line, tasks_table(data))


#: the task kinds a worker claims (the others wait for time, a signal or a child run while ``running``)
WORKER_KINDS = frozenset({TaskKind.SHELL, TaskKind.PYTHON, TaskKind.ACTIVITY})


class UnclaimedNotice:
    """Watches the views of a run being waited on and says once, when for ``after`` seconds tasks have waited in a
    queue, none ran and nothing changed, that no worker seems to serve that queue. Cheap: it reads only the views
    the wait already polls (no broker round trip); a code run with no step yet waits for the master queue."""

    def __init__(self, after: float, master_queue: str, say: Callable[[str], None]):
        self.after = after
        self.master_queue = master_queue
        self.say = say
        self._last: tuple[Any, ...] | None = None
        self._since = time.monotonic()
        self._said = False

    def __call__(self, view: dict[str, Any]) -> None:
        now = time.monotonic()
        seen = (view["state"], tuple((t["id"], t["state"], t["attempt"]) for t in view["tasks"]))
        if seen != self._last:
            self._last, self._since, self._said = seen, now, False
            return
        queues = self.waiting_queues(view)
        if queues and not self._said and now - self._since >= self.after:
            self._said = True
            self.say(f"no worker has claimed a task of run {view['id']} for {now - self._since:.0f} s: is a worker "
                     f"running on queue {', '.join(queues)}?")

    def waiting_queues(self, view: dict[str, Any]) -> list[str]:
        """The queues the run waits on with no worker busy for it (empty: it is not waiting for a worker)."""
        if view["state"] != RunState.RUNNING:
            return []
        tasks = view["tasks"]
        if any(t["state"] == TaskState.RUNNING and t["type"] in WORKER_KINDS for t in tasks):
            return []
        if not tasks and view.get("kind") == RunKind.CODE:
            return [self.master_queue]
        return sorted({t["queue"] for t in tasks if t["state"] == TaskState.SUBMITTED})


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
