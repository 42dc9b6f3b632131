"""Limits with real PostgreSQL, Redis and ``celery worker`` processes: a pool's slots are never exceeded (the
attempts ledger, sampled at every instant) while workers are killed and messages lost."""

from __future__ import annotations

import pytest

from app.db import repository as repo
from tests.support.harness import client_for, max_overlap, pool_attempts, wait_run
from tests.support.wait import wait_until


@pytest.fixture
def cluster_db_url(pg_url):
    return pg_url


@pytest.mark.slow
def test_pool_slots_are_never_exceeded_while_workers_die_and_messages_are_lost(cluster, broker):
    tf = client_for(cluster)
    tf.set_pool("db", 2)
    tf.register({"name": "pooled", "tasks": [
        {"name": f"t{i}", "type": "python", "function": "tests.support.jobs:sleep", "args": {"seconds": 1.5},
         "pool": "db"} for i in range(8)]})
    cluster.start_beat()
    workers = {n: cluster.start_worker(n, concurrency=2) for n in ("w1", "w2")}  # 4 processes for 2 slots
    run_id = tf.start_run("pooled")

    def two_running() -> dict | None:
        run = tf.run(run_id)
        running = [t for t in run["tasks"] if t["state"] == "running"]
        waiting = {t["waiting_for"] for t in run["tasks"] if t["state"] == "submitted"}
        return run if len(running) == 2 and waiting == {"pool db: 2/2 in use"} else None

    run = wait_until(two_running, timeout=60, message="two tasks should run and the rest wait for the pool")
    # kill a worker holding a slot: its attempt keeps the slot until the reconciler declares its lease lost
    pid = int(next(t["worker"] for t in run["tasks"] if t["state"] == "running").rsplit(":", 1)[1])
    victim = next(w for w in workers.values() if pid in w.children())
    victim.kill()
    broker.delete_queues()  # and every message in the broker is lost
    cluster.start_worker("w3", concurrency=2)

    run = wait_run(tf, run_id, "succeeded", timeout=180)
    outcomes = [a["outcome"] for t in run["tasks"] for a in t["attempts"]]
    assert outcomes.count("succeeded") == 8 and "lost" in outcomes
    assert max_overlap(pool_attempts(tf, "db")) == 2  # used both slots, never more
    with tf.runtime.db.read() as s:
        assert repo.pool_usage(s) == {}
    tf.close()


def _starts_in_any_window(starts: list, seconds: float) -> int:
    """The most of these start times within any half-open window of ``seconds``."""
    times = sorted(starts)
    most, lo = 0, 0
    for hi, t in enumerate(times):
        while (t - times[lo]).total_seconds() >= seconds:
            lo += 1
        most = max(most, hi - lo + 1)
    return most


@pytest.mark.slow
def test_rate_limit_max_active_runs_and_concurrency_keys_hold_with_real_workers(cluster, broker):
    tf = client_for(cluster)
    tf.register({"name": "rated", "tasks": [
        {"name": "call", "type": "python", "function": "tests.support.jobs:record", "rate_limit": "3/s"}]})
    tf.register({"name": "serial", "params": {"customer": ""}, "max_active_runs": 2,
                 "concurrency": {"key": "{{ params.customer }}", "limit": 1}, "tasks": [
                     {"name": "work", "type": "python", "function": "tests.support.jobs:sleep",
                      "args": {"seconds": 0.5}}]})
    cluster.start_beat()
    cluster.start_worker("w1", concurrency=2)
    cluster.start_worker("w2", concurrency=2)
    rated = [tf.start_run("rated") for _ in range(10)]
    serial = [tf.start_run("serial", {"customer": c}, priority=p)
              for c, p in (("a", 5), ("a", 5), ("b", 5), ("c", 1), ("c", 9), ("a", 5))]
    wait_until(lambda: any(tf.run(r)["state"] == "queued" for r in serial), timeout=30)
    broker.delete_queues()  # every message lost on the way
    for r in rated + serial:
        wait_run(tf, r, "succeeded", timeout=120)

    with tf.runtime.db.read() as s:
        calls = [t.id for r in rated for t in repo.run_tasks(s, r)]
        starts = [a.started_at for a in repo.attempts(s, calls)]
        runs = {r: [e for e in repo.run_events(s, r) if e.task_run_id is None] for r in serial}
    assert len(starts) >= 10 and _starts_in_any_window(starts, 1.0) <= 3  # at most 3 starts in any second
    # each run's interval of holding a place: from its move to running until it finished
    spans = {r: (next(e.created_at for e in ev if e.to_state == "running"),
                 next(e.created_at for e in ev if e.to_state == "succeeded")) for r, ev in runs.items()}
    assert max_overlap(list(spans.values())) <= 2  # max_active_runs
    customers = ["a", "a", "b", "c", "c", "a"]
    for c in "abc":
        assert max_overlap([spans[r] for r, k in zip(serial, customers, strict=True) if k == c]) == 1
    assert any(ev[0].to_state == "queued" for ev in runs.values())
    tf.close()
