"""Run priority reaches the broker: with a backlog waiting in Redis, an urgent run's task is taken before the
low-priority ones that were queued earlier."""

from __future__ import annotations

import pytest

from tests.support.harness import client_for, wait_run
from tests.support.jobs import read_ledger

BACKLOG = 12


@pytest.fixture
def cluster_db_url(pg_url: str) -> str:
    return pg_url


def test_urgent_run_jumps_the_queue(cluster, broker):
    tf = client_for(cluster)
    tf.register({"name": "one", "tasks": [{"name": "only", "type": "python", "function": "tests.support.jobs:record"}]})
    # no worker yet: every message waits in Redis
    low = [tf.start_run("one", priority=0) for _ in range(BACKLOG)]
    urgent = tf.start_run("one", priority=9)
    assert tf.run(urgent)["tasks"][0]["priority"] == 9 and tf.run(low[0])["tasks"][0]["priority"] == 0
    client = broker.client()
    keys = broker.keys()
    try:
        queued = {key: client.llen(key) for key in keys if client.type(key) == "list"}
    finally:
        client.close()
    assert sum(queued.values()) == BACKLOG + 1, queued
    assert len([n for n in queued.values() if n]) == 2, f"expected one list per priority: {queued}"

    cluster.start_worker("w1", concurrency=1)
    for run_id in [*low, urgent]:
        wait_run(tf, run_id, "succeeded", timeout=60)

    order = [e["run"] for e in read_ledger(cluster.ledger) if e["event"] == "exec"]
    assert sorted(order) == sorted([*low, urgent])
    assert urgent in order[:2], f"urgent run {urgent} executed at position {order.index(urgent) + 1}: {order}"
    tf.close()
