"""``/metrics`` (app/metrics/) against real PostgreSQL (and SQLite), Redis and Celery worker processes: each
number moves when the thing it counts happens, and only then."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert, text

from app.broker import CeleryDispatcher, create_app
from app.clock import after, utcnow
from app.config import Settings
from app.db import repository as repo
from app.db.schema import TaskAttempt
from app.dispatch import ExecuteMessage, RecordingDispatcher
from app.metrics import LATENCY_BUCKETS, DbCounts, IdCursor, Metrics, Snapshot
from app.runtime import Runtime
from app.services import control, master, worker
from app.services.reconciler import reconcile_once
from app.states import RunState, TaskState
from tests.support.harness import client_for, history, wait_run
from tests.support.jobs import read_ledger
from tests.support.servers import psycopg_conninfo, terminate_backends
from tests.support.wait import wait_until

LATENCY = "tideflow_task_start_latency_seconds"


class Scrape:
    """One parsed exposition."""

    def __init__(self, metrics: Metrics) -> None:
        body, content_type = metrics.render()
        assert content_type.startswith("text/plain")
        self.text = body.decode()
        self.samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(self.text) for s in fam.samples}

    def get(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, tuple(sorted(labels.items()))))

    def __call__(self, name: str, **labels: str) -> float:
        value = self.get(name, **labels)
        assert value is not None, f"{name}{labels} is not exposed:\n{self.text}"
        return value

    def labelled(self, name: str, label: str) -> dict[str, float]:
        return {dict(lbl)[label]: v for (n, lbl), v in self.samples.items() if n == name}


def attempt_count(rt: Runtime) -> int:
    with rt.db.read() as s:
        return s.execute(text("SELECT count(*) FROM task_attempts")).scalar_one()


def execs(cluster: Any, run_id: int, task: str) -> int:
    return sum(1 for e in read_ledger(cluster.ledger)
               if e["run"] == run_id and e["task"] == task and e["event"] in ("exec", "start"))


def in_process(db_url: str, **overrides: Any) -> Runtime:
    """A runtime whose messages go nowhere (the test drives the worker side itself)."""
    settings = Settings(database_url=db_url, broker_url="redis://127.0.0.1:1/0", **overrides)
    return Runtime.create(settings, RecordingDispatcher())


def run_messages(rt: Runtime) -> None:
    """Deliver every recorded execute message to the worker service, in order (messages it publishes too)."""
    d: RecordingDispatcher = rt.dispatcher  # type: ignore[assignment]
    while d.executed:
        m = d.executed.pop(0)
        worker.execute(rt, m.task_run_id, m.attempt)


# -- a workflow on a real worker ---------------------------------------------------------------------------


def test_a_workflow_run_shows_up_in_every_number(cluster):
    """Runs and tasks by state, dispatches by kind, one latency observation per attempt; a second Metrics
    counts the same history once (its cursors start from zero), and the first counts only what is new."""
    cluster.start_worker("w1")
    tf = client_for(cluster)
    tf.register({"name": "m", "tasks": [
        {"name": "a", "type": "python", "function": "tests.support.jobs:fail_times", "retries": 1,
         "retry_delay": 3},
        {"name": "b", "type": "python", "function": "tests.support.jobs:record", "depends_on": ["a"]},
        {"name": "c", "type": "python", "function": "tests.support.jobs:record", "depends_on": ["a"]},
    ]})
    metrics = Metrics(tf.runtime)
    empty = Scrape(metrics)
    assert empty.labelled("tideflow_runs", "state") == {s.value: 0 for s in RunState}
    assert empty.labelled("tideflow_tasks", "state") == {s.value: 0 for s in TaskState}
    assert empty(f"{LATENCY}_count") == 0
    assert empty("tideflow_database_up") == 1 and empty("tideflow_broker_up") == 1

    run_id = tf.start_run("m")
    wait_run(tf, run_id, "succeeded")
    got = Scrape(metrics)
    assert got("tideflow_runs", state="succeeded") == 1 and got("tideflow_runs", state="running") == 0
    assert got("tideflow_tasks", state="succeeded") == 3
    assert got.labelled("tideflow_dispatches_total", "kind") == {"first": 3, "retry": 1, "republish": 0}
    assert got("tideflow_orphan_republishes_total") == 0
    assert got("tideflow_lease_expiries_total") == 0
    assert attempt_count(tf.runtime) == 4
    assert got(f"{LATENCY}_count") == 4 == got(f"{LATENCY}_bucket", le="+Inf")
    # the retry became ready when its delay ended, not when it was published 3 s earlier
    with tf.runtime.db.read() as s:
        a = next(t for t in repo.run_tasks(s, run_id) if t.name == "a")
        waits = {row.attempt: row.wait_seconds for row in repo.attempts(s, [a.id])}
    assert a.ready_at is not None and waits[2] is not None and 0 <= waits[2] < 3
    assert got(f"{LATENCY}_sum") == pytest.approx(sum(
        w for w in _all_waits(tf.runtime) if w is not None), abs=1e-6)

    run2 = tf.start_run("m")
    wait_run(tf, run2, "succeeded")
    again = Scrape(metrics)  # only the new rows were added
    assert again.labelled("tideflow_dispatches_total", "kind") == {"first": 6, "retry": 2, "republish": 0}
    assert again(f"{LATENCY}_count") == 8
    fresh = Scrape(Metrics(tf.runtime))  # as another process would: the whole history, once
    for name, label in (("tideflow_dispatches_total", "kind"), ("tideflow_tasks", "state"),
                        (f"{LATENCY}_bucket", "le")):
        assert fresh.labelled(name, label) == again.labelled(name, label)
    assert fresh(f"{LATENCY}_sum") == pytest.approx(again(f"{LATENCY}_sum"))
    tf.close()


def _all_waits(rt: Runtime) -> list[float | None]:
    with rt.db.read() as s:
        return list(s.execute(text("SELECT wait_seconds FROM task_attempts")).scalars())


# -- faults --------------------------------------------------------------------------------------------------


class TestFaults:
    """On PostgreSQL, with real worker processes."""

    @pytest.fixture
    def cluster_db_url(self, pg_url: str) -> str:
        return pg_url

    def test_lost_message_is_republished_and_counted(self, cluster, broker):
        _lost_message_is_republished_and_counted(cluster, broker)

    def test_worker_killed_mid_task_counts_one_lease_expiry(self, cluster):
        _worker_killed_mid_task_counts_one_lease_expiry(cluster)

    @pytest.mark.cluster_env(TIDEFLOW_MISSING_ROW_DEADLINE_SECONDS="3")
    def test_missing_row_retries_are_counted(self, cluster):
        _missing_row_retries_are_counted(cluster)

    @pytest.mark.cluster_env(TIDEFLOW_MISSING_ROW_DEADLINE_SECONDS="3")
    def test_a_failure_to_count_does_not_stop_the_missing_row_retry(self, cluster, pg_url):
        _a_failure_to_count_does_not_stop_the_missing_row_retry(cluster, pg_url)


def _lost_message_is_republished_and_counted(cluster: Any, broker: Any) -> None:
    """The broker loses the run's only message; the reconciler re-publishes it; the re-publish counter (and
    the dispatch counter's ``republish`` kind) move, and the queue depth shows the message waiting."""
    tf = client_for(cluster)
    tf.register({"name": "orphan", "tasks": [
        {"name": "t0", "type": "python", "function": "tests.support.jobs:record"}]})
    metrics = Metrics(tf.runtime)
    run_id = tf.start_run("orphan")
    assert Scrape(metrics)("tideflow_queue_depth", queue="tideflow.default") == 1
    broker.delete_queues()  # lost, as FLUSHALL would
    before = Scrape(metrics)
    assert before("tideflow_queue_depth", queue="tideflow.default") == 0
    assert before("tideflow_orphan_republishes_total") == 0
    cluster.start_worker("master", queues=("tideflow.master",), concurrency=1)  # runs the reconciler
    cluster.start_beat()

    def republish_counted() -> Scrape | None:
        scrape = Scrape(metrics)
        return scrape if scrape("tideflow_orphan_republishes_total") >= 1 else None

    got = wait_until(republish_counted, timeout=30, message="the reconciler's re-publish should be counted")
    assert got("tideflow_dispatches_total", kind="republish") == got("tideflow_orphan_republishes_total")
    assert got("tideflow_dispatches_total", kind="first") == 1
    assert got("tideflow_queue_depth", queue="tideflow.default") >= 1  # no worker takes the default queue yet
    cluster.start_worker("w1", queues=("tideflow.default",))
    wait_run(tf, run_id, "succeeded")
    done = Scrape(metrics)
    republished = [e for e in history(tf, run_id) if e["from"] == "submitted" and e["to"] == "submitted"]
    assert done("tideflow_orphan_republishes_total") == len(republished) >= 1
    assert execs(cluster, run_id, "t0") == 1
    # the re-publishes did not reset readiness: the wait runs from the first submit
    with tf.runtime.db.read() as s:
        (task,) = repo.run_tasks(s, run_id)
        submits = [e.created_at for e in repo.run_events(s, run_id) if e.to_state == "submitted"]
        (attempt,) = repo.attempts(s, [task.id])
    assert task.ready_at == submits[0] < submits[-1]
    assert attempt.wait_seconds == pytest.approx((attempt.started_at - submits[0]).total_seconds())
    assert done(f"{LATENCY}_count") == 1 and done(f"{LATENCY}_sum") == pytest.approx(attempt.wait_seconds)
    tf.close()


def _worker_killed_mid_task_counts_one_lease_expiry(cluster: Any) -> None:
    tf = client_for(cluster)
    tf.register({"name": "crash", "tasks": [
        {"name": "slow", "type": "python", "function": "tests.support.jobs:sleep_on_first_attempt",
         "args": {"seconds": 120}, "retries": 1}]})
    w1 = cluster.start_worker("w1", concurrency=1)
    cluster.start_beat()
    metrics = Metrics(tf.runtime)
    run_id = tf.start_run("crash")
    wait_until(lambda: execs(cluster, run_id, "slow") == 1, timeout=30)
    running = Scrape(metrics)
    assert running("tideflow_tasks", state="running") == 1
    assert running("tideflow_lease_expiries_total") == 0
    w1.kill()
    cluster.start_worker("w2", concurrency=1)
    wait_run(tf, run_id, "succeeded")
    got = Scrape(metrics)
    assert got("tideflow_lease_expiries_total") == 1
    assert got.labelled("tideflow_dispatches_total", "kind") == {"first": 1, "retry": 1, "republish": 0}
    assert got(f"{LATENCY}_count") == attempt_count(tf.runtime) == 2
    assert [a["outcome"] for a in tf.run(run_id)["tasks"][0]["attempts"]] == ["lost", "succeeded"]
    tf.close()


def _missing_row_retries_are_counted(cluster: Any) -> None:
    w1 = cluster.start_worker("w1")
    tf = client_for(cluster)
    metrics = Metrics(tf.runtime)
    assert Scrape(metrics)("tideflow_missing_row_retries_total") == 0
    tf.runtime.dispatcher.execute([ExecuteMessage(987654, 1, "tideflow.default", 5)])
    wait_until(lambda: "task run 987654 still not visible" in w1.log(), timeout=30)
    retries = w1.log().count("task run 987654 not visible yet")
    assert retries >= 3
    assert Scrape(metrics)("tideflow_missing_row_retries_total") == retries
    tf.close()


def _a_failure_to_count_does_not_stop_the_missing_row_retry(cluster: Any, pg_url: str) -> None:
    with psycopg.connect(psycopg_conninfo(pg_url), autocommit=True) as conn:
        conn.execute("DROP TABLE counters")
    w1 = cluster.start_worker("w1")
    tf = client_for(cluster)
    tf.runtime.dispatcher.execute([ExecuteMessage(987654, 1, "tideflow.default", 5)])
    wait_until(lambda: "task run 987654 still not visible" in w1.log(), timeout=30,
               message="the message should be retried until its deadline")
    assert w1.log().count("task run 987654 not visible yet") >= 3
    assert w1.log().count("could not count a missing-row retry") >= 3
    tf.close()


# -- queue depth, outages ------------------------------------------------------------------------------------


def test_queue_depth_of_a_queue_named_by_a_workflow(cluster, broker):
    """No worker at all: the messages wait in the task's own queue, on two priority sub-queues."""
    tf = client_for(cluster)
    queue = f"tf-metrics-{uuid.uuid4().hex[:6]}"
    tf.register({"name": "q", "tasks": [
        {"name": "t", "type": "python", "function": "tests.support.jobs:record", "queue": queue}]})
    metrics = Metrics(tf.runtime)
    assert Scrape(metrics).labelled("tideflow_queue_depth", "queue") == {
        queue: 0, "tideflow.default": 0, "tideflow.master": 0}
    tf.start_run("q", priority=1)
    tf.start_run("q", priority=8)
    got = Scrape(metrics)
    assert got.labelled("tideflow_queue_depth", "queue") == {queue: 2, "tideflow.default": 0, "tideflow.master": 0}
    # two priority sub-queues (Tideflow priority 1 and 8 are Redis priorities 8 and 1): the depth sums them
    keys = [k[len(broker.key_prefix):] for k in broker.keys()]  # noqa: SIM118 - not a dict
    assert sorted(k for k in keys if k.startswith(queue)) == [f"{queue}:1", f"{queue}:8"]
    assert got("tideflow_broker_up") == 1
    tf.close()


def test_broker_outage_leaves_out_queue_depths_and_answers(db_url):
    rt = in_process(db_url)  # its broker URL points at a closed port
    with rt.db.transaction() as s:
        control.register_workflow(s, {"name": "b", "tasks": [
            {"name": "t", "type": "python", "function": "tests.support.jobs:record"}]})
        master.start_run(s, rt, "b")
    t0 = time.monotonic()
    got = Scrape(Metrics(replace(rt, dispatcher=CeleryDispatcher(create_app(rt.settings)))))
    assert time.monotonic() - t0 < 10
    assert got("tideflow_broker_up") == 0
    assert got.labelled("tideflow_queue_depth", "queue") == {}
    assert got("tideflow_database_up") == 1 and got("tideflow_tasks", state="submitted") == 1
    # the in-process dispatcher has no broker: it tells no depth either
    assert Scrape(Metrics(rt)).labelled("tideflow_queue_depth", "queue") == {}
    rt.close()


@contextlib.contextmanager
def database_refusing_connections(postgres: Any, pg_url: str) -> Iterator[None]:
    dbname = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(psycopg_conninfo(postgres.maintenance_url), autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS false')  # type: ignore[arg-type]
        terminate_backends(postgres.maintenance_url, dbname)
        try:
            yield
        finally:
            conn.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS true')  # type: ignore[arg-type]


def test_database_outage_reports_down_and_the_last_values(postgres, pg_url):
    rt = in_process(pg_url)
    with rt.db.transaction() as s:
        control.register_workflow(s, {"name": "d", "tasks": [
            {"name": "t", "type": "python", "function": "tests.support.jobs:record"}]})
    with rt.db.transaction() as s:
        master.start_run(s, rt, "d")
    metrics = Metrics(rt)
    up = Scrape(metrics)
    assert up("tideflow_database_up") == 1 and up("tideflow_runs", state="running") == 1
    with database_refusing_connections(postgres, pg_url):
        down = Scrape(metrics)  # must not raise
        assert down("tideflow_database_up") == 0
        assert down("tideflow_runs", state="running") == 1
        assert down("tideflow_dispatches_total", kind="first") == 1
    run_messages(rt)
    back = Scrape(metrics)
    assert back("tideflow_database_up") == 1
    assert back("tideflow_runs", state="succeeded") == 1 and back("tideflow_runs", state="running") == 0
    assert back("tideflow_dispatches_total", kind="first") == 1  # counted once across the outage
    assert back(f"{LATENCY}_count") == 1
    rt.close()


# -- in-process: lease expiry without retries, out-of-order commits, bucket edges ------------------------


def _claim_with_expired_lease(rt: Runtime, task_run_id: int, attempt: int) -> None:
    now = utcnow()
    with rt.db.transaction() as s:
        task = repo.claim_task(s, task_run_id, attempt, actor="test", reason="claimed", now=now, worker="gone",
                               lease_token=str(uuid.uuid4()), lease_expires_at=after(-1, now), started_at=now)
        assert task is not None
        repo.insert_attempt(s, task, attempt=attempt, worker="gone", pid=0, now=now)


def test_lease_expiry_that_fails_its_task_counts_and_other_failures_do_not(db_url):
    rt = in_process(db_url)
    d: RecordingDispatcher = rt.dispatcher  # type: ignore[assignment]
    fail = {"name": "t", "type": "python", "function": "tests.support.jobs:fail_times", "args": {"times": 9},
            "on_lost": "fail"}
    with rt.db.transaction() as s:
        control.register_workflow(s, {"name": "one", "tasks": [fail]})
        control.register_workflow(s, {"name": "parent", "tasks": [
            {"name": "sub", "type": "subworkflow", "workflow": "one"}]})
    metrics = Metrics(rt)
    # a plain failure (no retries) and a child run failing its parent's subworkflow task: not lease expiries
    with rt.db.transaction() as s:
        master.start_run(s, rt, "one")
        master.start_run(s, rt, "parent")
    run_messages(rt)
    assert reconcile_once(rt).lost_attempts == 0
    plain = Scrape(metrics)
    assert plain("tideflow_tasks", state="failed") == 3
    assert plain("tideflow_lease_expiries_total") == 0
    # an attempt whose worker vanished, not to be retried (on_lost: fail): running -> failed by the reconciler
    with rt.db.transaction() as s:
        run_id = master.start_run(s, rt, "one")
    (message,) = d.executed
    d.executed.clear()
    _claim_with_expired_lease(rt, message.task_run_id, message.attempt)
    assert reconcile_once(rt).lost_attempts == 1
    got = Scrape(metrics)
    assert got("tideflow_lease_expiries_total") == 1
    assert got("tideflow_dispatches_total", kind="retry") == 0
    with rt.db.read() as s:
        assert [t.state for t in repo.run_tasks(s, run_id)] == ["failed"]
    rt.close()


def test_rows_committed_out_of_id_order_are_counted_once(pg_url):
    """Ids are handed out before commit: a scrape can see event (and attempt) N+1 while N's transaction is
    still open. N is counted when it commits, once; a rolled-back transaction's ids are given up."""
    rt = in_process(pg_url)
    d: RecordingDispatcher = rt.dispatcher  # type: ignore[assignment]
    with rt.db.transaction() as s:
        control.register_workflow(s, {"name": "o", "tasks": [
            {"name": "t", "type": "python", "function": "tests.support.jobs:record"}]})
    metrics = Metrics(rt, gap_timeout=1.0)
    with rt.db.transaction() as slow:
        master.start_run(slow, rt, "o")  # takes the lower event ids; commits after the scrape below
        with rt.db.transaction() as s:
            master.start_run(s, rt, "o")
        assert Scrape(metrics)("tideflow_dispatches_total", kind="first") == 1
        assert metrics.snapshot.db.events_cursor.gaps
    assert Scrape(metrics)("tideflow_dispatches_total", kind="first") == 2
    assert metrics.snapshot.db.events_cursor.gaps == ()
    assert Scrape(metrics)("tideflow_dispatches_total", kind="first") == 2

    # attempts: claim the first message in a transaction that stays open while the second is claimed
    first, second = d.executed
    d.executed.clear()
    now = utcnow()
    with rt.db.transaction() as slow:
        task = repo.claim_task(slow, first.task_run_id, first.attempt, actor="test", reason="claimed", now=now,
                               lease_token="x", lease_expires_at=after(60, now), started_at=now, worker="test")
        assert task is not None
        repo.insert_attempt(slow, task, attempt=first.attempt, worker="test", pid=0, now=now)
        worker.execute(rt, second.task_run_id, second.attempt)
        assert Scrape(metrics)(f"{LATENCY}_count") == 1
    assert Scrape(metrics)(f"{LATENCY}_count") == 2

    # a rolled-back transaction leaves a gap that never fills: given up after the gap timeout
    with contextlib.suppress(RuntimeError), rt.db.transaction() as doomed:
        master.start_run(doomed, rt, "o")
        with rt.db.transaction() as s:
            master.start_run(s, rt, "o")
        raise RuntimeError("roll back")
    got = Scrape(metrics)
    assert got("tideflow_dispatches_total", kind="first") == 3
    assert metrics.snapshot.db.events_cursor.gaps

    def gaps_given_up() -> bool:
        Scrape(metrics)
        return metrics.snapshot.db.events_cursor.gaps == ()

    wait_until(gaps_given_up, timeout=10, message="the rolled-back ids should be given up")
    assert Scrape(metrics)("tideflow_dispatches_total", kind="first") == 3
    rt.close()


def test_latency_buckets_include_their_upper_bound(db_url):
    """An attempt that waited exactly a bucket's bound is in that bucket (``le``), both when the SQL
    aggregate counts it and when it arrives late."""
    rt = in_process(db_url)
    with rt.db.transaction() as s:
        control.register_workflow(s, {"name": "h", "tasks": [
            {"name": "t", "type": "python", "function": "tests.support.jobs:record"}]})
        run_id = master.start_run(s, rt, "h")
        task_id = repo.run_tasks(s, run_id)[0].id
    waits = [0.0, LATENCY_BUCKETS[0], LATENCY_BUCKETS[0] + 1e-6, 1.0, LATENCY_BUCKETS[-1],
             LATENCY_BUCKETS[-1] + 1, None]
    with rt.db.transaction() as s:
        s.execute(insert(TaskAttempt), [
            {"task_run_id": task_id, "attempt": 100 + i, "outcome": "lost", "started_at": utcnow(), "wait_seconds": w}
            for i, w in enumerate(waits)])
    got = Scrape(Metrics(rt))
    assert got(f"{LATENCY}_count") == 6  # the attempt without a recorded wait is not an observation
    assert got(f"{LATENCY}_bucket", le="0.01") == 2
    assert got(f"{LATENCY}_bucket", le="1.0") == 4
    assert got(f"{LATENCY}_bucket", le="3600.0") == 5
    assert got(f"{LATENCY}_bucket", le="+Inf") == 6
    # the same rows through the late path (ids the cursor had found missing)
    late = Metrics(rt)
    late.snapshot = Snapshot(db=DbCounts(attempts_cursor=IdCursor(position=10**9, gaps=((1, 10**6, 1e18),))))
    got_late = Scrape(late)
    for le in ("0.01", "1.0", "3600.0", "+Inf"):
        assert got_late(f"{LATENCY}_bucket", le=le) == got(f"{LATENCY}_bucket", le=le)
    assert got_late(f"{LATENCY}_sum") == pytest.approx(got(f"{LATENCY}_sum"))
    rt.close()


# -- code runs: runs by kind, timers, signals, step latency; and promtool --------------------------------------


class CodeRuns:
    """A code-workflow runtime whose messages are delivered in-process (the numbers come from the database)."""

    def __init__(self, db_url: str) -> None:
        from app.client import Tideflow
        from app.config import load_settings
        from app.testing import StubDispatcher

        self.stub = StubDispatcher()
        self.rt = Runtime.create(load_settings(database_url=db_url, workflow_modules="tests.support.codeflows"),
                                 self.stub)
        self.tf = Tideflow(self.rt)

    def start(self, workflow: str, **params: Any) -> int:
        run_id = self.tf.start_run(workflow, params)
        self.stub.drain(self.rt)
        return run_id

    def overdue(self, run_id: int, seconds: float) -> None:
        """Make the run's pending timer due ``seconds`` ago."""
        with self.rt.db.transaction() as s:
            s.execute(text("UPDATE task_runs SET due_at = :due WHERE run_id = :run AND type = 'timer' "
                           "AND state = 'running'"), {"due": after(-seconds), "run": run_id})

    def reconcile(self) -> None:
        reconcile_once(self.rt)
        self.stub.drain(self.rt)


@pytest.fixture
def code_runs(db_url: str) -> Iterator[CodeRuns]:
    c = CodeRuns(db_url)
    yield c
    c.tf.close()


def test_code_runs_timers_signals_and_step_latency(code_runs: CodeRuns) -> None:
    c = code_runs
    metrics = Metrics(c.rt)
    empty = Scrape(metrics)
    for kind in ("dag", "code"):  # every kind x state, blocked included, 0 when none
        assert {dict(lbl)["state"]: v for (n, lbl), v in empty.samples.items() if n == "tideflow_runs_by_kind"
                and dict(lbl)["kind"] == kind} == {s.value: 0 for s in RunState}
    assert empty("tideflow_timers_pending") == 0 and empty("tideflow_timers_overdue_seconds") == 0
    assert empty("tideflow_signals_received_total") == 0 == empty("tideflow_signals_delivered_total")
    assert empty("tideflow_workflow_step_latency_seconds_count", kind="timer") == 0

    sleeper = c.start("sleeper", seconds=3600)
    waiting = Scrape(metrics)
    assert waiting("tideflow_runs_by_kind", kind="code", state="running") == 1
    assert waiting("tideflow_timers_pending") == 1 and waiting("tideflow_timers_overdue_seconds") == 0

    c.overdue(sleeper, 90)  # as if the reconciler had been down for 90 s past the due time
    late = Scrape(metrics)
    assert late("tideflow_timers_pending") == 1
    assert 90 <= late("tideflow_timers_overdue_seconds") < 150

    c.reconcile()  # fires it, 90 s late
    assert c.tf.run(sleeper)["state"] == "succeeded"
    fired = Scrape(metrics)
    assert fired("tideflow_timers_pending") == 0 and fired("tideflow_timers_overdue_seconds") == 0
    assert fired("tideflow_runs_by_kind", kind="code", state="succeeded") == 1
    assert fired("tideflow_runs_by_kind", kind="code", state="running") == 0
    assert fired("tideflow_workflow_step_latency_seconds_count", kind="timer") == 1
    assert 90 <= fired("tideflow_workflow_step_latency_seconds_sum", kind="timer") < 150
    assert fired("tideflow_workflow_step_latency_seconds_bucket", kind="timer", le="60.0") == 0
    assert fired("tideflow_workflow_step_latency_seconds_bucket", kind="timer", le="300.0") == 1

    # signals: one sent to a run that is not waiting yet (kept), two to a run that waits (delivered)
    kept = c.start("late_approval", seconds=3600)
    c.tf.signal(kept, "approve", {"by": "ann"})
    approval = c.start("approval")
    assert Scrape(metrics)("tideflow_workflow_step_latency_seconds_count", kind="advance") == 0  # first passes
    c.tf.signal(approval, "approve", 1)  # its wait ends now; the advance that acts on it comes 0.5 s later
    time.sleep(0.5)
    c.stub.drain(c.rt)  # the replay makes the next durable call (the second wait)
    c.tf.signal(approval, "approve", 2)
    c.stub.drain(c.rt)  # the replay returns: no new step, nothing observed
    assert c.tf.run(approval)["state"] == "succeeded"
    sig = Scrape(metrics)
    assert sig("tideflow_workflow_step_latency_seconds_count", kind="advance") == 1
    assert 0.5 <= sig("tideflow_workflow_step_latency_seconds_sum", kind="advance") < 5
    assert sig("tideflow_workflow_step_latency_seconds_bucket", kind="advance", le="0.25") == 0
    assert sig("tideflow_workflow_step_latency_seconds_bucket", kind="advance", le="5.0") == 1
    fresh = Scrape(Metrics(c.rt))  # another process counts the same history once
    step_series = {k: v for k, v in sig.samples.items() if k[0].startswith("tideflow_workflow_step_latency")}
    assert {k: fresh.samples[k] for k in step_series} == step_series
    assert sig("tideflow_signals_received_total") == 3 and sig("tideflow_signals_delivered_total") == 2
    assert sig("tideflow_timers_pending") == 1  # late_approval's sleep
    assert sig("tideflow_runs_by_kind", kind="code", state="succeeded") == 2
    assert sig("tideflow_runs_by_kind", kind="code", state="running") == 1
    assert sig("tideflow_runs", state="running") == 1  # the totals by state are unchanged


def promtool() -> str:
    """promtool on the PATH, or the one scripts/test put beside the venv's python (``ensure_promtool``)."""
    beside = Path(sys.executable).parent / "promtool"
    path = shutil.which("promtool") or (str(beside) if beside.exists() else None)
    assert path, "promtool is missing: apt-get install prometheus (or run python3 scripts/test, which fetches it)"
    return path


def test_promtool_checks_the_exposition(code_runs: CodeRuns) -> None:
    """``promtool check metrics`` (the exposition parser and linter of Prometheus itself) accepts a scrape with
    every family present and non-zero: runs of both kinds, a fired timer and a pending one, signals."""
    c = code_runs
    c.tf.register({"name": "m", "tasks": [{"name": "a", "type": "shell", "command": "echo a"}]})
    c.tf.start_run("m")
    fired = c.start("sleeper", seconds=3600)
    c.overdue(fired, 2)
    c.reconcile()
    pending = c.start("late_approval", seconds=3600)
    c.tf.signal(pending, "approve", {"by": "ann"})
    body, _ = Metrics(c.rt).render()
    text_ = body.decode()
    for family in ("tideflow_runs_by_kind", "tideflow_timers_pending", "tideflow_timers_overdue_seconds",
                   "tideflow_signals_received_total", "tideflow_signals_delivered_total",
                   "tideflow_workflow_step_latency_seconds_bucket", "tideflow_task_start_latency_seconds_bucket",
                   "tideflow_runs{", "tideflow_tasks{", "tideflow_dispatches_total", "tideflow_queue_depth"):
        assert f"\n{family}" in text_, f"{family} missing:\n{text_}"
    checked = subprocess.run([promtool(), "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert checked.returncode == 0, (checked.stdout.decode(), checked.stderr.decode(), text_)
    assert not checked.stdout.strip() and not checked.stderr.strip(), (checked.stdout, checked.stderr)


def test_step_rows_with_an_id_gap_are_looked_up_again(pg_url: str) -> None:
    """A task_runs id handed out but not visible (here: consumed and never used, as by a rolled-back start) is
    kept as a gap and looked up again at the next scrape; the advance latencies are counted once."""
    c = CodeRuns(pg_url)
    try:
        metrics = Metrics(c.rt)
        with c.rt.db.transaction() as s:
            s.execute(text("SELECT nextval(pg_get_serial_sequence('task_runs', 'id'))"))
        approval = c.start("approval")
        c.tf.signal(approval, "approve", 1)
        c.stub.drain(c.rt)
        first = Scrape(metrics)
        assert metrics.snapshot.db.steps_cursor.gaps, metrics.snapshot.db.steps_cursor
        second = Scrape(metrics)  # the gap is looked up again (nothing there), nothing counted twice
        for scrape in (first, second):
            assert scrape("tideflow_workflow_step_latency_seconds_count", kind="advance") == 1
    finally:
        c.tf.close()
