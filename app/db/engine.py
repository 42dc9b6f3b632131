"""Engines and sessions. One :class:`Database` per process (created after fork in Celery children)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

import app.db.oncommit  # noqa: F401  (installs the on-commit session hooks)
from app.config import Settings, load_settings


def _sqlite_engine(url: str, *, immediate: bool, busy_timeout: float) -> Engine:
    engine = create_engine(url, connect_args={"timeout": busy_timeout, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from the driver's legacy mode (SQLAlchemy's SQLite
        # "serializable isolation / savepoints" recipe) so SAVEPOINTs nest inside a real BEGIN.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        # IMMEDIATE: take the write lock up front, so read-then-write transactions wait (busy_timeout)
        # instead of failing with SQLITE_BUSY when they upgrade.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def postgres_connect_args(settings: Settings) -> dict[str, Any]:
    """psycopg connection arguments bounding how long the database can keep a caller waiting: libpq's
    ``connect_timeout`` (whole seconds; libpq treats less than 2 as 2) and the server's ``statement_timeout`` (a
    statement waiting for a lock counts too), set for the session at connect (the ``options`` startup parameter)."""
    args: dict[str, Any] = {"connect_timeout": max(2, math.ceil(settings.database_connect_timeout_seconds))}
    if settings.database_statement_timeout_seconds > 0:
        args["options"] = f"-c statement_timeout={math.ceil(settings.database_statement_timeout_seconds * 1000)}"
    return args


def _looks_like_schema_error(exc: DBAPIError) -> bool:
    """A missing table or column (PostgreSQL SQLSTATE 42P01 / 42703, SQLite "no such table/column"): only then is
    the schema worth checking (not when the database is down, which :meth:`Database.explain` must not wait on)."""
    if getattr(exc.orig, "sqlstate", None) in ("42P01", "42703"):
        return True
    return "no such table" in str(exc.orig) or "no such column" in str(exc.orig)


class Database:
    """Engine + session factory. ``transaction()`` is the unit of work: commit on success, rollback on
    error, after-commit callbacks (publishes) run once the commit has happened. Its timeouts come from
    ``settings`` (default: the ``TIDEFLOW_DATABASE_*`` environment)."""

    def __init__(self, url: str, *, pool_size: int = 5, settings: Settings | None = None):
        self.url = url
        self.settings = settings or load_settings()
        self.dialect = make_url(url).get_backend_name()
        if self.dialect == "sqlite":
            busy = self.settings.database_busy_timeout_seconds
            self.engine = _sqlite_engine(url, immediate=True, busy_timeout=busy)
            self._read_engine = _sqlite_engine(url, immediate=False, busy_timeout=busy)
        else:
            connect_args = postgres_connect_args(self.settings) if self.dialect == "postgresql" else {}
            own = make_url(url).query.get("options")  # the URL's own ?options=... are kept, ours appended
            if isinstance(own, str) and "options" in connect_args:
                connect_args["options"] = f"{own} {connect_args['options']}"
            self.engine = create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=10,
                                        connect_args=connect_args)
            self._read_engine = self.engine
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(self._read_engine, expire_on_commit=False)

    def explain(self, exc: BaseException) -> str | None:
        """One line for an operator when ``exc`` (a database error) has a known cause: a statement cut by the
        statement timeout, or a schema that is missing or behind (``... run `tideflow db upgrade```). None
        otherwise (the caller reports the error as it is). Never raises."""
        if not isinstance(exc, DBAPIError):
            return None
        if getattr(exc.orig, "sqlstate", None) == "57014":  # PostgreSQL query_canceled: the statement_timeout
            return (f"the database did not answer within {self.settings.database_statement_timeout_seconds:g} s "
                    f"(TIDEFLOW_DATABASE_STATEMENT_TIMEOUT_SECONDS): {' '.join(str(exc.orig).split())}")
        if self.dialect == "sqlite" and "database is locked" in str(exc.orig):
            return (f"the database file stayed locked by another process for "
                    f"{self.settings.database_busy_timeout_seconds:g} s (TIDEFLOW_DATABASE_BUSY_TIMEOUT_SECONDS)")
        if not _looks_like_schema_error(exc):
            return None
        from app.db.migrate import schema_problem

        try:
            return schema_problem(self.engine)
        except Exception:  # noqa: BLE001 - the database cannot tell: the original error stands
            return None

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only unit of work (on SQLite it does not take the write lock)."""
        with self._read_sessions() as session, session.begin():
            yield session
            session.rollback()

    def dispose(self) -> None:
        self.engine.dispose()
        if self._read_engine is not self.engine:
            self._read_engine.dispose()
