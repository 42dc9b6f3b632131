"""Alembic migrations produce exactly the schema the models declare, on PostgreSQL and SQLite."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from app.db.migrate import current, upgrade
from app.db.schema import metadata


def test_migrations_match_models(db_url):
    # db_url was created by running the migrations (tests/conftest.py uses app.db.migrate.upgrade)
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
            assert diff == [], f"migrations and models differ: {diff}"
            indexes = {ix["name"]: ix for ix in inspect(conn).get_indexes("task_runs")}
        # the reconciler's partial indexes exist and are partial
        for name in ("ix_task_runs_submitted", "ix_task_runs_leases", "ix_task_runs_unhandled"):
            assert name in indexes
            where = indexes[name].get("dialect_options", {})
            assert any("where" in k for k in where), f"{name} is not a partial index: {indexes[name]}"
    finally:
        engine.dispose()


def test_upgrade_is_idempotent_and_recorded(db_url):
    upgrade(db_url)
    assert current(db_url) == "0009"


def test_downgrade_and_upgrade_round_trip(db_url):
    from alembic import command

    from app.db.migrate import alembic_config

    command.downgrade(alembic_config(db_url), "0002")
    assert current(db_url) == "0002"
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            assert "counters" not in inspect(conn).get_table_names()
            assert "ready_at" not in {c["name"] for c in inspect(conn).get_columns("task_runs")}
            indexes = {ix["name"]: ix for ix in inspect(conn).get_indexes("task_runs")}
        # dropping 0003's column kept task_runs' partial indexes (no lossy table rebuild on SQLite)
        for name in ("ix_task_runs_submitted", "ix_task_runs_leases", "ix_task_runs_live"):
            assert any("where" in k for k in indexes[name].get("dialect_options", {})), indexes[name]
    finally:
        engine.dispose()
    command.downgrade(alembic_config(db_url), "0001")
    assert current(db_url) == "0001"
    command.downgrade(alembic_config(db_url), "base")
    assert current(db_url) is None
    upgrade(db_url)
    assert current(db_url) == "0009"


def test_upgrade_snapshots_existing_tasks_definitions_into_their_rows(db_url):
    """0004: a task row created before rows described themselves gets its definition's body, timeout and
    retry policy (from its run's workflow version), so a run in flight across the upgrade keeps working."""
    import json
    from datetime import UTC, datetime

    from alembic import command
    from sqlalchemy import text
    from sqlalchemy.orm import Session

    from app.db.migrate import alembic_config
    from app.db.repository import run_tasks

    command.downgrade(alembic_config(db_url), "0003")
    definition = {"name": "wf", "params": {"p": 1}, "tasks": [
        {"name": "a", "type": "shell", "command": "echo {{ params.p }}", "retries": 2, "retry_delay": 1.5,
         "timeout": 60},
        {"name": "b", "type": "python", "function": "m:f", "args": {"x": "{{ upstream.a }}"}, "depends_on": ["a"],
         "max_lost_attempts": 5, "on_lost": "fail"}]}
    engine = create_engine(db_url)
    now = datetime.now(UTC).replace(tzinfo=None)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO workflows (id, name, version, digest, definition, created_at) "
                              "VALUES (1, 'wf', 1, 'x', :d, :now)"), {"d": json.dumps(definition), "now": now})
            conn.execute(text("INSERT INTO workflow_runs (id, workflow_id, workflow_name, state, params, priority, "
                              "on_failure, created_at, updated_at) VALUES (1, 1, 'wf', 'running', '{}', 5, 'stop', "
                              ":now, :now)"), {"now": now})
            for i, name in ((1, "a"), (2, "b")):
                conn.execute(text("INSERT INTO task_runs (id, run_id, name, type, state, attempt, failures, queue, "
                                  "priority, publish_count, handled, created_at, updated_at) VALUES "
                                  "(:i, 1, :n, 'shell', 'pending', 0, 0, 'q', 5, 0, true, :now, :now)"),
                             {"i": i, "n": name, "now": now})
        upgrade(db_url)
        with Session(engine) as s:
            a, b = run_tasks(s, 1)
        assert a.body.command == "echo {{ params.p }}" and a.timeout == 60
        assert (a.retry.retries, a.retry.retry_delay, a.retry.max_lost_attempts, a.retry.on_lost) == \
            (2, 1.5, 3, "retry")
        assert b.body.function == "m:f" and b.body.inputs == ("a",)
        assert (b.retry.max_lost_attempts, b.retry.on_lost) == (5, "fail")
    finally:
        engine.dispose()
