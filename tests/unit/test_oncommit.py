"""The after-commit hook semantics (SQLite file database; the same hooks are exercised on PostgreSQL by
tests/integration/test_oncommit_pg.py)."""

import pytest
from sqlalchemy import text

from app.db.engine import Database
from app.db.oncommit import on_commit, pending_callbacks


@pytest.fixture()
def db(tmp_path):
    d = Database(f"sqlite:///{tmp_path / 'oc.sqlite3'}")
    with d.transaction() as s:
        s.execute(text("CREATE TABLE t (x INTEGER)"))
    yield d
    d.dispose()


def test_callbacks_run_only_after_commit(db):
    seen = []
    with db.transaction() as s:
        s.execute(text("INSERT INTO t VALUES (1)"))
        on_commit(s, lambda: seen.append("published"))
        assert seen == []
    assert seen == ["published"]


def test_rollback_publishes_nothing(db):
    seen = []
    with pytest.raises(RuntimeError), db.transaction() as s:
        on_commit(s, lambda: seen.append("x"))
        raise RuntimeError("boom")
    assert seen == []


def test_released_savepoint_waits_for_outer_commit_and_outer_rollback_drops_it(db):
    seen = []
    with pytest.raises(RuntimeError), db.transaction() as s:
        with s.begin_nested():
            s.execute(text("INSERT INTO t VALUES (2)"))
            on_commit(s, lambda: seen.append("savepoint"))
        assert seen == []  # released savepoint: not yet
        raise RuntimeError("outer rolls back")
    assert seen == []
    with db.read() as s:  # and the savepoint's row is gone too (real BEGIN on SQLite)
        assert s.execute(text("SELECT count(*) FROM t WHERE x = 2")).scalar() == 0


def test_rolled_back_savepoint_drops_only_its_callbacks(db):
    seen = []
    with db.transaction() as s:
        on_commit(s, lambda: seen.append("outer"))
        sp = s.begin_nested()
        on_commit(s, lambda: seen.append("inner"))
        sp.rollback()
        with s.begin_nested():
            on_commit(s, lambda: seen.append("kept"))
    assert seen == ["outer", "kept"]
    assert pending_callbacks(s) == 0


def test_a_failing_callback_is_not_an_error_for_the_caller(db):
    seen = []

    def broken():
        raise ConnectionError("broker down")

    with db.transaction() as s:
        on_commit(s, broken)
        on_commit(s, lambda: seen.append("next"))
    assert seen == ["next"]


def test_on_commit_outside_transaction_is_refused(db):
    from sqlalchemy.orm import Session

    with Session(db.engine) as s, pytest.raises(RuntimeError):
        on_commit(s, lambda: None)
