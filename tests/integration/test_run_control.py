"""Operator control of runs on real workers: cancel (shell and python bodies really stop), retry a failed run,
retries with back-off, the run's failure strategy (``on_failure: stop | continue``) and task timeouts."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support.harness import client_for, history, live_tasks, wait_run
from tests.support.jobs import read_ledger
from tests.support.wait import wait_for_pid, wait_until

#: a shell body whose real work is a background child: stopping the shell alone would leave it behind
BACKGROUND = "sleep 60 & echo $! > {{ params.pidfile }}; wait"


@pytest.fixture
def cluster_db_url(pg_url: str) -> str:
    return pg_url


# -- helpers ----------------------------------------------------------------------------------------------


def _wait_for_sleeper(path: Path, timeout: float = 30.0) -> int:
    """The pid the shell body wrote, once it is a live ``sleep`` process."""
    pid = wait_for_pid(path, timeout=timeout)
    proc = psutil.Process(pid)
    assert proc.name() == "sleep" and proc.status() != psutil.STATUS_ZOMBIE
    return pid


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _ledger(cluster: Any, run_id: int) -> list[dict[str, Any]]:
    return [e for e in read_ledger(cluster.ledger) if e["run"] == run_id]


def _events(cluster: Any, run_id: int, task: str | None = None) -> list[str]:
    return [e["event"] for e in _ledger(cluster, run_id) if task is None or e["task"] == task]


def _tasks(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in run["tasks"]}


def _outcomes(task: dict[str, Any]) -> list[tuple[int, str]]:
    return [(a["attempt"], a["outcome"]) for a in task["attempts"]]


def _transitions(events: list[dict[str, Any]], task: str | None) -> list[tuple[str | None, str]]:
    return [(e["from"], e["to"]) for e in events if e["task"] == task]


def _execute_returned(worker: Any, label: str, outcome: str) -> bool:
    """The worker logged that the ``tideflow.execute`` message of ``label`` (workflow/task) returned ``outcome``."""
    return any(f"[{label}]" in line and "succeeded in" in line and f"'{outcome}'" in line
               for line in worker.log_lines())


QUICK = {"name": "quick", "tasks": [{"name": "only", "type": "python", "function": "tests.support.jobs:record"}]}


# -- cancel -----------------------------------------------------------------------------------------------


def test_cancel_stops_a_shell_task_and_its_background_child(cluster, tmp_path):
    cluster.start_worker("w1", concurrency=2)
    tf = client_for(cluster)
    tf.register({
        "name": "cancel-shell", "params": {"pidfile": ""},
        "tasks": [
            {"name": "work", "type": "shell", "command": "echo working; " + BACKGROUND},
            {"name": "after", "type": "python", "function": "tests.support.jobs:record", "depends_on": ["work"]},
        ],
    })
    tf.register(QUICK)
    pidfile = tmp_path / "work.pid"
    run_id = tf.start_run("cancel-shell", {"pidfile": str(pidfile)})
    sleeper = _wait_for_sleeper(pidfile)
    assert tf.run(run_id)["state"] == "running"

    out = cluster.run_cli("run", "cancel", str(run_id), check=True)
    assert out.stdout.strip() == f"cancelled run {run_id}"

    run = wait_run(tf, run_id, "cancelled", timeout=5)
    again = cluster.run_cli("run", "cancel", str(run_id))
    assert again.returncode == 1 and again.stderr == f"error: run {run_id} is already cancelled\n"
    tasks = _tasks(run)
    assert tasks["work"]["state"] == "cancelled"
    assert tasks["after"]["state"] == "cancelled"
    assert _outcomes(tasks["work"]) == [(1, "cancelled")]
    assert tasks["after"]["attempts"] == []
    # the whole process group of the body was stopped, background child included
    wait_until(lambda: _gone(sleeper), timeout=10, message=f"background sleep {sleeper} survived the cancel")
    wait_until(lambda: _execute_returned(cluster.workers["w1"], "cancel-shell/work", "stopped"), timeout=10,
               message="the worker never reported the shell body as stopped")
    # what the stopped attempt printed is kept
    logs = cluster.run_cli("task", "logs", str(tasks["work"]["id"]), "--json", check=True)
    assert "working" in json.loads(logs.stdout)["attempts"][0]["log"]

    # the worker is still serving: another run completes, and the cancelled downstream task never ran
    other = tf.start_run("quick")
    wait_run(tf, other, "succeeded", timeout=30)
    assert cluster.workers["w1"].is_alive()
    assert _events(cluster, run_id) == []

    events = history(tf, run_id)
    assert ("running", "cancelled") in _transitions(events, "work")
    assert _transitions(events, "after") == [("pending", "cancelled")]
    assert _transitions(events, None)[-1] == ("running", "cancelled")
    cancels = [e for e in events if e["to"] == "cancelled"]
    assert len(cancels) == 3 and all(e["reason"] == "cancelled by request" for e in cancels)
    assert live_tasks(tf) == {}
    tf.close()


def test_cancel_interrupts_a_python_body_and_the_worker_carries_on(cluster):
    worker = cluster.start_worker("w1", concurrency=1)
    pool_before = worker.children()
    tf = client_for(cluster)
    tf.register({"name": "cancel-py", "tasks": [
        {"name": "nap", "type": "python", "function": "tests.support.jobs:sleep", "args": {"seconds": 60}}]})
    tf.register(QUICK)
    run_id = tf.start_run("cancel-py")
    wait_until(lambda: _events(cluster, run_id) == ["start"], timeout=30, message="the body never started")
    started = time.monotonic()

    cluster.run_cli("run", "cancel", str(run_id), check=True)
    run = wait_run(tf, run_id, "cancelled", timeout=5)
    assert _tasks(run)["nap"]["state"] == "cancelled"
    assert _outcomes(_tasks(run)["nap"]) == [(1, "cancelled")]

    # one pool process: the next run can only execute once the 60 s body has really stopped
    other = tf.start_run("quick")
    wait_run(tf, other, "succeeded", timeout=20)
    assert time.monotonic() - started < 20
    assert _events(cluster, run_id) == ["start"], "the cancelled body ran to its end"
    assert _execute_returned(worker, "cancel-py/nap", "stopped")
    # stopped cooperatively: the same pool process ran the next task (it was not killed and replaced)
    assert worker.is_alive()
    (start,) = _ledger(cluster, run_id)
    (nxt,) = _ledger(cluster, other)
    assert start["pid"] == nxt["pid"] and worker.children() == pool_before
    assert live_tasks(tf) == {}
    tf.close()


# -- retry ------------------------------------------------------------------------------------------------


def test_retry_a_failed_run_from_its_failed_task(cluster, tmp_path):
    cluster.start_worker("w1", concurrency=2)
    tf = client_for(cluster)
    marker = tmp_path / "marker"
    tf.register({
        "name": "retry-me", "params": {"marker": ""},
        "tasks": [
            {"name": "check", "type": "python", "function": "tests.support.jobs:fail_unless_exists",
             "args": {"marker": "{{ params.marker }}"}, "retries": 0},
            {"name": "after", "type": "python", "function": "tests.support.jobs:record", "depends_on": ["check"]},
        ],
    })
    run_id = tf.start_run("retry-me", {"marker": str(marker)})
    run = wait_run(tf, run_id, "failed", timeout=30)
    tasks = _tasks(run)
    assert tasks["check"]["state"] == "failed" and "does not exist" in tasks["check"]["error"]
    assert tasks["after"]["state"] == "skipped"
    assert _events(cluster, run_id) == ["exec"]

    marker.touch()
    out = cluster.run_cli("run", "retry", str(run_id), check=True)
    assert out.stdout.strip() == f"retrying run {run_id} (2 task(s) reset)"

    run = wait_run(tf, run_id, "succeeded", timeout=30)
    tasks = _tasks(run)
    assert tasks["check"]["state"] == "succeeded" and tasks["check"]["error"] is None
    assert _outcomes(tasks["check"]) == [(1, "failed"), (2, "succeeded")]
    assert tasks["after"]["state"] == "succeeded"
    assert _outcomes(tasks["after"]) == [(1, "succeeded")]
    assert sorted(e["task"] for e in _ledger(cluster, run_id)) == ["after", "check", "check"]
    events = history(tf, run_id)
    assert ("failed", "running") in _transitions(events, None)
    assert [e["reason"] for e in events if e["reason"] == "run retried"] == ["run retried"] * 2

    # a succeeded run cannot be retried: one error line, exit 1, nothing changes
    again = cluster.run_cli("run", "retry", str(run_id))
    assert again.returncode == 1
    lines = again.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and str(run_id) in lines[0], again.stderr
    assert tf.run(run_id)["state"] == "succeeded"
    assert live_tasks(tf) == {}
    tf.close()


# -- retries and the failure strategy ---------------------------------------------------------------------


def test_task_failing_past_its_retries_fails_the_run_and_stops_its_siblings(cluster):
    worker = cluster.start_worker("w1", concurrency=3)
    tf = client_for(cluster)
    tf.register({
        "name": "flaky", "on_failure": "stop",
        "tasks": [
            {"name": "slow", "type": "python", "function": "tests.support.jobs:sleep", "args": {"seconds": 60}},
            {"name": "flaky", "type": "python", "function": "tests.support.jobs:fail_times",
             "args": {"times": 5}, "retries": 2, "retry_delay": 0.2},
            {"name": "after", "type": "python", "function": "tests.support.jobs:record", "depends_on": ["flaky"]},
        ],
    })
    run_id = tf.start_run("flaky")
    # the sibling is running before the failures can stop the run
    wait_until(lambda: "start" in _events(cluster, run_id, "slow"), timeout=30, message="slow never started")
    run = wait_run(tf, run_id, "failed", timeout=30)
    tasks = _tasks(run)

    assert _events(cluster, run_id, "flaky") == ["exec"] * 3
    assert [e["attempt"] for e in _ledger(cluster, run_id) if e["task"] == "flaky"] == [1, 2, 3]
    assert tasks["flaky"]["state"] == "failed" and tasks["flaky"]["failures"] == 3
    assert "planned failure on attempt 3" in tasks["flaky"]["error"]
    assert [a["outcome"] for a in tasks["flaky"]["attempts"]] == ["failed", "failed", "failed"]
    assert tasks["after"]["state"] == "skipped"
    assert tasks["slow"]["state"] == "cancelled"
    assert _outcomes(tasks["slow"]) == [(1, "cancelled")]
    assert "flaky" in run["error"]

    events = history(tf, run_id)
    reasons = [e["reason"] for e in events if e["task"] == "flaky"]
    assert sum("retry 1/2" in r for r in reasons) == 1
    assert sum("retry 2/2" in r for r in reasons) == 1
    assert any("no retries left (2)" in r for r in reasons)
    assert _transitions(events, "flaky").count(("running", "submitted")) == 2
    assert ("running", "cancelled") in _transitions(events, "slow")
    assert _transitions(events, "after") == [("pending", "skipped")]
    final = events[-1]
    assert final["task"] is None and final["to"] == "failed" and "flaky" in final["reason"]

    # the cancelled sibling's body really stopped, long before its 60 s
    wait_until(lambda: _execute_returned(worker, "flaky/slow", "stopped"), timeout=10,
               message="the sibling's body did not stop")
    assert _events(cluster, run_id, "slow") == ["start"]
    assert _events(cluster, run_id, "after") == []
    assert live_tasks(tf) == {}
    tf.close()


def test_on_failure_continue_runs_the_independent_branch(cluster):
    cluster.start_worker("w1", concurrency=2)
    tf = client_for(cluster)
    tf.register({
        "name": "branches", "on_failure": "continue",
        "tasks": [
            {"name": "bad", "type": "python", "function": "tests.support.jobs:fail_times", "args": {"times": 5}},
            {"name": "bad_next", "type": "python", "function": "tests.support.jobs:record",
             "depends_on": ["bad"]},
            # slower than `bad`, so its downstream task is only submitted after the run already has a failure
            {"name": "good", "type": "python", "function": "tests.support.jobs:sleep", "args": {"seconds": 1}},
            {"name": "good_next", "type": "python", "function": "tests.support.jobs:record",
             "depends_on": ["good"]},
        ],
    })
    run_id = tf.start_run("branches")
    run = wait_run(tf, run_id, "failed", timeout=30)
    tasks = _tasks(run)
    assert {n: t["state"] for n, t in tasks.items()} == {
        "bad": "failed", "bad_next": "skipped", "good": "succeeded", "good_next": "succeeded"}
    assert tasks["good_next"]["result"] == "good_next"
    assert sorted(e["task"] for e in _ledger(cluster, run_id) if e["event"] == "exec") == ["bad", "good_next"]
    assert _events(cluster, run_id, "good") == ["start", "end"]

    events = history(tf, run_id)
    failed_at = next(e["id"] for e in events if e["task"] == "bad" and e["to"] == "failed")
    submitted_at = next(e["id"] for e in events if e["task"] == "good_next" and e["to"] == "submitted")
    assert failed_at < submitted_at, "the independent branch should go on after the failure"
    assert events[-1]["task"] is None and events[-1]["to"] == "failed"
    assert live_tasks(tf) == {}
    tf.close()


# -- timeouts ---------------------------------------------------------------------------------------------


def test_timeouts_stop_shell_and_python_bodies(cluster, tmp_path):
    cluster.start_worker("w1", concurrency=2)
    tf = client_for(cluster)
    tf.register({
        "name": "slowpokes", "params": {"pidfile": ""}, "on_failure": "continue",
        "tasks": [
            {"name": "sh", "type": "shell", "command": BACKGROUND, "timeout": 1},
            {"name": "py", "type": "python", "function": "tests.support.jobs:sleep", "args": {"seconds": 60},
             "timeout": 1},
        ],
    })
    pidfile = tmp_path / "sh.pid"
    started = time.monotonic()
    run_id = tf.start_run("slowpokes", {"pidfile": str(pidfile)})
    # not checked for being alive: under load the 1 s timeout may already have hit when the test looks
    sleeper = wait_for_pid(pidfile, timeout=30)

    run = wait_run(tf, run_id, "failed", timeout=20)
    assert time.monotonic() - started < 15, "the timeouts did not cut 60 s bodies short"
    tasks = _tasks(run)
    for name in ("sh", "py"):
        task = tasks[name]
        assert task["state"] == "failed", task
        assert "timed out" in task["error"], task
        assert _outcomes(task) == [(1, "timed_out")]
        assert task["attempts"][0]["duration"] < 10
    wait_until(lambda: _gone(sleeper), timeout=10, message=f"background sleep {sleeper} survived the timeout")
    assert _events(cluster, run_id, "py") == ["start"]
    events = history(tf, run_id)
    assert any(e["task"] == "sh" and e["to"] == "failed" and "timed_out" in e["reason"] for e in events)
    assert live_tasks(tf) == {}
    tf.close()
