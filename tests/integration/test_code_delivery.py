"""Code workflows through real ``celery worker`` / ``celery beat`` processes, real Redis and PostgreSQL (and
SQLite where the test does not need PostgreSQL's concurrency): activities and gather, durable timers across a
restart of every process and their latency, signals before the wait / duplicate keys / to a finished run, cancel
during a sleep, racing idempotent starts, an activity whose worker is SIGKILLed, a DAG ``subworkflow`` task
starting a code workflow. The same features in process (StubDispatcher): test_code_workflows.py."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from app.client import Tideflow
from app.clock import utcnow
from app.db.schema import WorkflowRun
from app.errors import InvalidState
from tests.support.cluster import Cluster, Proc
from tests.support.harness import client_for, history, wait_run
from tests.support.jobs import read_ledger
from tests.support.wait import holds_for, read_lines, wait_until

RECONCILE_INTERVAL = 1.0

# every process (and the in-test client) imports the test workflows; timers are fired by the reconciler, every
# RECONCILE_INTERVAL seconds
pytestmark = pytest.mark.cluster_env(TIDEFLOW_WORKFLOW_MODULES="tests.support.codeflows",
                                     TIDEFLOW_RECONCILE_INTERVAL_SECONDS=str(RECONCILE_INTERVAL))


@pytest.fixture
def tf(cluster: Cluster) -> Any:
    client = client_for(cluster)
    yield client
    client.close()


def start_all(cluster: Cluster, concurrency: int = 2) -> Proc:
    """One worker on both queues (activities, workflow steps, the reconcile job) and beat."""
    w1 = cluster.start_worker("w1", concurrency=concurrency)
    cluster.start_beat()
    return w1


def ts(value: str) -> datetime:
    at = datetime.fromisoformat(value)
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def execs(cluster: Cluster, run_id: int) -> Counter[tuple[int, str]]:
    """How many times each DAG task body of the run ran (the ledger of tests.support.jobs)."""
    return Counter((e["run"], e["task"]) for e in read_ledger(cluster.ledger)
                   if e["event"] == "exec" and e["run"] == run_id)


def step(tf: Tideflow, run_id: int, seq: int, kind: str, state: str = "running", timeout: float = 30) -> dict:
    """Wait until step ``seq`` of the run exists, is a ``kind`` step and is in ``state``; return it."""
    def found() -> dict | None:
        tasks = [t for t in tf.run(run_id)["tasks"] if t["seq"] == seq]
        return tasks[0] if tasks and tasks[0]["type"] == kind and tasks[0]["state"] == state else None

    return wait_until(found, timeout=timeout, message=f"run {run_id}: no {state} {kind} step at position {seq}")


def test_activities_and_gather_succeed_through_real_workers(cluster: Cluster, tf: Tideflow) -> None:
    w1 = start_all(cluster)
    run_id = tf.start_run("adder", {"x": 2, "y": 3})
    run = wait_run(tf, run_id, "succeeded")
    assert run["result"] == {"first": 5, "left": 6, "right": 7}
    assert run["state_values"] == {"stage": "added"}
    tasks = run["tasks"]
    assert [(t["seq"], t["type"], t["state"]) for t in tasks] == [(i, "activity", "succeeded") for i in range(3)]
    assert [t["result"] for t in tasks] == [5, 6, 7]
    # each activity was one attempt on a real worker (not run inline by the client)
    pool = w1.children()
    assert all(len(t["attempts"]) == 1 and t["attempts"][0]["pid"] in pool for t in tasks), (pool, tasks)
    # the two gathered activities were both started before either result was needed: same pass
    submitted = {e["task"]: e["at"] for e in history(tf, run_id) if e["to"] == "submitted"}
    assert submitted[tasks[1]["name"]] == submitted[tasks[2]["name"]], submitted


def test_a_timer_fires_within_the_reconcile_interval_of_its_due_time(cluster: Cluster, tf: Tideflow) -> None:
    start_all(cluster)
    run_id = tf.start_run("sleeper", {"seconds": 2})
    timer = step(tf, run_id, 0, "timer")
    assert tf.run(run_id)["state_values"] == {"stage": "sleeping"}
    run = wait_run(tf, run_id, "succeeded", timeout=30)
    assert run["result"] == "woke" and run["state_values"] == {"stage": "woke"}
    fired = run["tasks"][0]
    late = (ts(fired["finished_at"]) - ts(timer["due_at"])).total_seconds()
    # the bound is interval + 1 s; loosely here (2 shared cores, beat and the reconcile task's queue hop)
    print(f"timer fired {late:.2f}s after its due time")
    assert 0 <= late <= RECONCILE_INTERVAL + 3, late
    assert any(e["actor"] == "reconciler" and "timer fired" in e["reason"] for e in history(tf, run_id))


def test_a_sleep_survives_a_restart_of_every_process(cluster: Cluster, tf: Tideflow) -> None:
    start_all(cluster)
    run_id = tf.start_run("sleeper", {"seconds": 4})
    timer = step(tf, run_id, 0, "timer")
    cluster.stop()  # every worker and beat
    assert not any(p.is_alive() for p in cluster.procs)
    due = ts(timer["due_at"])
    wait_until(lambda: utcnow() > due + timedelta(seconds=2), timeout=30, interval=0.2)  # down over the due time
    run = tf.run(run_id)
    assert run["state"] == "running" and run["tasks"][0]["state"] == "running", run  # nobody fired it

    restarting = utcnow()
    start_all(cluster)
    up = utcnow()  # the worker is ready and beat is running: the next reconcile pass fires the overdue timer
    run = wait_run(tf, run_id, "succeeded", timeout=30)
    assert run["result"] == "woke"
    fired_at = ts(run["tasks"][0]["finished_at"])
    late = (fired_at - up).total_seconds()
    print(f"overdue timer fired {late:.2f}s after every process was up again")
    assert restarting <= fired_at and late <= RECONCILE_INTERVAL + 3, (restarting, up, fired_at)
    assert any(e["actor"] == "reconciler" and "timer fired" in e["reason"] for e in history(tf, run_id))


def test_signals_before_the_wait_are_kept_a_duplicate_key_delivers_once(cluster: Cluster, tf: Tideflow) -> None:
    start_all(cluster)
    run_id = tf.start_run("late_approval", {"seconds": 5})
    step(tf, run_id, 0, "timer")
    first = tf.signal(run_id, "approve", {"by": "ann"}, key="k1")
    assert tf.signal(run_id, "approve", {"by": "ann", "again": True}, key="k1") == first  # one signal
    second = tf.signal(run_id, "approve", {"by": "bob"}, key="k2")
    assert second != first
    # both arrived while the workflow was still asleep: nothing waited for them yet
    run = tf.run(run_id)
    assert [(t["type"], t["state"]) for t in run["tasks"]] == [("timer", "running")], run
    kept = [e for e in history(tf, run_id) if "kept until the workflow waits for it" in e["reason"]]
    assert len(kept) == 2, kept

    run = wait_run(tf, run_id, "succeeded", timeout=30)
    assert run["result"] == [{"by": "ann"}, {"by": "bob"}]  # arrival order, k1 once
    signals = [(t["type"], t["result"]) for t in run["tasks"][1:]]
    assert signals == [("signal", {"by": "ann"}), ("signal", {"by": "bob"})]
    with pytest.raises(InvalidState, match=f"run {run_id} is already succeeded: signal 'approve' was not delivered"):
        tf.signal(run_id, "approve", {"by": "late"})
    with pytest.raises(InvalidState, match="already succeeded"):
        tf.signal(run_id, "approve", {"by": "ann"}, key="k1")  # even a key seen before


def test_cancel_during_a_sleep_runs_the_compensation(cluster: Cluster, tf: Tideflow) -> None:
    w1 = start_all(cluster)
    run_id = tf.start_run("cancellable", {"order_id": 3})
    step(tf, run_id, 1, "timer")  # charged, now sleeping for an hour
    tf.cancel(run_id)
    run = wait_run(tf, run_id, "cancelled", timeout=30)
    assert [(t["type"], t["state"]) for t in run["tasks"]] == [
        ("activity", "succeeded"), ("timer", "cancelled"), ("activity", "succeeded")], run["tasks"]
    refund = run["tasks"][2]
    assert refund["name"] == "refund#2" and refund["result"] == "refunded 3"
    assert refund["attempts"] and refund["attempts"][0]["pid"] in w1.children()  # ran on the real worker


class TestOnPostgres:
    @pytest.fixture
    def cluster_db_url(self, pg_url: str) -> str:
        return pg_url

    @pytest.mark.parametrize("kind", ["code", "dag"])
    def test_eight_threads_racing_one_start_key_create_one_run(
        self, cluster: Cluster, tf: Tideflow, kind: str,
    ) -> None:
        cluster.start_worker("w1")
        workflow = "adder"
        if kind == "dag":
            workflow = "keyed-dag"
            tf.register({"name": workflow, "params": {"x": 0}, "tasks": [
                {"name": "t0", "type": "python", "function": "tests.support.jobs:record"}]})
        clients = [client_for(cluster) for _ in range(8)]  # each thread its own client, Runtime and sessions
        barrier = threading.Barrier(len(clients))
        results: list[tuple[int, bool] | BaseException] = [ValueError("not run")] * len(clients)

        def race(i: int) -> None:
            try:
                barrier.wait(timeout=30)
                results[i] = clients[i].start_run_keyed(workflow, {"x": 1}, key="order-42")
            except BaseException as exc:  # noqa: BLE001 - reported below
                results[i] = exc

        threads = [threading.Thread(target=race, args=(i,)) for i in range(len(clients))]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
        finally:
            for c in clients:
                c.close()
        assert all(isinstance(r, tuple) for r in results), results
        ids = {r[0] for r in results if isinstance(r, tuple)}
        assert len(ids) == 1, results
        assert sum(1 for r in results if isinstance(r, tuple) and r[1]) == 1, results  # one created it
        with tf.runtime.db.read() as s:
            assert s.scalar(select(func.count()).select_from(WorkflowRun)
                            .where(WorkflowRun.key == "order-42")) == 1
            assert s.scalar(select(func.count()).select_from(WorkflowRun)) == 1
        (run_id,) = ids
        run = wait_run(tf, run_id, "succeeded")
        if kind == "code":
            assert run["result"] == {"first": 2, "left": 3, "right": 4}
            assert len(run["tasks"]) == 3
        else:
            assert [t["name"] for t in run["tasks"]] == ["t0"]
            assert execs(cluster, run_id) == {(run_id, "t0"): 1}

    def test_an_activity_whose_worker_is_killed_is_retried_and_the_workflow_succeeds(
        self, cluster: Cluster, tf: Tideflow, tmp_path: Path,
    ) -> None:
        """``hang_first_time`` has no retries: its second execution is the lost-attempt budget's."""
        marker = tmp_path / "hang.txt"
        cluster.start_worker("master", queues=("tideflow.master",), concurrency=1)
        cluster.start_beat()
        w1 = cluster.start_worker("w1", queues=("tideflow.default",), concurrency=1)
        run_id = tf.start_run("crash_once", {"path": str(marker), "seconds": 120})
        wait_until(lambda: len(read_lines(marker)) == 1, timeout=30, message="the activity never started")
        task = step(tf, run_id, 0, "activity")
        assert task["attempt"] == 1
        w1.kill()  # SIGKILL mid-activity: no result, no failure, only a lease that stops being renewed
        w2 = cluster.start_worker("w2", queues=("tideflow.default",), concurrency=1)

        run = wait_run(tf, run_id, "succeeded", timeout=60)
        assert run["result"] == {"execution": 2, "after": 102}
        activity = run["tasks"][0]
        assert [a["outcome"] for a in activity["attempts"]] == ["lost", "succeeded"], activity["attempts"]
        assert activity["failures"] == 0 and activity["attempts"][1]["pid"] in w2.children()
        lines = [line.split() for line in read_lines(marker)]
        assert [event for event, _pid in lines] == ["start", "start", "effect"], lines
        assert lines[0][1] != lines[1][1] == lines[2][1]  # the effect happened once, in the second execution
        assert any(e["actor"] == "reconciler" and "lease expired" in e["reason"] for e in history(tf, run_id))


def test_a_dag_subworkflow_task_starts_a_code_workflow(cluster: Cluster, tf: Tideflow) -> None:
    w1 = start_all(cluster)
    tf.register({"name": "dag-parent", "params": {"x": 1}, "tasks": [
        {"name": "kid", "type": "subworkflow", "workflow": "adder", "params": {"x": "{{ params.x }}"}},
        {"name": "after", "type": "python", "function": "tests.support.jobs:record", "depends_on": ["kid"]},
    ]})
    run_id = tf.start_run("dag-parent", {"x": 4})
    run = wait_run(tf, run_id, "succeeded", timeout=60)
    kid = run["tasks"][0]
    assert kid["result"] == {"first": 5, "left": 6, "right": 7}
    child = tf.run(kid["child_run_id"])
    assert child["workflow"] == "adder" and child["state"] == "succeeded"
    assert child["result"] == kid["result"]
    assert all(t["attempts"] and t["attempts"][0]["pid"] in w1.children() for t in child["tasks"]), child["tasks"]


def test_cancel_during_a_running_activity_stops_it_through_its_lease(
    cluster: Cluster, tf: Tideflow, tmp_path: Path,
) -> None:
    w1 = start_all(cluster)
    marker = tmp_path / "hang.txt"
    run_id = tf.start_run("crash_once", {"path": str(marker), "seconds": 120})
    wait_until(lambda: len(read_lines(marker)) == 1, timeout=30, message="the activity never started")
    step(tf, run_id, 0, "activity")
    tf.cancel(run_id)
    run = wait_run(tf, run_id, "cancelled", timeout=30)
    assert [(t["type"], t["state"]) for t in run["tasks"]] == [("activity", "cancelled")], run["tasks"]
    # the body (sleeping for 120 s) is stopped by its heartbeat noticing the lost lease, long before it ends
    wait_until(lambda: "stopping the body" in w1.log() and "'stopped'" in w1.log(), timeout=30,
               message="the running activity should be stopped")
    assert [line.split()[0] for line in read_lines(marker)] == ["start"]  # its effect never happened


def test_children_continue_as_new_and_async_workflows_through_real_workers(cluster: Cluster, tf: Tideflow) -> None:
    start_all(cluster)
    parent = tf.start_run("code_parent", {"x": 5})
    counter = tf.start_run("counter", {"n": 0, "until": 3})
    async_run = tf.start_run("async_adder", {"x": 1})
    assert wait_run(tf, parent)["result"] == {"child": {"first": 15, "left": 16, "right": 17},
                                              "other": {"first": 2, "left": 3, "right": 4}}
    assert wait_run(tf, async_run)["result"] == 3 + 4
    run = wait_run(tf, counter)
    chain = [run]
    while chain[-1]["continued_run_id"]:
        chain.append(wait_run(tf, chain[-1]["continued_run_id"]))
    assert [r["params"]["n"] for r in chain] == [0, 1, 2] and chain[-1]["result"] == 3


def test_cancelling_a_parent_cancels_its_code_child(cluster: Cluster, tf: Tideflow) -> None:
    start_all(cluster)
    run_id = tf.start_run("sleepy_parent")
    child_task = step(tf, run_id, 0, "subworkflow")
    child_id = child_task["child_run_id"]
    step(tf, child_id, 0, "timer")
    tf.cancel(run_id)
    assert wait_run(tf, run_id, "cancelled", timeout=30)["tasks"][0]["state"] == "cancelled"
    child = wait_run(tf, child_id, "cancelled", timeout=30)
    assert child["tasks"][0]["state"] == "cancelled"


def test_a_signal_sent_in_a_transaction_exists_only_if_it_commits(cluster: Cluster, tf: Tideflow) -> None:
    start_all(cluster)
    run_id = tf.start_run("approval")
    step(tf, run_id, 0, "signal")  # waiting

    class Rollback(Exception):
        pass

    with pytest.raises(Rollback), tf.runtime.db.transaction() as s:
        tf.signal(run_id, "approve", "rolled back", session=s)
        raise Rollback
    holds_for(lambda: tf.run(run_id)["tasks"][0]["state"] == "running", seconds=2 * RECONCILE_INTERVAL,
              interval=0.2, message="a rolled-back signal must not be delivered")
    with tf.runtime.db.transaction() as s:
        tf.signal(run_id, "approve", "first", session=s)
        tf.signal(run_id, "approve", "second", session=s)
    run = wait_run(tf, run_id, "succeeded", timeout=30)
    assert run["result"] == {"approved": ["first", "second"]}


def test_a_signal_wait_times_out_with_none(cluster: Cluster, tf: Tideflow) -> None:
    start_all(cluster)
    run_id = tf.start_run("approval", {"timeout": 1})
    run = wait_run(tf, run_id, "succeeded", timeout=30)
    assert run["result"] == {"approved": None}
    assert any(e["actor"] == "reconciler" and "wait for signal 'approve' timed out" in e["reason"]
               for e in history(tf, run_id))


class TestDeployingAChange:
    @pytest.fixture
    def cluster_db_url(self, pg_url: str) -> str:
        return pg_url

    def test_an_incompatible_deploy_blocks_the_run_and_resume_continues_it_after_the_fix(
        self, cluster: Cluster, tf: Tideflow, monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.delenv("TIDEFLOW_TEST_CODE_VERSION", raising=False)
        start_all(cluster)
        run_id = tf.start_run("deployed", {"seconds": 2})
        step(tf, run_id, 1, "timer")  # version 1 recorded add at position 0
        cluster.stop()
        cluster.env["TIDEFLOW_TEST_CODE_VERSION"] = "2"  # the incompatible deploy
        start_all(cluster)

        def blocked() -> dict | None:
            run = tf.run(run_id)
            return run if run["state"] == "blocked" else None

        run = wait_until(blocked, timeout=30, message="the replay on the new code should block the run")
        assert "position 0" in run["error"] and "activity 'add'" in run["error"], run["error"]
        assert "activity 'refund'" in run["error"], run["error"]
        events = len(history(tf, run_id))
        holds_for(lambda: tf.run(run_id)["state"] == "blocked" and len(history(tf, run_id)) == events,
                  seconds=3 * RECONCILE_INTERVAL, interval=0.2,
                  message="a blocked run must be neither retried in a loop nor changed")
        # the replay check, against the current code of this process
        monkeypatch.setenv("TIDEFLOW_TEST_CODE_VERSION", "2")
        assert not tf.replay(run_id).ok
        monkeypatch.delenv("TIDEFLOW_TEST_CODE_VERSION")
        assert tf.replay(run_id).ok

        cluster.stop()
        del cluster.env["TIDEFLOW_TEST_CODE_VERSION"]  # the fix deployed
        start_all(cluster)
        tf.resume(run_id)
        run = wait_run(tf, run_id, "succeeded", timeout=30)
        assert run["result"] == "done"
        assert [(t["type"], t["state"]) for t in run["tasks"]] == [("activity", "succeeded"), ("timer", "succeeded")]

    def test_patched_lets_a_new_deploy_branch_while_old_runs_replay_the_old_branch(
        self, cluster: Cluster, tf: Tideflow, monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.delenv("TIDEFLOW_TEST_CODE_VERSION", raising=False)
        start_all(cluster)
        old = tf.start_run("patched_flow", {"seconds": 0.5})
        step(tf, old, 2, "signal")  # version 1 recorded add at position 1, and waits
        cluster.stop()
        cluster.env["TIDEFLOW_TEST_CODE_VERSION"] = "2"
        start_all(cluster)
        new = tf.start_run("patched_flow", {"seconds": 0.5})
        step(tf, new, 3, "signal")  # version 2: a patch marker at position 1, refund at 2
        for run_id in (old, new):
            tf.signal(run_id, "finish")
        assert wait_run(tf, old, "succeeded", timeout=30)["result"] == "4"
        run = wait_run(tf, new, "succeeded", timeout=30)
        assert run["result"] == "refunded 2"
        assert [t["type"] for t in run["tasks"]] == ["timer", "marker", "activity", "signal"]
        monkeypatch.setenv("TIDEFLOW_TEST_CODE_VERSION", "2")
        assert tf.replay(old).ok and tf.replay(new).ok


def test_duplicate_messages_run_an_activity_once_and_change_no_step(
    cluster: Cluster, tf: Tideflow, tmp_path: Path,
) -> None:
    """Redis may deliver a message twice: copies of an activity's execute message, and of a run's advance
    message, are fenced (the activity's body runs once; replays add no step)."""
    from app.dispatch import ExecuteMessage

    marker = tmp_path / "once.txt"
    run_id = tf.start_run("crash_once", {"path": str(marker), "seconds": 0})  # no worker yet: waits in the queue
    activity = step(tf, run_id, 0, "activity", state="submitted")
    for _ in range(3):
        tf.runtime.dispatcher.execute([ExecuteMessage(activity["id"], activity["attempt"], activity["queue"],
                                                      activity["priority"])])
        tf.runtime.dispatcher.advance([run_id, run_id])
    w1 = start_all(cluster, concurrency=4)
    run = wait_run(tf, run_id, "succeeded", timeout=30)
    assert run["result"] == {"execution": 1, "after": 101}
    assert [(t["seq"], t["name"], t["attempt"]) for t in run["tasks"]] == [
        (0, "hang_first_time#0", 1), (1, "add#1", 1)], run["tasks"]
    wait_until(lambda: w1.log().count("'ignored'") >= 3, timeout=20,
               message="the duplicate execute messages should be acknowledged and ignored")
    assert [line.split()[0] for line in read_lines(marker)] == ["start", "effect"]


def test_many_gathers_finishing_together_each_replay_to_one_result(cluster: Cluster, tf: Tideflow) -> None:
    """Both gathered activities of a run finish at about the same time on different pool processes: each
    triggers a replay; the run lock serialises them, so no step is recorded twice and no run blocks."""
    start_all(cluster, concurrency=4)
    runs = {tf.start_run("adder", {"x": i}): i for i in range(20)}
    for run_id, x in runs.items():
        run = wait_run(tf, run_id, "succeeded", timeout=90)
        assert run["result"] == {"first": x + 1, "left": x + 2, "right": x + 3}, run
        assert [t["seq"] for t in run["tasks"]] == [0, 1, 2]
        assert all(len(t["attempts"]) == 1 for t in run["tasks"])


def test_an_activity_past_its_timeout_is_stopped_and_raises_activity_error(cluster: Cluster, tf: Tideflow) -> None:
    start_all(cluster)
    run_id = tf.start_run("timeboxed", {"seconds": 60})
    run = wait_run(tf, run_id, "succeeded", timeout=30)
    assert "timed out after 1s" in run["result"]["message"], run["result"]
    assert run["result"]["error"] == "TimeoutError"
    (activity,) = run["tasks"]
    assert activity["state"] == "failed" and activity["duration"] < 30, activity


def test_an_activity_runs_only_on_a_worker_serving_its_queue(cluster: Cluster, tf: Tideflow) -> None:
    start_all(cluster)
    run_id = tf.start_run("payer", {"order_id": 7})
    activity = step(tf, run_id, 0, "activity", state="submitted")
    assert activity["queue"] == "tf-test-payments"
    holds_for(lambda: tf.run(run_id)["tasks"][0]["state"] == "submitted", seconds=2, interval=0.2,
              message="no worker serves the activity's queue: it must wait")
    payments = cluster.start_worker("payments", queues=("tf-test-payments",), concurrency=1)
    run = wait_run(tf, run_id, "succeeded", timeout=30)
    assert run["result"] == "paid 7"
    assert run["tasks"][0]["attempts"][0]["pid"] in payments.children()


@pytest.mark.cluster_env(TIDEFLOW_INLINE_ADVANCE="false")
def test_a_code_run_completes_when_every_advance_message_is_lost(cluster: Cluster, tf: Tideflow) -> None:
    """No process consumes the master queue, and workers do not advance runs inline, so every advance message
    (an activity finished) is lost; the reconciler's scan of unhandled steps alone replays the workflow to its
    end."""
    from app.services.reconciler import reconcile_once

    cluster.start_worker("w1", queues=("tideflow.default",))  # activities only
    run_id = tf.start_run("adder", {"x": 2, "y": 3})
    wait_until(lambda: tf.run(run_id)["tasks"][0]["state"] == "succeeded", timeout=30)
    holds_for(lambda: len(tf.run(run_id)["tasks"]) == 1, seconds=1, interval=0.2,
              message="without a master, nothing may replay the workflow")

    def reconciled() -> bool:
        reconcile_once(tf.runtime)
        return tf.run(run_id)["state"] == "succeeded"

    wait_until(reconciled, timeout=60, interval=0.3)
    run = tf.run(run_id)
    assert run["result"] == {"first": 5, "left": 6, "right": 7}
    inserted = [e for e in history(tf, run_id) if e["task"] and e["from"] is None]
    assert [e["actor"] for e in inserted] == ["api", "reconciler", "reconciler"], inserted
