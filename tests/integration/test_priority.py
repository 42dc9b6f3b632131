"""Run priority reaches the broker, on Redis and on RabbitMQ alike: with a backlog waiting, an urgent run's task is
taken before the low-priority ones that were queued earlier. On RabbitMQ that needs the queues declared with
``x-max-priority`` (app/broker.py); the RabbitMQ case skips only when there is no RabbitMQ to be had
(tests/support/rabbitmq.py says how to provide one)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from amqp.exceptions import PreconditionFailed
from kombu import Connection

from tests.support.cluster import Cluster
from tests.support.harness import client_for, wait_run
from tests.support.jobs import read_ledger
from tests.support.rabbitmq import delete_queues

BACKLOG = 12


@pytest.fixture
def cluster_db_url(pg_url: str) -> str:
    return pg_url


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def prio_cluster(request: pytest.FixtureRequest, broker_kind: str, pg_url: str, tmp_path: Path) -> Iterator[Cluster]:
    """The ``cluster`` fixture on Redis; on RabbitMQ the same, with queues of the test's own (deleted after)."""
    if broker_kind == "redis":
        yield request.getfixturevalue("cluster")
        return
    url = request.getfixturevalue("rabbitmq").url
    prefix = f"tf-{uuid.uuid4().hex[:8]}"
    queues = {"TIDEFLOW_DEFAULT_QUEUE": f"{prefix}.default", "TIDEFLOW_MASTER_QUEUE": f"{prefix}.master"}
    c = Cluster(pg_url, url, "", tmp_path / "cluster", queues)
    try:
        yield c
    finally:
        try:
            c.stop()
        finally:
            delete_queues(url, list(queues.values()))


def _waiting(cluster: Cluster, broker_kind: str, request: pytest.FixtureRequest) -> list[int]:
    """How many messages wait, per priority list on Redis (only the non-empty ones), or in the one queue on
    RabbitMQ."""
    if broker_kind == "redis":
        broker = request.getfixturevalue("broker")
        client, keys = broker.client(), broker.keys()  # Broker.keys(): the test's namespace, not a dict
        try:
            return [n for key in keys if client.type(key) == "list" and (n := client.llen(key))]
        finally:
            client.close()
    with Connection(cluster.broker_url) as conn:
        return [conn.channel().queue_declare(cluster.env["TIDEFLOW_DEFAULT_QUEUE"], passive=True).message_count]


def test_urgent_run_jumps_the_queue(prio_cluster, broker_kind, request):
    cluster = prio_cluster
    tf = client_for(cluster)
    tf.register({"name": "one", "tasks": [{"name": "only", "type": "python", "function": "tests.support.jobs:record"}]})
    # no worker yet: every message waits in the broker
    low = [tf.start_run("one", priority=0) for _ in range(BACKLOG)]
    urgent = tf.start_run("one", priority=9)
    assert tf.run(urgent)["tasks"][0]["priority"] == 9 and tf.run(low[0])["tasks"][0]["priority"] == 0
    waiting = _waiting(cluster, broker_kind, request)
    assert sum(waiting) == BACKLOG + 1, waiting
    if broker_kind == "redis":
        assert len(waiting) == 2, f"expected one list per priority: {waiting}"
    else:  # the queue was declared with x-max-priority: declaring it without is refused
        with Connection(cluster.broker_url) as conn, pytest.raises(PreconditionFailed, match="x-max-priority"):
            conn.channel().queue_declare(cluster.env["TIDEFLOW_DEFAULT_QUEUE"], durable=True, auto_delete=False)

    queues = (cluster.env.get("TIDEFLOW_DEFAULT_QUEUE", "tideflow.default"),
              cluster.env.get("TIDEFLOW_MASTER_QUEUE", "tideflow.master"))
    cluster.start_worker("w1", queues=queues, concurrency=1)
    for run_id in [*low, urgent]:
        wait_run(tf, run_id, "succeeded", timeout=60)

    order = [e["run"] for e in read_ledger(cluster.ledger) if e["event"] == "exec"]
    assert sorted(order) == sorted([*low, urgent])
    assert urgent in order[:2], f"urgent run {urgent} executed at position {order.index(urgent) + 1}: {order}"
    tf.close()
