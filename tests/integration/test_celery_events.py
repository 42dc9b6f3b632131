"""What Flower and the logs see of Tideflow's Celery tasks, with real ``celery worker`` and ``celery beat``
processes: Celery task events captured with Celery's own event receiver (what Flower consumes). The worker runs
with ``-E``: the cluster's workers run without heartbeat and gossip, so they have no event dispatcher for Flower's
``enable_events`` broadcast to switch on (celery/worker/consumer/events.py); that path is
tests/acceptance/test_procfile.py's, with Flower itself.

- a task whose body failed is a FAILURE (``task-failed``), once per failed attempt, under its readable shadow
  name; its message is acknowledged (never redelivered), with no traceback and no error line in the worker log;
- an advance message is named by its run's workflow and id (``tideflow.advance[obs-flaky #1]``);
- the reconciler (a beat job every 0.5 s here) sends no task events and, while it has nothing to do, logs
  nothing at INFO in the worker or in beat; when it acts, one INFO line says what it did.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from app.broker import create_app
from app.client import Tideflow
from app.dispatch import RecordingDispatcher
from app.runtime import Runtime
from tests.support.harness import client_for, settings_for, wait_run
from tests.support.wait import wait_until

FLAKY = {"name": "obs-flaky", "on_failure": "continue", "tasks": [
    {"name": "ok", "type": "shell", "command": "echo fine"},
    {"name": "bad", "type": "shell", "command": "echo broken >&2; exit 3", "retries": 1, "retry_delay": 0},
]}
ORPHAN = {"name": "obs-orphan", "tasks": [{"name": "only", "type": "shell", "command": "echo found"}]}


@pytest.fixture
def cluster_db_url(pg_url):
    return pg_url


class Events:
    """Celery task events from the cluster's broker, captured in a thread (``app.events.Receiver``)."""

    def __init__(self, cluster: Any) -> None:
        self.app = create_app(settings_for(cluster))
        self.events: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._capture, daemon=True)

    def _capture(self) -> None:
        with self.app.connection_for_read() as conn:
            self._receiver = self.app.events.Receiver(conn, handlers={"*": self.events.append})
            self.ready.set()
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def start(self) -> None:
        self._thread.start()
        assert self.ready.wait(10), "the event receiver never started"

    def stop(self) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(10)

    def names(self) -> dict[str, str]:
        """uuid -> task name (from the ``task-received`` events)."""
        return {e["uuid"]: e["name"] for e in list(self.events) if e.get("type") == "task-received"}

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in list(self.events) if e.get("type") == kind]


@pytest.fixture
def events(cluster) -> Iterator[Events]:
    ev = Events(cluster)
    ev.start()
    try:
        yield ev
    finally:
        ev.stop()


@pytest.mark.cluster_env(TIDEFLOW_INLINE_ADVANCE="false")  # every advance is a message: its name is checked
def test_failed_bodies_are_failures_and_the_idle_reconciler_is_silent(cluster, events):
    worker = cluster.start_worker("w1", extra_args=["-E"])
    beat = cluster.start_beat()
    tf = client_for(cluster)
    try:
        tf.register(FLAKY)
        run_id = tf.start_run("obs-flaky")
        run = wait_run(tf, run_id, "failed")
        bad = next(t for t in run["tasks"] if t["name"] == "bad")
        assert [a["outcome"] for a in bad["attempts"]] == ["failed", "failed"], bad

        names = events.names()

        def outcome(task: str) -> list[str]:
            return [e["type"] for e in events.of_type("task-failed") + events.of_type("task-succeeded")
                    if names.get(e["uuid"]) == f"tideflow.execute[obs-flaky/{task}]"]

        # each failed attempt is a FAILURE in Flower; the successful task a SUCCESS
        wait_until(lambda: outcome("bad") == ["task-failed", "task-failed"] and outcome("ok") == ["task-succeeded"],
                   timeout=20, message=f"events never showed both attempts failed: {events.events}")
        failed = [e for e in events.of_type("task-failed") if names.get(e["uuid"]) == "tideflow.execute[obs-flaky/bad]"]
        assert all("AttemptFailed" in e["exception"] and "exit" in e["exception"] for e in failed), failed
        assert "a new attempt is scheduled" in failed[0]["exception"] or \
            "a new attempt is scheduled" in failed[1]["exception"], failed
        # the master's advance messages are named by the run's workflow and id
        assert f"tideflow.advance[obs-flaky #{run_id}]" in set(events.names().values()), events.names()

        # the reconciler ran all along (beat every 0.5 s) but is in no event, and its passes left no INFO line
        time.sleep(3)  # several reconcile intervals with nothing to do
        seen = set(events.names().values())
        assert "tideflow.reconcile" not in seen, seen
        assert not [e for e in list(events.events) if e.get("name") == "tideflow.reconcile"]
        assert "reconcile" not in beat.own_log().split("beat: Starting", 1)[1], beat.own_log()
        log = worker.own_log().split(" ready.", 1)[1]  # after the banner (which lists the tasks)
        assert "tideflow.reconcile" not in log and "reconcile:" not in log, log
        # a failure raised after its commit: acknowledged, no Celery retry, no redelivery, no traceback
        assert log.count("raised expected: AttemptFailed") == 2, log
        for bad_line in ("Traceback", "ERROR/", "retry:", "ignored"):
            assert bad_line not in log, f"{bad_line!r} in the worker log:\n{log}"

        # when the reconciler acts, one INFO line says what it did: a task whose message was never published
        silent = Tideflow(Runtime.create(tf.runtime.settings, RecordingDispatcher()))
        try:
            silent.register(ORPHAN)
            orphan_id = silent.start_run("obs-orphan")
        finally:
            silent.close()
        wait_run(tf, orphan_id, "succeeded", timeout=30)
        wait_until(lambda: "reconcile: republished 1 orphaned task(s)" in worker.own_log(), timeout=10,
                   message="the reconciler's pass that acted was not logged")
        assert "tideflow.reconcile" not in worker.own_log().split(" ready.", 1)[1]
    finally:
        tf.close()
