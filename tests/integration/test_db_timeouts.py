"""A hung or locked database cannot hang a request: PostgreSQL's ``statement_timeout`` and ``connect_timeout`` and
SQLite's ``busy_timeout`` come from ``TIDEFLOW_DATABASE_*`` settings (defaults in app/config.py), and a statement
blocked by another connection's lock fails within the timeout with a clear error: in process, from the API (503)
and from the CLI (one line)."""

from __future__ import annotations

import os
import re
import sqlite3
import time
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy.exc import OperationalError

from app.config import load_settings
from app.db.engine import Database, postgres_connect_args
from app.services import views
from tests.support.api import AUTH, make_client
from tests.support.cli import tideflow
from tests.support.servers import psycopg_conninfo


@pytest.fixture
def runs_locked(pg_url: str) -> Iterator[None]:
    """Another connection holds an ACCESS EXCLUSIVE lock on ``workflow_runs`` (as a stuck migration or a hung
    transaction would): every read of the table waits for it."""
    with psycopg.connect(psycopg_conninfo(pg_url)) as conn:
        conn.execute("LOCK TABLE workflow_runs IN ACCESS EXCLUSIVE MODE")
        yield
        conn.rollback()


def test_defaults_and_overrides(monkeypatch):
    settings = load_settings()
    assert settings.database_connect_timeout_seconds == 10 and settings.database_statement_timeout_seconds == 60
    assert postgres_connect_args(settings) == {"connect_timeout": 10, "options": "-c statement_timeout=60000"}
    monkeypatch.setenv("TIDEFLOW_DATABASE_STATEMENT_TIMEOUT_SECONDS", "0")
    monkeypatch.setenv("TIDEFLOW_DATABASE_CONNECT_TIMEOUT_SECONDS", "0.5")
    assert postgres_connect_args(load_settings()) == {"connect_timeout": 2}  # libpq's minimum; no statement limit


def test_a_locked_table_fails_a_statement_within_the_timeout(pg_url, runs_locked):
    db = Database(pg_url, settings=load_settings(database_statement_timeout_seconds=1))
    try:
        started = time.monotonic()
        with pytest.raises(OperationalError) as caught, db.read() as s:
            views.list_runs(s)
        assert time.monotonic() - started < 10
        said = db.explain(caught.value)
        assert said is not None and said.startswith(
            "the database did not answer within 1 s (TIDEFLOW_DATABASE_STATEMENT_TIMEOUT_SECONDS): "), said
        assert "statement timeout" in said
    finally:
        db.dispose()


def test_api_answers_503_when_a_lock_outlasts_the_timeout(pg_url, runs_locked):
    client, tf = make_client(pg_url, database_statement_timeout_seconds=1)
    try:
        started = time.monotonic()
        res = client.get("/api/runs", headers=AUTH)
        assert time.monotonic() - started < 10
        assert res.status_code == 503, res.text
        assert "did not answer within 1 s" in res.json()["message"], res.json()
    finally:
        tf.close()


def test_cli_says_it_in_one_line(pg_url, runs_locked):
    env = {**os.environ, "TIDEFLOW_DATABASE_URL": pg_url, "TIDEFLOW_DATABASE_STATEMENT_TIMEOUT_SECONDS": "1",
           "TIDEFLOW_BROKER_URL": "redis://127.0.0.1:1/0"}
    started = time.monotonic()
    done = tideflow(env, "run", "list", timeout=60)
    assert time.monotonic() - started < 30
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.fullmatch(r"error: the database did not answer within 1 s \(TIDEFLOW_DATABASE_STATEMENT_TIMEOUT_SECONDS\)"
                        r": .*statement timeout.*\n", done.stderr), done.stderr


def test_sqlite_waits_for_a_write_lock_only_as_long_as_its_busy_timeout(sqlite_url):
    db = Database(sqlite_url, settings=load_settings(database_busy_timeout_seconds=0.5))
    with db.read() as s:  # connected once: the file is in WAL mode, as every Tideflow process leaves it
        views.list_runs(s)
    holder = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process writing, and not finishing
    try:
        started = time.monotonic()
        with pytest.raises(OperationalError, match="database is locked") as caught, db.transaction() as s:
            views.list_runs(s)
        assert 0.4 < time.monotonic() - started < 10
        assert db.explain(caught.value) == ("the database file stayed locked by another process for 0.5 s "
                                            "(TIDEFLOW_DATABASE_BUSY_TIMEOUT_SECONDS)")
    finally:
        db.dispose()
        holder.rollback()
        holder.close()


def test_the_template_database_name_is_unique_per_session(pg_template):
    # the pid alone collides when two containers with the same pid share one server
    assert re.fullmatch(rf"tideflow_template_{os.getpid()}_[0-9a-f]{{8}}", pg_template), pg_template
