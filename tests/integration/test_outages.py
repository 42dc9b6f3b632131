"""A broker or database outage delays work, it never drops it. The broker test restarts its own Redis
(every queued message is lost with it); the database test kills every connection of the test's database."""

from __future__ import annotations

import threading
import time
from collections import Counter

import psycopg
import pytest

from tests.support.cluster import Cluster
from tests.support.harness import client_for, live_tasks, wait_run
from tests.support.jobs import read_ledger
from tests.support.servers import RedisServer, psycopg_conninfo
from tests.support.wait import wait_until

CHAIN = {"name": "steady", "tasks": [
    {"name": f"t{i}", "type": "python", "function": "tests.support.jobs:sleep", "args": {"seconds": 0.3},
     "depends_on": [f"t{i - 1}"] if i else []} for i in range(8)]}


@pytest.fixture
def own_redis():
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_cluster(pg_url, own_redis, tmp_path):
    """Worker and beat on PostgreSQL and this test's own Redis (which the test may stop and restart)."""
    cluster = Cluster(pg_url, own_redis.url(0), "", tmp_path / "cluster")
    try:
        cluster.start_worker("w1", concurrency=2)
        cluster.start_beat()
        yield cluster
    finally:
        cluster.stop()


def _ends(cluster: Cluster, run_ids: list[int]) -> Counter:
    return Counter((e["run"], e["task"]) for e in read_ledger(cluster.ledger)
                   if e["event"] == "end" and e["run"] in run_ids)


def test_runs_complete_across_a_redis_restart(redis_cluster, own_redis):
    tf = client_for(redis_cluster)
    tf.register(CHAIN)
    runs = [tf.start_run("steady") for _ in range(3)]
    wait_until(lambda: len(_ends(redis_cluster, runs)) >= 3, timeout=30)
    own_redis.restart()  # every message in the broker is gone; workers and beat reconnect
    for r in runs:
        wait_run(tf, r, "succeeded", timeout=90)
    # nothing lost, and no body ran to completion twice
    assert _ends(redis_cluster, runs) == {(r, f"t{i}"): 1 for r in runs for i in range(8)}
    assert live_tasks(tf) == {}
    tf.close()


@pytest.fixture
def cluster_db_url(pg_url):
    return pg_url


def test_runs_complete_while_database_connections_are_killed(cluster, pg_url):
    cluster.start_worker("w1", concurrency=2)
    cluster.start_beat()
    tf = client_for(cluster)
    tf.register(CHAIN)
    runs = [tf.start_run("steady") for _ in range(3)]
    dbname = pg_url.rsplit("/", 1)[1]
    stop = threading.Event()
    killed: list[int] = []

    def killer() -> None:
        with psycopg.connect(psycopg_conninfo(pg_url), autocommit=True) as conn:
            while not stop.wait(1.5):
                rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                    "WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,)).fetchall()
                killed.append(len(rows))

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        for r in runs:
            wait_run(tf, r, "succeeded", timeout=120)
    finally:
        stop.set()
        thread.join(10)
    assert sum(killed) > 0
    ends = _ends(cluster, runs)
    assert ends == {(r, f"t{i}"): 1 for r in runs for i in range(8)}  # each body completed once
    assert live_tasks(tf) == {}
    tf.close()


def test_starting_a_run_while_the_broker_is_down_succeeds_and_the_run_completes_later(redis_cluster, own_redis):
    """The publish after commit fails (Redis is down): not an error for the caller; the committed run is
    re-published by the reconciler once the broker is back."""
    tf = client_for(redis_cluster)
    tf.register(CHAIN)
    own_redis.stop()
    t0 = time.monotonic()
    run_id = tf.start_run("steady")  # must not raise
    assert time.monotonic() - t0 < 30
    assert tf.run(run_id)["tasks"][0]["state"] == "submitted"
    own_redis.start()
    wait_run(tf, run_id, "succeeded", timeout=120)
    assert _ends(redis_cluster, [run_id]) == {(run_id, f"t{i}"): 1 for i in range(8)}
    tf.close()
