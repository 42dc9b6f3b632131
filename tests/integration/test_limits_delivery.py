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
