"""``Tideflow.wait``: the one polling loop (``tideflow run start --wait`` and ``tideflow demo`` use it). It returns
the run's last view (``Tideflow.run``'s dict), calls ``on_progress`` with every view it reads, and gives up at its
timeout without touching the run. In process, on SQLite: messages are recorded and the test (or the progress
callback) delivers them to the worker and master services, as their processes would."""

from __future__ import annotations

import time
from typing import Any

import pytest

from app.client import Tideflow
from app.config import Settings
from app.dispatch import RecordingDispatcher
from app.errors import NotFound
from app.runtime import Runtime
from app.services import master, worker

TWO = {"name": "two", "tasks": [{"name": "a", "type": "shell", "command": "echo a"},
                                {"name": "b", "type": "shell", "command": "echo b", "depends_on": ["a"]}]}


@pytest.fixture
def tf(sqlite_url: str):
    # a broker URL on a closed port: nothing is published (RecordingDispatcher keeps the messages)
    client = Tideflow(Runtime.create(Settings(database_url=sqlite_url, broker_url="redis://127.0.0.1:1/0"),
                                     RecordingDispatcher()))
    client.register(TWO)
    try:
        yield client
    finally:
        client.close()


def deliver(tf: Tideflow) -> None:
    """Run every recorded message to the end: execute messages by the worker service, advances by the master."""
    d: RecordingDispatcher = tf.runtime.dispatcher  # type: ignore[assignment]
    while d.executed or d.advanced:
        if d.executed:
            m = d.executed.pop(0)
            worker.execute(tf.runtime, m.task_run_id, m.attempt)
        else:
            master.advance_run(tf.runtime, d.advanced.pop(0), actor="master")


def test_wait_returns_the_final_view_and_reports_every_poll(tf):
    run_id = tf.start_run("two")

    # nobody runs the tasks: after the timeout, the last view read is returned, still running
    seen: list[dict[str, Any]] = []
    started = time.monotonic()
    view = tf.wait(run_id, timeout=0.6, interval=0.05, on_progress=seen.append)
    elapsed = time.monotonic() - started
    assert view["id"] == run_id and view["state"] == "running"
    assert 0.6 <= elapsed < 5, elapsed
    assert len(seen) >= 4 and seen[-1] is view, len(seen)  # every poll, the returned view last
    assert tf.run(run_id)["state"] == "running", "waiting changes nothing"

    # progress is reported while the run moves: here the callback itself plays the worker
    seen.clear()

    def progress(v: dict[str, Any]) -> None:
        seen.append(v)
        deliver(tf)

    final = tf.wait(run_id, timeout=30, interval=0.01, on_progress=progress)
    assert final["state"] == "succeeded"
    assert [(t["name"], t["state"]) for t in final["tasks"]] == [("a", "succeeded"), ("b", "succeeded")]
    assert seen[0]["state"] == "running" and seen[-1] is final
    assert final == tf.run(run_id), "the same view as Tideflow.run (and GET /api/runs/{id})"

    # already finished: one read, returned at once
    seen.clear()
    started = time.monotonic()
    assert tf.wait(run_id, timeout=30, on_progress=seen.append) == final
    assert len(seen) == 1 and time.monotonic() - started < 5


def test_wait_for_a_cancelled_run_and_for_no_run(tf):
    run_id = tf.start_run("two")
    tf.cancel(run_id)
    assert tf.wait(run_id, timeout=30)["state"] == "cancelled"
    with pytest.raises(NotFound):
        tf.wait(run_id + 1000, timeout=1)
