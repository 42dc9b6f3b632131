"""The consistency protocol under the faults the issue lists, with real Redis, PostgreSQL and Celery
worker processes. Each test names the guarantee it demonstrates."""

from __future__ import annotations

import threading
import time
from collections import Counter

import psycopg
import pytest

from app.db import repository as repo
from app.dispatch import ExecuteMessage
from app.scheduling import max_publishes
from app.services import master, worker
from app.services.reconciler import reconcile_once
from tests.support.harness import client_for, history, live_tasks, wait_run
from tests.support.jobs import read_ledger
from tests.support.servers import psycopg_conninfo
from tests.support.wait import holds_for, wait_until


@pytest.fixture
def cluster_db_url(pg_url):
    return pg_url


def chain(name: str, n: int = 2, **first: object) -> dict:
    tasks = [{"name": f"t{i}", "type": "python", "function": "tests.support.jobs:record",
              "depends_on": [f"t{i - 1}"] if i else []} for i in range(n)]
    tasks[0].update(first)
    return {"name": name, "tasks": tasks}


def execs(cluster, run_id: int | None = None) -> Counter:
    return Counter((e["run"], e["task"]) for e in read_ledger(cluster.ledger)
                   if e["event"] in ("exec", "start") and (run_id is None or e["run"] == run_id))


def queue_len(broker, queue: str = "tideflow.default") -> int:
    client = broker.client()
    keys = [k if isinstance(k, str) else k.decode() for k in broker.keys()]  # noqa: SIM118 - not a dict
    return sum(client.llen(k) for k in keys
               if k[len(broker.key_prefix):].startswith(queue) and client.type(k) in (b"list", "list"))


@pytest.mark.slow
def test_seed_scenario_task_table_locked_longer_than_30s(cluster, broker, pg_url):
    """DolphinScheduler's bug: the task insert is slow (> 30 s). Nothing is published before the commit,
    a worker blocked on the locked table waits instead of giving up, and nothing is stuck."""
    tf = client_for(cluster)
    tf.register(chain("seed", 2))
    early = tf.start_run("seed")  # committed, its message waits in the queue: no worker yet
    assert queue_len(broker) == 1

    lock = psycopg.connect(psycopg_conninfo(pg_url))
    lock.execute("LOCK TABLE task_runs IN ACCESS EXCLUSIVE MODE")
    t0 = time.monotonic()
    started: dict[str, int] = {}
    starter = threading.Thread(target=lambda: started.setdefault("id", tf.start_run("seed")))
    starter.start()
    cluster.start_worker("w1")  # takes `early`'s message and blocks reading the locked table

    def blocked_and_unpublished() -> bool:
        assert starter.is_alive(), "start_run should be blocked by the lock"
        assert queue_len(broker) == 0, "nothing may be published before the run's transaction commits"
        return True

    holds_for(blocked_and_unpublished, 32 - (time.monotonic() - t0), interval=1)  # the fault's duration
    lock.rollback()
    lock.close()
    starter.join(30)
    assert "id" in started
    for run_id in (early, started["id"]):
        wait_run(tf, run_id, "succeeded", timeout=60)
        assert execs(cluster, run_id) == {(run_id, "t0"): 1, (run_id, "t1"): 1}
    assert live_tasks(tf) == {}
    tf.close()


def test_message_published_before_its_row_is_visible_is_retried_then_runs_once(cluster):
    cluster.start_worker("w1")
    tf = client_for(cluster)
    tf.register(chain("early", 1))
    w1 = cluster.workers["w1"]
    with tf.runtime.db.transaction() as s:
        run_id = master.start_run(s, tf.runtime, "early")
        task = repo.run_tasks(s, run_id)[0]
        # simulate a broken master that publishes inside its transaction
        tf.runtime.dispatcher.execute([ExecuteMessage(task.id, task.attempt, task.queue, task.priority)])
        wait_until(lambda: w1.log().count(f"task run {task.id} not visible yet") >= 3, timeout=30,
                   message="the worker should keep retrying the message while the row is invisible")
    # committed: the on-commit publish sends a second message for the same attempt
    wait_run(tf, run_id, "succeeded")
    assert execs(cluster, run_id) == {(run_id, "t0"): 1}
    assert "giving up" not in w1.log()
    tf.close()


@pytest.mark.cluster_env(TIDEFLOW_MISSING_ROW_DEADLINE_SECONDS="3")
def test_message_for_a_row_that_never_appears_is_retried_until_the_deadline(cluster):
    w1 = cluster.start_worker("w1")
    tf = client_for(cluster)
    t0 = time.monotonic()
    tf.runtime.dispatcher.execute([ExecuteMessage(987654, 1, "tideflow.default", 5)])
    wait_until(lambda: "task run 987654 still not visible" in w1.log(), timeout=30)
    assert time.monotonic() - t0 >= 3
    assert w1.log().count("task run 987654 not visible yet") >= 3
    tf.close()


def test_message_lost_after_commit_is_republished_by_the_reconciler(cluster, broker):
    tf = client_for(cluster)
    tf.register(chain("lost", 3))
    run_id = tf.start_run("lost")
    assert queue_len(broker) == 1
    broker.delete_queues()  # the broker loses every message (as FLUSHALL would)
    assert queue_len(broker) == 0
    cluster.start_worker("w1")
    cluster.start_beat()
    wait_run(tf, run_id, "succeeded", timeout=60)
    assert execs(cluster, run_id) == {(run_id, f"t{i}"): 1 for i in range(3)}
    republished = [e for e in history(tf, run_id) if e["actor"] == "reconciler" and "re-published" in e["reason"]]
    assert republished and republished[0]["task"] == "t0"
    tf.close()


def test_same_message_delivered_twice_runs_the_body_once(cluster):
    tf = client_for(cluster)
    tf.register(chain("dup", 2))
    run_id = tf.start_run("dup")
    with tf.runtime.db.read() as s:
        task = repo.run_tasks(s, run_id)[0]
    for _ in range(3):  # three more copies of the same execute message
        tf.runtime.dispatcher.execute([ExecuteMessage(task.id, task.attempt, task.queue, task.priority)])
    w1 = cluster.start_worker("w1", concurrency=2)
    wait_run(tf, run_id, "succeeded")
    wait_until(lambda: w1.log().count("'ignored'") >= 3, timeout=20,
               message="the duplicates should be acknowledged and ignored")
    assert execs(cluster, run_id) == {(run_id, "t0"): 1, (run_id, "t1"): 1}
    tf.close()


@pytest.mark.parametrize("victim", ["whole worker", "pool process"])
def test_worker_killed_mid_task_is_retried_after_lease_expiry_and_fenced(cluster, victim):
    """A worker dying is an infrastructure fault, not a failure of the body: a task with no retries (the
    default) still runs to success on a new attempt, on its lost-attempt budget."""
    tf = client_for(cluster)
    tf.register({"name": "crash", "tasks": [
        {"name": "slow", "type": "python", "function": "tests.support.jobs:sleep_on_first_attempt",
         "args": {"seconds": 120}},
        {"name": "after", "type": "python", "function": "tests.support.jobs:record", "depends_on": ["slow"]},
    ]})
    w1 = cluster.start_worker("w1", concurrency=1)
    cluster.start_beat()
    run_id = tf.start_run("crash")
    wait_until(lambda: execs(cluster, run_id)[(run_id, "slow")] == 1, timeout=30)
    with tf.runtime.db.read() as s:
        task = next(t for t in repo.run_tasks(s, run_id) if t.name == "slow")
    assert task.state == "running" and task.attempt == 1
    old_token = task.lease_token
    if victim == "whole worker":
        w1.kill()
        cluster.start_worker("w2", concurrency=1)
    else:
        import os
        import signal

        (child,) = w1.children()
        os.kill(child, signal.SIGKILL)

    run = wait_run(tf, run_id, "succeeded", timeout=60)
    slow = next(t for t in run["tasks"] if t["name"] == "slow")
    assert [a["outcome"] for a in slow["attempts"]] == ["lost", "succeeded"]
    assert slow["result"] == "attempt 2" and slow["failures"] == 0
    assert any(e["actor"] == "reconciler" and "lease expired" in e["reason"] for e in history(tf, run_id))
    # the killed attempt can no longer write its result
    assert worker.finish(tf.runtime, task.id, 1, old_token, result="stale").outcome == worker.Outcome.FENCED
    assert tf.run(run_id)["tasks"][0]["result"] == "attempt 2"
    ledger = [e for e in read_ledger(cluster.ledger) if e["run"] == run_id and e["task"] == "slow"]
    assert [(e["event"], e["attempt"]) for e in ledger] == [("start", 1), ("start", 2), ("end", 2)]
    tf.close()


def test_a_body_that_kills_its_worker_every_time_fails_after_its_lost_attempt_budget(cluster):
    tf = client_for(cluster)
    tf.register({"name": "oom", "tasks": [
        {"name": "hog", "type": "python", "function": "tests.support.jobs:kill_own_process", "retries": 3,
         "max_lost_attempts": 2}]})
    cluster.start_worker("w1", concurrency=1)
    cluster.start_beat()
    run_id = tf.start_run("oom")
    run = wait_run(tf, run_id, "failed", timeout=60)
    hog = run["tasks"][0]
    assert [a["outcome"] for a in hog["attempts"]] == ["lost", "lost"] and hog["failures"] == 0
    assert "2 attempts lost (max_lost_attempts: 2): the body may be killing its worker" in hog["error"]
    assert execs(cluster, run_id) == {(run_id, "hog"): 2}
    tf.close()


def test_run_started_before_any_worker_completes_once_one_starts(cluster):
    cluster.start_worker("master", queues=("tideflow.master",), concurrency=1)  # the Procfile's master
    cluster.start_beat()
    tf = client_for(cluster)
    tf.register(chain("late", 2))
    run_id = tf.start_run("late")
    # no worker: the reconciler re-publishes the unclaimed task, which must not cause a double run
    wait_until(lambda: any("re-published" in e["reason"] for e in history(tf, run_id)), timeout=20)
    assert tf.run(run_id)["tasks"][0]["state"] == "submitted"
    cluster.start_worker("w1", queues=("tideflow.default",))
    wait_run(tf, run_id, "succeeded")
    assert execs(cluster, run_id) == {(run_id, "t0"): 1, (run_id, "t1"): 1}
    tf.close()


@pytest.mark.cluster_env(TIDEFLOW_ORPHAN_TIMEOUT_SECONDS="0.5", TIDEFLOW_RECONCILE_INTERVAL_SECONDS="0.25",
                         TIDEFLOW_ORPHAN_MAX_BACKOFF_SECONDS="30")
def test_republishing_a_backlog_is_bounded_per_task(cluster, broker):
    """A queue backlog (here: no worker for ~10 s, 20 x the orphan timeout) costs a logarithmic number of
    duplicate messages per task, and the duplicates are harmless."""
    tf = client_for(cluster)
    tf.register(chain("backlog", 1))
    runs = [tf.start_run("backlog") for _ in range(10)]
    cluster.start_worker("master", queues=("tideflow.master",), concurrency=1)
    t0 = time.monotonic()
    cluster.start_beat()
    wait_until(lambda: time.monotonic() - t0 > 10, timeout=15, interval=0.5)  # the backlog's duration
    elapsed = time.monotonic() - t0
    with tf.runtime.db.read() as s:
        counts = [repo.run_tasks(s, r)[0].publish_count for r in runs]
    bound = max_publishes(elapsed, tf.runtime.settings)
    assert all(2 <= c <= bound for c in counts), (counts, bound)
    assert bound < elapsed / 0.5  # far fewer than one per orphan timeout
    assert queue_len(broker) == sum(counts)
    cluster.start_worker("w1", queues=("tideflow.default",), concurrency=2)
    for r in runs:
        wait_run(tf, r, "succeeded")
    assert execs(cluster) == {(r, "t0"): 1 for r in runs}
    tf.close()


def test_parallel_branches_finishing_together_schedule_their_join_once(cluster):
    tf = client_for(cluster)
    tf.register({"name": "fan", "tasks": [
        {"name": "a", "type": "python", "function": "tests.support.jobs:record"},
        *[{"name": f"b{i}", "type": "python", "function": "tests.support.jobs:record", "depends_on": ["a"]}
          for i in range(4)],
        {"name": "join", "type": "python", "function": "tests.support.jobs:record",
         "depends_on": [f"b{i}" for i in range(4)]},
    ]})
    cluster.start_worker("w1", concurrency=4)
    runs = [tf.start_run("fan") for _ in range(25)]
    for r in runs:
        wait_run(tf, r, "succeeded")
        submits = [e for e in history(tf, r) if e["task"] == "join" and e["to"] == "submitted"]
        assert len(submits) == 1
    counts = execs(cluster)
    assert all(counts[(r, "join")] == 1 for r in runs)
    assert sum(counts.values()) == 25 * 6
    tf.close()


def test_subworkflow_completion_reaches_parent_when_every_advance_message_is_lost(cluster, broker):
    """No process consumes the master queue, so every advance message (including the child's notification
    to its parent) is lost; the reconciler alone drives child and parent to completion."""
    tf = client_for(cluster)
    tf.register(chain("kid", 1))
    tf.register({"name": "mom", "tasks": [
        {"name": "sub", "type": "subworkflow", "workflow": "kid"},
        {"name": "after", "type": "python", "function": "tests.support.jobs:record", "depends_on": ["sub"]},
    ]})
    cluster.start_worker("w1", queues=("tideflow.default",))
    run_id = tf.start_run("mom")

    def reconciled() -> bool:
        reconcile_once(tf.runtime)
        return tf.run(run_id)["state"] == "succeeded"

    wait_until(reconciled, timeout=60, interval=0.3)
    assert queue_len(broker, "tideflow.master") >= 1  # the child's notification to its parent, never taken
    events = history(tf, run_id)
    after_submitted = next(e for e in events if e["task"] == "after" and e["to"] == "submitted")
    assert after_submitted["actor"] == "reconciler"
    assert execs(cluster) == {(run_id + 1, "t0"): 1, (run_id, "after"): 1}
    tf.close()


def test_paused_worker_that_lost_its_lease_stops_its_body_and_cannot_write(cluster):
    """A worker frozen past its lease (SIGSTOP: a long GC pause, a partition) is failed over; when it wakes
    up it notices the lost lease, stops the body instead of running on beside attempt 2, and writes nothing."""
    import os
    import signal

    tf = client_for(cluster)
    tf.register({"name": "pause", "tasks": [
        {"name": "slow", "type": "python", "function": "tests.support.jobs:sleep_on_first_attempt",
         "args": {"seconds": 120}, "retries": 1}]})
    cluster.start_worker("master", queues=("tideflow.master",), concurrency=1)
    cluster.start_beat()
    w1 = cluster.start_worker("w1", queues=("tideflow.default",), concurrency=1)
    run_id = tf.start_run("pause")
    wait_until(lambda: execs(cluster, run_id)[(run_id, "slow")] == 1, timeout=30)
    os.killpg(w1.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: tf.run(run_id)["tasks"][0]["attempt"] == 2, timeout=30,
                   message="the reconciler should fail the frozen attempt over")
        cluster.start_worker("w2", queues=("tideflow.default",), concurrency=1)
        run = wait_run(tf, run_id, "succeeded", timeout=30)
    finally:
        os.killpg(w1.pid, signal.SIGCONT)
    wait_until(lambda: "stopping the body: lease lost" in w1.log(), timeout=30)
    wait_until(lambda: "'stopped'" in w1.log(), timeout=30, message="attempt 1's body should end as stopped")
    assert [a["outcome"] for a in run["tasks"][0]["attempts"]] == ["lost", "succeeded"]
    assert tf.run(run_id)["tasks"][0]["result"] == "attempt 2"
    ledger = [(e["event"], e["attempt"]) for e in read_ledger(cluster.ledger) if e["run"] == run_id]
    assert ledger == [("start", 1), ("start", 2), ("end", 2)]
    assert w1.is_alive()  # the worker itself carries on
    tf.close()
