"""The ``--wait`` progress line and the "no worker" notice (app/progress.py), on hand-made run views."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.text import Text

from app.progress import UnclaimedNotice, counts_line, tasks_table


def _task(i: int, state: str, *, type_: str = "shell", queue: str = "q1", error: str | None = None) -> dict[str, Any]:
    return {"id": i, "name": f"t{i}", "type": type_, "state": state, "attempt": 1, "duration": None, "worker": None,
            "queue": queue, "error": error}


def _plain(markup: str) -> str:
    return Text.from_markup(markup).plain


def test_counts_each_outcome_apart():
    tasks = [_task(1, "succeeded"), _task(2, "failed"), _task(3, "skipped"), _task(4, "succeeded"),
             _task(5, "running"), _task(6, "pending")]
    assert _plain(counts_line(tasks)) == "4/6 tasks done: 2 succeeded, 1 failed, 1 skipped"
    assert _plain(counts_line([_task(1, "submitted")])) == "0/1 tasks done"
    assert _plain(counts_line([_task(1, "cancelled")])) == "1/1 tasks done: 1 cancelled"


def test_the_table_shows_task_ids_and_whole_errors():
    error = "RuntimeError: " + "x" * 150 + " [not markup] END"
    console = Console(width=400, record=True)
    view = {"id": 7, "workflow": "w", "state": "failed", "tasks": [_task(41, "failed", error=error)]}
    console.print(tasks_table(view))
    out = console.export_text()
    assert error in out
    assert "│ 41 │ t41 " in out


def test_the_table_says_why_a_task_was_skipped():
    console = Console(width=400, record=True)
    skipped = {**_task(42, "skipped"), "skip_reason": "when: params.region == 'eu' was false"}
    console.print(tasks_table({"id": 7, "workflow": "w", "state": "succeeded", "tasks": [skipped]}))
    assert "when: params.region == 'eu' was false" in console.export_text()


def test_unclaimed_notice_says_once_when_nothing_is_claimed():
    said: list[str] = []
    notice = UnclaimedNotice(0.0, "master", said.append)
    waiting = {"id": 3, "kind": "dag", "state": "running", "tasks": [_task(1, "submitted", queue="etl"),
                                                                      _task(2, "pending")]}
    notice(waiting)
    assert said == []  # the first view only starts the clock
    notice(waiting)
    notice(waiting)
    assert len(said) == 1 and said[0].startswith("no worker has claimed a task of run 3 for ")
    assert said[0].endswith("is a worker running on queue etl?")

    # a worker busy with a task of the run, a settled run, or progress: nothing to say
    for view in ({**waiting, "tasks": [_task(1, "running"), _task(2, "submitted")]},
                 {**waiting, "state": "failed"}):
        quiet = UnclaimedNotice(0.0, "master", said.append)
        quiet(view)
        quiet(view)
    assert len(said) == 1
    # a code run with no step yet waits for the master
    code: list[str] = []
    notice = UnclaimedNotice(0.0, "tideflow.master", code.append)
    view = {"id": 4, "kind": "code", "state": "running", "tasks": []}
    notice(view)
    notice(view)
    assert code and code[0].endswith("queue tideflow.master?")
