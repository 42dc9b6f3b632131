"""``Tideflow.start_run(..., session=...)``: a run started inside the caller's own SQLAlchemy transaction exists,
and is published to the broker, only if that transaction commits (savepoints included)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.orm import Session

from app.db.schema import WorkflowRun
from app.errors import NotFound
from tests.support.harness import client_for, wait_run
from tests.support.jobs import read_ledger

WORKFLOW = {
    "name": "fulfil-order", "params": {"order": 0},
    "tasks": [{"name": "ship", "type": "python", "function": "tests.support.jobs:record",
               "args": {"value": "{{ params.order }}"}}],
}


@pytest.fixture
def cluster_db_url(pg_url: str) -> str:
    return pg_url


@pytest.fixture
def engine(cluster) -> Iterator[Engine]:
    """The application's own engine, with a table of its own next to Tideflow's."""
    eng = create_engine(cluster.database_url)
    with eng.begin() as conn:
        conn.execute(text("CREATE TABLE app_orders (id INTEGER PRIMARY KEY)"))
    try:
        yield eng
    finally:
        eng.dispose()


def _queued(broker) -> dict[str, int]:
    """Messages waiting in the broker namespace, by list key (kombu keeps one Redis list per queue+priority)."""
    client = broker.client()
    keys = broker.keys()
    try:
        return {k: client.llen(k) for k in keys if client.type(k) == "list" and client.llen(k)}
    finally:
        client.close()


def _orders(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return [row[0] for row in conn.execute(text("SELECT id FROM app_orders ORDER BY id"))]


def _run_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(WorkflowRun.__table__)).scalar_one())


def _add_order(session: Session, order_id: int) -> None:
    session.execute(text("INSERT INTO app_orders (id) VALUES (:id)"), {"id": order_id})


def test_run_started_in_the_callers_transaction(cluster, broker, engine):
    tf = client_for(cluster)
    tf.register(WORKFLOW)

    # (b) the caller rolls back: neither its own row nor the run exists, and nothing was published
    with Session(engine) as session:
        session.begin()
        _add_order(session, 1)
        doomed = tf.start_run("fulfil-order", {"order": 1}, session=session)
        runs = WorkflowRun.__table__
        assert session.execute(select(runs.c.state).where(runs.c.id == doomed)).scalar_one() == "running"
        assert _queued(broker) == {}, "published before the caller's transaction ended"
        session.rollback()
    assert _orders(engine) == [] and _run_count(engine) == 0
    with pytest.raises(NotFound):
        tf.run(doomed)
    assert _queued(broker) == {}

    # (a) the caller commits: the run exists and its first task is published, only after the commit
    with Session(engine) as session, session.begin():
        _add_order(session, 2)
        run_id = tf.start_run("fulfil-order", {"order": 2}, session=session)
        assert _queued(broker) == {}, "published before the caller's transaction committed"
    assert _orders(engine) == [2] and _run_count(engine) == 1
    queued = _queued(broker)
    assert list(queued.values()) == [1], queued
    (queue_key,) = queued
    assert queue_key.startswith(f"{broker.key_prefix}tideflow.default"), queued

    cluster.start_worker("w1", concurrency=1)
    run = wait_run(tf, run_id, "succeeded", timeout=30)
    assert run["tasks"][0]["result"] == 2
    assert [e["run"] for e in read_ledger(cluster.ledger)] == [run_id]
    assert _queued(broker) == {}
    tf.close()


def test_run_started_in_a_savepoint(cluster, broker, engine):
    tf = client_for(cluster)
    tf.register(WORKFLOW)

    # the savepoint rolls back, the outer transaction commits: the caller's row only; no run, no message
    with Session(engine) as session, session.begin():
        _add_order(session, 1)
        savepoint = session.begin_nested()
        doomed = tf.start_run("fulfil-order", {"order": 1}, session=session)
        savepoint.rollback()
        _add_order(session, 2)
    assert _orders(engine) == [1, 2]
    assert _run_count(engine) == 0
    with pytest.raises(NotFound):
        tf.run(doomed)
    assert _queued(broker) == {}

    # the savepoint is released, then the outer transaction rolls back: no run, no message
    with Session(engine) as session:
        session.begin()
        with session.begin_nested():
            tf.start_run("fulfil-order", {"order": 3}, session=session)
        assert _queued(broker) == {}, "a released savepoint published before the outer commit"
        session.rollback()
    assert _orders(engine) == [1, 2] and _run_count(engine) == 0
    assert _queued(broker) == {}

    # released savepoint, outer commit: the run is published once and runs
    with Session(engine) as session, session.begin():
        with session.begin_nested():
            run_id = tf.start_run("fulfil-order", {"order": 4}, session=session)
        assert _queued(broker) == {}
    assert sum(_queued(broker).values()) == 1
    cluster.start_worker("w1", concurrency=1)
    wait_run(tf, run_id, "succeeded", timeout=30)
    assert [e["run"] for e in read_ledger(cluster.ledger)] == [run_id]
    tf.close()
