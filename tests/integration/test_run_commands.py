"""Run control (issue 12, DolphinScheduler's commands) on real PostgreSQL, Redis and celery workers: pause and
resume a run, force-success a failed task, rerun a task and its downstream, through the CLI and the REST API,
including each command racing the worker that finishes the same task."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.services.reconciler import reconcile_once
from tests.support.harness import client_for, history, wait_run
from tests.support.jobs import read_ledger
from tests.support.race import press_concurrently
from tests.support.wait import holds_for, wait_until

TOKEN = {"Authorization": "Bearer test-token"}


@pytest.fixture
def cluster_db_url(pg_url: str) -> str:
    return pg_url


def _tasks(tf: Any, run_id: int) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in tf.run(run_id)["tasks"]}


def _task_state(tf: Any, run_id: int, name: str) -> str:
    return str(_tasks(tf, run_id)[name]["state"])


def _execs(cluster: Any, run_id: int, task: str, event: str = "exec") -> int:
    return sum(1 for e in read_ledger(cluster.ledger) if e["run"] == run_id and e["task"] == task
               and e["event"] == event)


def _outcomes(task: dict[str, Any]) -> list[tuple[int, str]]:
    return [(a["attempt"], a["outcome"]) for a in task["attempts"]]


def _run_events(events: list[dict[str, Any]]) -> list[tuple[str | None, str, str]]:
    return [(e["from"], e["to"], e["actor"]) for e in events if e["task"] is None]


GATED = {
    "name": "gated", "params": {"gate": ""},
    "tasks": [
        {"name": "a", "type": "python", "function": "tests.support.jobs:gate_then_record",
         "args": {"gate": "{{ params.gate }}"}},
        {"name": "b", "type": "python", "function": "tests.support.jobs:record", "depends_on": ["a"]},
    ],
}


# -- pause / resume ----------------------------------------------------------------------------------------


def test_pause_lets_the_running_task_finish_starts_nothing_new_and_resume_continues(cluster, tmp_path):
    cluster.start_worker("w1", concurrency=2)
    tf = client_for(cluster)
    tf.register(GATED)
    gate = tmp_path / "gate"
    run_id = tf.start_run("gated", {"gate": str(gate)})
    wait_until(lambda: _execs(cluster, run_id, "a", "start") == 1, timeout=30, message="a never started")

    out = cluster.run_cli("run", "pause", str(run_id), check=True)
    assert out.stdout.strip() == f"paused run {run_id}: no new task starts until 'tideflow run resume {run_id}'"
    assert tf.run(run_id)["state"] == "paused"
    again = cluster.run_cli("run", "pause", str(run_id))
    assert again.returncode == 1
    assert again.stderr == f"error: run {run_id} is paused; only a running run can be paused\n"

    shown = cluster.run_cli("run", "show", str(run_id), check=True)
    assert f"paused: no new task starts until 'tideflow run resume {run_id}'" in shown.stdout

    gate.touch()  # the running task finishes ...
    wait_until(lambda: _task_state(tf, run_id, "a") == "succeeded", timeout=30, message="a did not finish")
    # ... and nothing new starts: b stays pending, the run stays paused (the reconciler finds nothing to do)
    holds_for(lambda: _task_state(tf, run_id, "b") == "pending" and tf.run(run_id)["state"] == "paused", 2.5,
              message="a task started (or the run moved) while the run was paused")
    assert reconcile_once(tf.runtime).advanced_runs == 0
    assert _execs(cluster, run_id, "b") == 0

    out = cluster.run_cli("run", "resume", str(run_id), check=True)
    assert out.stdout.strip() == f"resumed paused run {run_id} (now running)"
    wait_run(tf, run_id, "succeeded", timeout=30)
    assert _execs(cluster, run_id, "b") == 1
    moves = [e for e in _run_events(history(tf, run_id)) if e[0] is not None]
    assert [m[:2] for m in moves] == [("running", "paused"), ("paused", "running"), ("running", "succeeded")]
    assert moves[0][2] == moves[1][2] == "cli"
    done = cluster.run_cli("run", "resume", str(run_id))
    assert done.returncode == 1
    assert done.stderr == (f"error: run {run_id} is succeeded; only a paused run or a blocked code run can be "
                           "resumed\n")
    tf.close()


def test_a_paused_runs_submitted_task_is_not_claimed_nor_republished_until_resume(cluster):
    """The task was submitted before the pause; its message reaches a worker while the run is paused: the claim is
    refused (the body never runs), the reconciler does not re-publish it in a loop, and resume re-publishes it."""
    cluster.start_worker("w1", concurrency=1)  # the master queue (advances), not q2
    tf = client_for(cluster)
    tf.register({"name": "later", "tasks": [
        {"name": "only", "type": "python", "function": "tests.support.jobs:record", "queue": "q2"}]})
    run_id = tf.start_run("later")
    assert _task_state(tf, run_id, "only") == "submitted"
    tf.pause(run_id, actor="test")
    tf.register({"name": "later2", "tasks": [
        {"name": "only", "type": "python", "function": "tests.support.jobs:record", "queue": "q2"}]})
    other = tf.start_run("later2")
    tf.pause(other, actor="test")

    w2 = cluster.start_worker("w2", queues=["q2"], concurrency=1)
    wait_until(lambda: any(f"run {run_id} is paused" in line for line in w2.log_lines()), timeout=30,
               message="the worker never refused the paused run's task")
    time.sleep(2.5)  # past the orphan timeout (2s): the task is due for a re-publish, were it not paused
    report = reconcile_once(tf.runtime)
    assert report.republished == 0
    task = _tasks(tf, run_id)["only"]
    assert task["state"] == "submitted" and task["attempts"] == [] and _execs(cluster, run_id, "only") == 0

    # a paused run can be cancelled (paused above, before any worker served q2)
    cancelled = cluster.run_cli("run", "cancel", str(other), check=True)
    assert cancelled.stdout.strip() == f"cancelled run {other}"
    assert _task_state(tf, other, "only") == "cancelled"

    assert tf.resume_from(run_id, actor="test") == ("paused", "running")
    wait_run(tf, run_id, "succeeded", timeout=30)
    assert _execs(cluster, run_id, "only") == 1
    reasons = [e["reason"] for e in history(tf, run_id) if e["task"] == "only" and e["to"] == "submitted"]
    assert reasons[-1].startswith("run resumed: re-published (publish #2 of attempt 1")
    tf.close()


def test_pause_racing_the_worker_that_finishes_the_task(cluster, tmp_path):
    """The pause lands while the worker finishes ``a`` (and advances the run inline): whichever commits first, no
    task is submitted after the pause, and the run finishes only after resume."""
    cluster.start_worker("w1", concurrency=2)
    tf = client_for(cluster)
    tf.register(GATED)
    for i in range(3):
        gate = tmp_path / f"gate{i}"
        run_id = tf.start_run("gated", {"gate": str(gate)})
        wait_until(lambda r=run_id: _execs(cluster, r, "a", "start") == 1, timeout=30, message="a never started")
        gate.touch()  # the body returns within ~10 ms: the finish and the pause race
        tf.pause(run_id, actor="race")
        wait_until(lambda r=run_id: _task_state(tf, r, "a") == "succeeded", timeout=30, message="a did not finish")
        holds_for(lambda r=run_id: tf.run(r)["state"] == "paused", 1.0, message="the paused run moved on its own")
        events = history(tf, run_id)
        paused_at = next(e["id"] for e in events if e["task"] is None and e["to"] == "paused")
        assert not [e for e in events if e["to"] == "submitted" and e["id"] > paused_at], events
        tf.resume(run_id, actor="race")
        wait_run(tf, run_id, "succeeded", timeout=30)
        assert _execs(cluster, run_id, "b") == 1
    tf.close()


# -- force-success -----------------------------------------------------------------------------------------

FAILING = {
    "name": "failing", "params": {"gate": ""},
    "tasks": [
        {"name": "a", "type": "python", "function": "tests.support.jobs:gate_then_fail",
         "args": {"gate": "{{ params.gate }}"}},
        {"name": "b", "type": "python", "function": "tests.support.jobs:record", "depends_on": ["a"]},
        {"name": "side", "type": "python", "function": "tests.support.jobs:gate_then_record",
         "args": {"gate": "{{ params.gate }}x"}},
    ],
}


def test_force_success_of_a_failed_task_continues_the_failed_run(cluster, tmp_path):
    cluster.start_worker("w1", concurrency=2)
    tf = client_for(cluster)
    tf.register(FAILING)
    gate = tmp_path / "gate"
    gate.touch()
    run_id = tf.start_run("failing", {"gate": str(gate)})  # a fails at once; side waits: stopped by the failure
    wait_run(tf, run_id, "failed", timeout=30)
    tasks = _tasks(tf, run_id)
    assert (tasks["a"]["state"], tasks["b"]["state"]) == ("failed", "skipped")
    assert tasks["side"]["state"] in ("skipped", "cancelled")  # submitted or running when the run stopped

    early = cluster.run_cli("task", "force-success", str(run_id), "b")
    assert early.returncode == 1
    assert early.stderr == (f"error: task 'b' (task run {tasks['b']['id']}) of run {run_id} is skipped; only a "
                            "failed task can be forced to success\n")
    Path(f"{gate}x").touch()
    out = cluster.run_cli("task", "force-success", str(run_id), "a", "--reason", "fixed by hand", check=True)
    assert out.stdout.strip() == (f"task a (task run {tasks['a']['id']}) of run {run_id} forced to success "
                                  "(run now running)")
    run = wait_run(tf, run_id, "succeeded", timeout=30)
    tasks = {t["name"]: t for t in run["tasks"]}
    assert _outcomes(tasks["a"]) == [(1, "failed")]  # its attempt's history is kept
    assert _execs(cluster, run_id, "b") == 1 and _execs(cluster, run_id, "side") == 1
    events = history(tf, run_id)
    forced = [e for e in events if e["task"] == "a" and (e["from"], e["to"]) == ("failed", "succeeded")]
    assert len(forced) == 1 and forced[0]["actor"] == "cli" and "fixed by hand" in forced[0]["reason"]
    assert ("failed", "running", "cli") in _run_events(events)
    # by task run id too; now it is not failed: a one-line error
    again = cluster.run_cli("task", "force-success", str(run_id), str(tasks["a"]["id"]))
    assert again.returncode == 1 and "is succeeded; only a failed task can be forced to success" in again.stderr
    tf.close()


def test_force_success_racing_the_worker_that_fails_the_task(cluster, tmp_path):
    """Two operators press force-success while the worker is failing the task: before the failure lands it is a
    409 (the task is running), after it exactly one request lands and the other gets a 409."""
    cluster.start_worker("w1", concurrency=2)
    _web, base = cluster.start_web()
    tf = client_for(cluster)
    tf.register(FAILING)
    gate = tmp_path / "gate"
    Path(f"{gate}x").touch()
    run_id = tf.start_run("failing", {"gate": str(gate)})
    wait_until(lambda: _execs(cluster, run_id, "a", "start") == 1, timeout=30, message="a never started")
    a_id = _tasks(tf, run_id)["a"]["id"]
    # a refusal that is not "is running": another request landed first
    statuses = press_concurrently(base, TOKEN, f"/api/tasks/{a_id}/force-success", gate.touch, stop_unless="is running")
    assert [s for s, _ in statuses].count(200) == 1, statuses
    assert {s for s, _ in statuses} <= {200, 409}, statuses
    assert all("is running" in m or "is succeeded" in m or "only a failed task" in m
               for s, m in statuses if s == 409), statuses
    run = wait_run(tf, run_id, "succeeded", timeout=30)
    tasks = {t["name"]: t for t in run["tasks"]}
    assert _outcomes(tasks["a"]) == [(1, "failed")]
    assert [(e["from"], e["to"]) for e in history(tf, run_id) if e["task"] == "a"][-2:] == [
        ("running", "failed"), ("failed", "succeeded")]
    assert _execs(cluster, run_id, "b") == 1
    tf.close()


# -- rerun -------------------------------------------------------------------------------------------------

CHAIN = {
    "name": "chain", "params": {"gate": ""},
    "tasks": [
        {"name": "a", "type": "python", "function": "tests.support.jobs:record"},
        {"name": "b", "type": "python", "function": "tests.support.jobs:record", "depends_on": ["a"]},
        {"name": "c", "type": "python", "function": "tests.support.jobs:gate_then_record",
         "args": {"gate": "{{ params.gate }}"}, "depends_on": ["b"]},
        {"name": "d", "type": "python", "function": "tests.support.jobs:record"},
    ],
}


def test_rerun_a_task_and_its_downstream_in_a_finished_run(cluster, tmp_path):
    cluster.start_worker("w1", concurrency=2)
    tf = client_for(cluster)
    tf.register(CHAIN)
    gate = tmp_path / "gate"
    gate.touch()
    run_id = tf.start_run("chain", {"gate": str(gate)})
    wait_run(tf, run_id, "succeeded", timeout=30)
    before = len(history(tf, run_id))

    out = cluster.run_cli("task", "rerun", str(run_id), "b", check=True)
    assert out.stdout.strip() == f"rerunning run {run_id} from task b (2 task(s) reset; run now running)"
    run = wait_run(tf, run_id, "succeeded", timeout=30)
    tasks = {t["name"]: t for t in run["tasks"]}
    assert _outcomes(tasks["b"]) == [(1, "succeeded"), (2, "succeeded")]
    assert _outcomes(tasks["c"]) == [(1, "succeeded"), (2, "succeeded")]
    assert _outcomes(tasks["a"]) == [(1, "succeeded")] and _outcomes(tasks["d"]) == [(1, "succeeded")]
    assert [_execs(cluster, run_id, n) for n in "abcd"] == [1, 2, 2, 1]
    events = history(tf, run_id)
    assert len(events) > before and events[:before] == history(tf, run_id)[:before]  # the history is appended to
    assert ("succeeded", "running", "cli") in _run_events(events)
    resets = [e for e in events if (e["from"], e["to"]) == ("succeeded", "pending")]
    assert sorted(e["task"] for e in resets) == ["b", "c"]
    assert all(e["reason"] == "rerun from task 'b'" for e in resets)
    tf.close()


def test_rerun_racing_the_worker_that_finishes_the_run(cluster, tmp_path):
    """Rerun pressed (twice, concurrently) while the worker finishes the run's last task: 409 while the run is
    running, then exactly one lands; the loser gets a 409."""
    cluster.start_worker("w1", concurrency=2)
    _web, base = cluster.start_web()
    tf = client_for(cluster)
    tf.register(CHAIN)
    gate = tmp_path / "gate"
    run_id = tf.start_run("chain", {"gate": str(gate)})
    wait_until(lambda: _execs(cluster, run_id, "c", "start") == 1, timeout=30, message="c never started")
    b_id = _tasks(tf, run_id)["b"]["id"]
    with httpx.Client(base_url=base, headers=TOKEN, timeout=30) as http:
        r = http.post(f"/api/tasks/{b_id}/rerun")
        assert r.status_code == 409
        assert r.json()["message"] == f"run {run_id} is running; a task can be rerun only in a finished run"
        assert http.post(f"/api/runs/{run_id}/pause").json()["state"] == "paused"
        assert http.post(f"/api/tasks/{b_id}/rerun").status_code == 409
        assert http.post(f"/api/runs/{run_id}/resume").json()["state"] == "running"
    statuses = [status for status, _ in press_concurrently(base, TOKEN, f"/api/tasks/{b_id}/rerun", gate.touch)]
    assert statuses.count(200) == 1 and set(statuses) == {200, 409}, statuses
    run = wait_run(tf, run_id, "succeeded", timeout=30)
    tasks = {t["name"]: t for t in run["tasks"]}
    assert _outcomes(tasks["b"]) == [(1, "succeeded"), (2, "succeeded")]
    assert len([e for e in _run_events(history(tf, run_id)) if e[:2] == ("succeeded", "running")]) == 1
    tf.close()


@pytest.mark.cluster_env(TIDEFLOW_WORKFLOW_MODULES="tests.support.codeflows")
def test_pause_a_code_run_nothing_is_replayed_until_resume(cluster):
    """A code run paused in ``ctx.sleep``: its timer fires while paused, but the function is not replayed (no new
    step, its published state unchanged) until resume; then it goes on."""
    cluster.start_worker("w1", concurrency=2)
    tf = client_for(cluster, workflow_modules="tests.support.codeflows")
    run_id = tf.start_run("sleeper", {"seconds": 1})
    assert tf.run(run_id)["state_values"] == {"stage": "sleeping"}
    out = cluster.run_cli("run", "pause", str(run_id), check=True)
    assert out.stdout.startswith(f"paused run {run_id}")
    time.sleep(1.2)  # the timer is due
    assert reconcile_once(tf.runtime).fired_timers == 1  # the reconciler fires it (no beat runs here)
    wait_until(lambda: all(t["state"] == "succeeded" for t in tf.run(run_id)["tasks"]), timeout=10,
               message="the timer did not fire")
    holds_for(lambda: tf.run(run_id)["state"] == "paused" and tf.run(run_id)["state_values"] == {"stage": "sleeping"},
              2.0, message="the paused code run was replayed")
    assert len(tf.run(run_id)["tasks"]) == 1

    out = cluster.run_cli("run", "resume", str(run_id), check=True)
    assert out.stdout.strip() == f"resumed paused run {run_id} (now succeeded)"
    run = tf.run(run_id)
    assert run["state"] == "succeeded" and run["state_values"] == {"stage": "woke"}
    tf.close()


# -- code runs: force-success and rerun are resets of the history (Temporal's reset) -------------------------


def _marks(path: Path, name: str) -> int:
    """How many executions of ``name`` the activities recorded in ``path`` (tests.support.codeflows._mark)."""
    return sum(1 for line in path.read_text().splitlines() if line.split(" ", 1)[0] == name) if path.exists() else 0


@pytest.mark.cluster_env(TIDEFLOW_WORKFLOW_MODULES="tests.support.codeflows")
def test_code_force_success_of_the_activity_that_failed_the_run(cluster, tmp_path):
    """A code run failed by an activity's ActivityError: forced to success with a result, the run is running again,
    is replayed, ``ctx.activity`` returns the forced value there and the function goes on (real workers)."""
    cluster.start_worker("w1", concurrency=2)
    tf = client_for(cluster, workflow_modules="tests.support.codeflows")
    path = tmp_path / "marks"
    Path(f"{path}.fail").touch()
    run_id = tf.start_run("resettable", {"path": str(path)})
    run = wait_run(tf, run_id, "failed", timeout=60)
    assert "counted_gated" in run["error"] and run["steps"][1]["state"] == "failed"

    refused = cluster.run_cli("task", "force-success", str(run_id), "#0")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith("error: position 0 (activity 'counted', task run ")
    assert refused.stderr.endswith(f"of code run {run_id} is succeeded; only a failed activity step can be forced "
                                   "to success\n")
    bad = cluster.run_cli("task", "force-success", str(run_id), "#1", "--result", "{nope")
    assert bad.returncode == 2 and "--result must be JSON" in bad.stderr

    out = cluster.run_cli("task", "force-success", str(run_id), "counted_gated", "--result", '{"v": 7}',
                          "--reason", "paid by phone", check=True)
    b_id = run["steps"][1]["task_run_id"]
    assert out.stdout.strip() == (f"task counted_gated (task run {b_id}) of run {run_id} forced to success "
                                  "(run now running)")
    run = wait_run(tf, run_id, "succeeded", timeout=60)
    assert run["result"] == {"a": 1, "b": {"v": 7}, "c": 1}
    assert (_marks(path, "a"), _marks(path, "b"), _marks(path, "c")) == (1, 1, 1)  # b is not run again
    assert [(a["attempt"], a["outcome"]) for a in run["steps"][1]["attempts"]] == [(1, "failed")]
    events = history(tf, run_id)
    forced = [e for e in events if e["task"] == "counted_gated#1" and (e["from"], e["to"]) == ("failed", "succeeded")]
    assert len(forced) == 1 and forced[0]["actor"] == "cli"
    assert forced[0]["reason"] == 'forced to success by cli with result {"v": 7}: paid by phone'
    assert ("failed", "running", "cli") in _run_events(events)
    tf.close()


@pytest.mark.cluster_env(TIDEFLOW_WORKFLOW_MODULES="tests.support.codeflows")
def test_code_rerun_from_the_middle_of_a_succeeded_run(cluster, tmp_path):
    """Reset a succeeded code run to position 1: position 0 replays its recorded result (its activity is not run
    again), positions 1 and 2 run anew; their first steps are kept, superseded (real workers)."""
    cluster.start_worker("w1", concurrency=2)
    tf = client_for(cluster, workflow_modules="tests.support.codeflows")
    path = tmp_path / "marks"
    run_id = tf.start_run("resettable", {"path": str(path)})
    run = wait_run(tf, run_id, "succeeded", timeout=60)
    assert run["result"] == {"a": 1, "b": 1, "c": 1}
    first = [st["task_run_id"] for st in run["steps"]]
    before = history(tf, run_id)

    out = cluster.run_cli("task", "rerun", str(run_id), "#1", check=True)
    assert out.stdout.strip() == f"rerunning run {run_id} from task #1 (2 step(s) superseded; run now running)"
    run = wait_run(tf, run_id, "succeeded", timeout=60)
    assert run["result"] == {"a": 1, "b": 2, "c": 2}
    assert (_marks(path, "a"), _marks(path, "b"), _marks(path, "c")) == (1, 2, 2)
    assert run["steps"][0]["task_run_id"] == first[0]
    assert [st["task_run_id"] for st in run["superseded_steps"]] == first[1:]
    assert [st["state"] for st in run["superseded_steps"]] == ["succeeded", "succeeded"]
    events = history(tf, run_id)
    assert events[:len(before)] == before  # the history is appended to
    assert ("succeeded", "running", "cli") in _run_events(events)
    assert sorted(e["task"] for e in events if e["reason"] == "superseded: rerun from position 1") == [
        "counted#2", "counted_gated#1"]
    shown = cluster.run_cli("run", "show", str(run_id), check=True)
    assert "2 step(s) superseded by resets (task rerun / force-success): kept" in shown.stdout
    # a step that is not there: a one-line error, nothing changes
    assert tf.replay(run_id).ok
    missing = cluster.run_cli("task", "rerun", str(run_id), "#9")
    assert (missing.returncode, missing.stderr) == (1, f"error: run {run_id} has no step at position 9 (its history "
                                                       "has 3)\n")
    tf.close()


@pytest.mark.cluster_env(TIDEFLOW_WORKFLOW_MODULES="tests.support.codeflows")
def test_code_force_success_racing_the_worker_that_fails_the_step(cluster, tmp_path):
    """Two operators press force-success on a code run's activity step while the worker is failing it: 409 while it
    runs, then exactly one request lands and the other gets a 409; the run goes on with the forced result once."""
    cluster.start_worker("w1", concurrency=2)
    _web, base = cluster.start_web()
    tf = client_for(cluster, workflow_modules="tests.support.codeflows")
    path = tmp_path / "marks"
    Path(f"{path}.fail").touch()
    run_id = tf.start_run("resettable", {"path": str(path), "wait": 60.0})
    step = wait_until(lambda: next((st for st in tf.run(run_id)["steps"] if st["seq"] == 1
                                    and st["state"] == "running"), None), timeout=30, message="b never started")
    b_id = step["task_run_id"]
    statuses = press_concurrently(base, TOKEN, f"/api/tasks/{b_id}/force-success", Path(f"{path}.gate").touch,
                                  stop_unless="is running", json={"result": "forced", "reason": "race"})
    assert [s for s, _ in statuses].count(200) == 1, statuses
    assert {s for s, _ in statuses} <= {200, 409}, statuses
    assert all("is running" in m or "is succeeded" in m for s, m in statuses if s == 409), statuses
    run = wait_run(tf, run_id, "succeeded", timeout=60)
    assert run["result"] == {"a": 1, "b": "forced", "c": 1}
    assert (_marks(path, "b"), _marks(path, "c")) == (1, 1)
    moves = [(e["from"], e["to"]) for e in history(tf, run_id) if e["task"] == "counted_gated#1"]
    assert moves[-2:] == [("running", "failed"), ("failed", "succeeded")]
    tf.close()


@pytest.mark.cluster_env(TIDEFLOW_WORKFLOW_MODULES="tests.support.codeflows")
def test_code_rerun_racing_the_worker_that_finishes_the_run(cluster, tmp_path):
    """Rerun pressed (twice, concurrently) while the worker finishes a code run's step: 409 while the run is
    running, then exactly one lands (the loser gets a 409), and the reset runs once."""
    cluster.start_worker("w1", concurrency=2)
    _web, base = cluster.start_web()
    tf = client_for(cluster, workflow_modules="tests.support.codeflows")
    path = tmp_path / "marks"
    run_id = tf.start_run("resettable", {"path": str(path), "wait": 60.0})
    wait_until(lambda: _marks(path, "a") == 1 and len(tf.run(run_id)["steps"]) == 2, timeout=30,
               message="b never started")
    a_id = tf.run(run_id)["steps"][0]["task_run_id"]
    with httpx.Client(base_url=base, headers=TOKEN, timeout=30) as http:
        r = http.post(f"/api/tasks/{a_id}/rerun")
        assert (r.status_code, r.json()["message"]) == (
            409, f"run {run_id} is running; a step can be rerun only in a finished run")
    statuses = [status for status, _ in press_concurrently(base, TOKEN, f"/api/tasks/{a_id}/rerun",
                                                           Path(f"{path}.gate").touch)]
    assert statuses.count(200) == 1 and set(statuses) == {200, 409}, statuses
    run = wait_run(tf, run_id, "succeeded", timeout=60)
    assert run["result"] == {"a": 2, "b": 2, "c": 2}
    assert (_marks(path, "a"), _marks(path, "b"), _marks(path, "c")) == (2, 2, 2)
    assert len(run["superseded_steps"]) == 3
    assert len([e for e in _run_events(history(tf, run_id)) if e[:2] == ("succeeded", "running")]) == 1
    tf.close()


# -- the API's answers (in process: no delivery involved) ----------------------------------------------------


def test_api_commands_answer_404_and_409_and_change_nothing_when_refused(pg_url):
    from tests.support.api import AUTH, HELLO, make_client, row_counts

    client, tf = make_client(pg_url, workflow_modules="tests.support.codeflows")
    try:
        def post(path: str) -> httpx.Response:
            return client.post(path, headers=AUTH)

        assert client.post("/api/workflows", json=HELLO, headers=AUTH).status_code == 201
        dag = client.post("/api/runs", json={"workflow": "hello"}, headers=AUTH).json()
        code = client.post("/api/runs", json={"workflow": "approval"}, headers=AUTH).json()
        a_id = next(t["id"] for t in dag["tasks"] if t["name"] == "a")
        step = code["steps"][0]["task_run_id"]

        before = row_counts(tf)
        refused = {
            "/api/runs/999999/pause": (404, "run 999999 does not exist"),
            "/api/runs/999999/resume": (404, "run 999999 does not exist"),
            "/api/tasks/999999/force-success": (404, "task run 999999 does not exist"),
            "/api/tasks/999999/rerun": (404, "task run 999999 does not exist"),
            f"/api/runs/{dag['id']}/resume": (
                409, f"run {dag['id']} is running; only a paused run or a blocked code run can be resumed"),
            f"/api/tasks/{a_id}/force-success": (
                409, f"task 'a' (task run {a_id}) of run {dag['id']} is submitted; only a failed task can be forced "
                     "to success"),
            f"/api/tasks/{a_id}/rerun": (
                409, f"run {dag['id']} is running; a task can be rerun only in a finished run"),
            f"/api/tasks/{step}/force-success": (
                409, f"position 0 (a wait for signal 'approve', task run {step}) of code run {code['id']} is not an "
                     "activity; only a failed activity step can be forced to success"),
            f"/api/tasks/{step}/rerun": (
                409, f"run {code['id']} is running; a step can be rerun only in a finished run"),
        }
        for path, (status, message) in refused.items():
            r = post(path)
            assert (r.status_code, r.json()["message"]) == (status, message), path
        assert row_counts(tf) == before

        # pause and resume a code run over the API: a paused run is paused once
        paused = post(f"/api/runs/{code['id']}/pause")
        assert paused.status_code == 200 and paused.json()["state"] == "paused"
        again = post(f"/api/runs/{code['id']}/pause")
        assert again.status_code == 409
        assert again.json()["message"] == f"run {code['id']} is paused; only a running run can be paused"
        assert client.get("/api/runs", params={"state": "paused"}, headers=AUTH).json()["items"][0]["id"] == code["id"]
        resumed = post(f"/api/runs/{code['id']}/resume")
        assert resumed.status_code == 200 and resumed.json()["state"] == "running"
        moves = [(e["from"], e["to"]) for e in client.get(f"/api/runs/{code['id']}/history", headers=AUTH).json()
                 if e["task"] is None]
        assert moves[-2:] == [("running", "paused"), ("paused", "running")]
    finally:
        tf.close()
