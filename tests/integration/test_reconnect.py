"""A pooled connection the server dropped (restart, ``pg_terminate_backend``, a proxy) costs no error and no
round trip per transaction: the first statement of a transaction is retried once on a fresh connection
(``app.db.engine.RetryingSession``), and a connection idle in the pool for longer than
``PING_IF_IDLE_SECONDS`` is pinged at checkout. A statement after the first is never retried (its transaction is
lost: the caller's own retry decides)."""

from __future__ import annotations

import time

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from app.db import engine as engine_mod
from app.db.engine import Database
from tests.support.servers import psycopg_conninfo


def _kill(pg_url: str, pid: int) -> None:
    with psycopg.connect(psycopg_conninfo(pg_url), autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 10
        while conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
            assert time.monotonic() < deadline, "backend did not go away"
            time.sleep(0.05)


def _pid(db: Database) -> int:
    with db.transaction() as s:
        return int(s.execute(text("SELECT pg_backend_pid()")).scalar_one())


@pytest.fixture
def db(pg_url: str):
    database = Database(pg_url, pool_size=1)
    yield database
    database.dispose()


def test_no_ping_per_transaction(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_mod, "PING_IF_IDLE_SECONDS", 60.0)
    pings: list[int] = []
    real = db.engine.dialect.do_ping
    monkeypatch.setattr(db.engine.dialect, "do_ping", lambda c: pings.append(1) or real(c))
    for _ in range(5):
        _pid(db)
    assert pings == []


def test_the_first_statement_on_a_dead_connection_is_retried(db: Database, pg_url: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_mod, "PING_IF_IDLE_SECONDS", 60.0)  # no ping: the retry must do it
    old = _pid(db)
    _kill(pg_url, old)
    with db.transaction() as s:
        new = int(s.execute(text("SELECT pg_backend_pid()")).scalar_one())
        s.execute(text("CREATE TEMP TABLE t (x int)"))
    assert new != old
    _kill(pg_url, new)
    with db.read() as s:
        assert s.execute(text("SELECT 1")).scalar_one() == 1


def test_a_later_statement_is_not_retried(db: Database, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_mod, "PING_IF_IDLE_SECONDS", 60.0)
    with pytest.raises(OperationalError), db.transaction() as s:
        pid = int(s.execute(text("SELECT pg_backend_pid()")).scalar_one())
        _kill(pg_url, pid)
        s.execute(text("SELECT 1"))
    assert _pid(db) != pid  # and the pool recovered


def test_an_idle_connection_is_pinged_at_checkout(db: Database, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_mod, "PING_IF_IDLE_SECONDS", 0.0)
    old = _pid(db)
    _kill(pg_url, old)
    with db.engine.connect() as conn:  # not a RetryingSession: the checkout's ping replaces the dead connection
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != old
