"""Engines and sessions. One :class:`Database` per process (created after fork in Celery children)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

import app.db.oncommit  # noqa: F401  (installs the on-commit session hooks)
from app.config import Settings, load_settings
from app.db.oncommit import pending_callbacks


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


#: a pooled connection idle for longer than this is pinged at checkout (``SELECT 1``); one used more recently is
#: not, and a dead one is caught by the first statement of the transaction instead (:class:`RetryingSession`)
PING_IF_IDLE_SECONDS = 1.0
_CHECKIN = "tideflow.checkin"


def _ping_when_idle(engine: Engine) -> None:
    """``pool_pre_ping`` only for connections that sat in the pool: under load a connection is checked out again
    within milliseconds, and a ping per transaction was a round trip per transaction (two per task)."""

    @event.listens_for(engine, "connect")
    def _connect(_dbapi_conn: Any, record: Any) -> None:
        record.info[_CHECKIN] = time.monotonic()

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_conn: Any, record: Any) -> None:
        if record is not None:
            record.info[_CHECKIN] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get(_CHECKIN, 0.0) <= PING_IF_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            if engine.dialect.is_disconnect(exc, dbapi_conn, None):  # type: ignore[arg-type]
                raise DisconnectionError(str(exc)) from exc  # the pool replaces it (up to three tries)
            raise


class RetryingSession(Session):
    """A session whose transaction's first statement is retried once, on a fresh connection, when it fails because
    its pooled connection was dead (the server restarted, a backend was terminated, a proxy dropped it): nothing
    can have happened in a transaction whose first statement failed (it never committed), so running it again is
    the same transaction. Later statements are not retried: their transaction is lost and the caller's own retry
    (or the reconciler) takes over, as before. This replaces ``pool_pre_ping``'s round trip per transaction."""

    _tf_first = False

    def _execute_internal(self, statement: Any, params: Any = None, **kw: Any) -> Any:  # execute, scalar(s), get
        if not self._tf_first:
            return super()._execute_internal(statement, params, **kw)
        self._tf_first = False
        return self.retry_first(lambda: super(RetryingSession, self)._execute_internal(statement, params, **kw))

    def flush(self, objects: Any = None) -> None:
        self._tf_first = False
        super().flush(objects)

    def connection(self, *args: Any, **kw: Any) -> Any:
        self._tf_first = False
        return super().connection(*args, **kw)

    def retry_first(self, fn: Any) -> Any:
        try:
            return fn()
        except DBAPIError as exc:
            if not exc.connection_invalidated or pending_callbacks(self):
                raise
            self.rollback()  # a failed first statement: nothing was done in this transaction
            self.begin()
            return fn()

    def first_statement(self) -> bool:
        """True (once) if nothing ran yet in this transaction: the caller runs its statement through
        :meth:`retry_first` (the repository's driver-level statements)."""
        first, self._tf_first = self._tf_first, False
        return first


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
            self.engine = create_engine(url, pool_size=pool_size, max_overflow=10, connect_args=connect_args)
            _ping_when_idle(self.engine)
            self._read_engine = self.engine
        self._sessions = sessionmaker(self.engine, class_=RetryingSession, expire_on_commit=False)
        self._read_sessions = sessionmaker(self._read_engine, class_=RetryingSession, expire_on_commit=False)

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
        with self._sessions() as session:
            session.begin()
            session._tf_first = True
            try:
                yield session
            except BaseException:
                session.rollback()
                raise
            session.commit()

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only unit of work (on SQLite it does not take the write lock)."""
        with self._read_sessions() as session:
            session.begin()
            session._tf_first = True
            try:
                yield session
            finally:
                session.rollback()

    def dispose(self) -> None:
        self.engine.dispose()
        if self._read_engine is not self.engine:
            self._read_engine.dispose()
