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
    assert current(db_url) == "0003"


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
    assert current(db_url) == "0003"
