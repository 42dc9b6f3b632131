"""The whole schema, in one module. Alembic migrations in ``app/migrations`` must produce exactly this
(``tests/integration/test_migrations.py`` compares them on PostgreSQL and SQLite).

Partial indexes cover only live rows, so the reconciler's scans stay proportional to live work, not to
history (the DBOS pattern).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in Python on every backend (SQLite stores naive UTC text, compared as text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Integer on SQLite (so it is the rowid alias and autoincrements), BIGINT elsewhere.
Id = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, datetime: UTCDateTime()}


class Workflow(Base):
    """One version of a workflow definition. Registering content that differs from the latest version adds a
    row (even if an older version had that content: the newest registration is what runs); runs keep theirs."""

    __tablename__ = "workflows"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(64))
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class WorkflowRun(Base):
    __tablename__ = "workflow_runs"
    __table_args__ = (
        Index("ix_workflow_runs_live", "id", postgresql_where=text("state = 'running'"),
              sqlite_where=text("state = 'running'")),
        Index("ix_workflow_runs_workflow_name_id", "workflow_name", "id"),
        # idempotent starts: one run per key, whoever races (NULLs are distinct: runs without a key)
        Index("ix_workflow_runs_key", "key", unique=True),
        # limits: a workflow's queued runs (max_active_runs), next first
        Index("ix_workflow_runs_queued", "workflow_name", "priority", "id", postgresql_where=text("state = 'queued'"),
              sqlite_where=text("state = 'queued'")),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    workflow_id: Mapped[int] = mapped_column(ForeignKey("workflows.id"), index=True)
    workflow_name: Mapped[str] = mapped_column(String(100))
    #: which decider advances the run (``app.states.RunKind``)
    kind: Mapped[str] = mapped_column(String(20), server_default=text("'dag'"))
    state: Mapped[str] = mapped_column(String(20), index=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    priority: Mapped[int] = mapped_column(Integer)
    on_failure: Mapped[str] = mapped_column(String(20))
    parent_task_run_id: Mapped[int | None] = mapped_column(
        ForeignKey("task_runs.id", use_alter=True), nullable=True, index=True
    )
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: idempotency key of the start (``start_run(key=...)``): a start with a key an existing run holds returns it
    key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    #: a code run's return value (a DAG run's results are its tasks')
    result: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    #: a code run's published state (``ctx.set_state``), readable while it runs
    state_values: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    #: a code run was asked to cancel: its current wait raises ``tideflow.Cancelled``
    cancel_requested: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    #: ``ctx.continue_as_new``: the run that continues this one
    continued_run_id: Mapped[int | None] = mapped_column(Id, nullable=True)
    #: limits: its rendered workflow concurrency key (``concurrency: {key, limit}``; app/services/limits.py)
    concurrency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # -- schedules (migration 0007) --
    #: the schedule that started the run and its logical time (``{{ schedule.time }}``, ``ctx.schedule_time``)
    schedule_name: Mapped[str | None] = mapped_column(String(100), nullable=True)
    schedule_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class TaskRun(Base):
    """One task of one run. ``attempt`` is the fencing token: only the holder of the current attempt's
    ``lease_token`` may finish it.

    A task row describes itself: what to run (``type`` and ``body``), its timeout, retry policy, queue and
    priority are snapshotted from the definition when the row is created, so the worker, the lease keeper and
    the reconciler never read the workflow definition."""

    __tablename__ = "task_runs"
    __table_args__ = (
        # a task's name is unique in its run among the rows not superseded (a code run's step reset by ``task rerun``
        # or ``task force-success`` keeps its row, superseded, next to the step that replaces it at its position)
        Index("ux_task_runs_run_id_name", "run_id", "name", unique=True,
              postgresql_where=text("superseded_at IS NULL"), sqlite_where=text("superseded_at IS NULL")),
        # reconciler: orphaned submitted tasks, by when they are due for a re-publish
        Index("ix_task_runs_submitted", "next_publish_at",
              postgresql_where=text("state = 'submitted'"), sqlite_where=text("state = 'submitted'")),
        # reconciler: running tasks by lease expiry (subworkflow tasks hold no lease)
        Index("ix_task_runs_leases", "lease_expires_at",
              postgresql_where=text("state = 'running' AND lease_expires_at IS NOT NULL"),
              sqlite_where=text("state = 'running' AND lease_expires_at IS NOT NULL")),
        # master: does the run have anything left to do? (constant cost in the run's size)
        Index("ix_task_runs_live", "run_id",
              postgresql_where=text("state IN ('pending', 'submitted', 'running')"),
              sqlite_where=text("state IN ('pending', 'submitted', 'running')")),
        # master: what finished in this run since its last advance?
        Index("ix_task_runs_unhandled_run", "run_id",
              postgresql_where=text("handled = false"), sqlite_where=text("handled = 0")),
        # reconciler: finished tasks the master has not acted on yet
        Index("ix_task_runs_unhandled", "finished_at",
              postgresql_where=text("handled = false"), sqlite_where=text("handled = 0")),
        # reconciler: code-run timers and signal timeouts, by when they are due
        Index("ix_task_runs_due", "due_at",
              postgresql_where=text("state = 'running' AND due_at IS NOT NULL"),
              sqlite_where=text("state = 'running' AND due_at IS NOT NULL")),
        # limits (app/services/limits.py): a pool's running and waiting tasks
        Index("ix_task_runs_pool", "pool", "state",
              postgresql_where=text("pool IS NOT NULL AND state IN ('submitted', 'running')"),
              sqlite_where=text("pool IS NOT NULL AND state IN ('submitted', 'running')")),
        Index("ix_task_runs_concurrency_key", "concurrency_key", "state",
              postgresql_where=text("concurrency_key IS NOT NULL AND state IN ('submitted', 'running')"),
              sqlite_where=text("concurrency_key IS NOT NULL AND state IN ('submitted', 'running')")),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("workflow_runs.id"))
    name: Mapped[str] = mapped_column(String(100))
    type: Mapped[str] = mapped_column(String(20))  # app.states.TaskKind
    #: what to run: {command, env} (shell), {function, args} (python), {workflow, params} (subworkflow), each
    #: unrendered, plus ``inputs``: the upstream tasks whose results the body receives
    body: Mapped[dict[str, Any]] = mapped_column(JSON, server_default=text("'{}'"))
    timeout: Mapped[float | None] = mapped_column(Float, nullable=True)
    # retry policy: ``retries`` failures of the body are retried after retry_delay * retry_backoff^(n-1) seconds
    # (at most max_retry_delay); lost attempts are retried up to ``max_lost_attempts`` (unless on_lost = fail)
    retries: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    retry_delay: Mapped[float] = mapped_column(Float, server_default=text("0"))
    retry_backoff: Mapped[float] = mapped_column(Float, server_default=text("2"))
    max_retry_delay: Mapped[float] = mapped_column(Float, server_default=text("3600"))
    max_lost_attempts: Mapped[int] = mapped_column(Integer, server_default=text("3"))
    on_lost: Mapped[str] = mapped_column(String(10), server_default=text("'retry'"))
    state: Mapped[str] = mapped_column(String(20))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)  # failed attempts since the run (re)started
    lost_attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))  # lost, since the (re)start
    queue: Mapped[str] = mapped_column(String(100))
    priority: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_token: Mapped[str | None] = mapped_column(String(36), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: when the current attempt became ready to run: submitted with its dependencies met, or the end of its
    #: retry delay (``not_before``). Re-publishes leave it alone. Copied into the attempt's ``wait_seconds``.
    ready_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    publish_count: Mapped[int] = mapped_column(Integer, default=0)  # publishes of the current attempt
    next_publish_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: False: the task became terminal and the advance loop has not applied the consequences yet. Written False
    #: by every terminal transition (``repository.transition_task``); set True only by the advance loop
    #: (``app.services.master.advance_locked``), or by a transition whose caller hands the row to it.
    handled: Mapped[bool] = mapped_column(Boolean, default=True)
    child_run_id: Mapped[int | None] = mapped_column(ForeignKey("workflow_runs.id"), nullable=True)
    #: a code run's step: its position in the run's history (NULL for DAG tasks)
    seq: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: a code run's timer: when it fires; a signal wait: when it times out (fired by the reconciler)
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: a code run's step discarded by a reset (``task rerun``, or ``task force-success`` of an earlier step): kept
    #: as it was (the history is append-only) but no longer part of the history replay reads; NULL: a live row
    superseded_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # -- limits (app/services/limits.py) --
    #: the pool whose slot the task's attempt takes (``pool: NAME``): claimed only while one is free
    pool: Mapped[str | None] = mapped_column(String(100), nullable=True)
    #: its rendered concurrency key and limit (``concurrency: {key, limit}``): at most that many running per key
    concurrency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    concurrency_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: its rate limit (``rate_limit: "10/m"``) and the scope it counts in (``task:WORKFLOW.TASK``,
    #: ``activity:NAME``): at most that many attempts of the scope start per window (``rate_starts``)
    rate_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    rate_limit: Mapped[str | None] = mapped_column(String(20), nullable=True)
    result: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class TaskAttempt(Base):
    """One execution attempt of a task: who ran it, when, how it ended, and its log."""

    __tablename__ = "task_attempts"
    __table_args__ = (UniqueConstraint("task_run_id", "attempt"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    task_run_id: Mapped[int] = mapped_column(ForeignKey("task_runs.id"))
    attempt: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    outcome: Mapped[str] = mapped_column(String(20))  # running, succeeded, failed, timed_out, lost, cancelled
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    log: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    duration: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: seconds from the task being ready to run (``task_runs.ready_at``) to this claim; set at claim, never
    #: changed (NULL for attempts claimed before it was recorded)
    wait_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)


class Event(Base):
    """Append-only history: one row per transition (who, when, from, to, why). Never updated."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_run_id_id", "run_id", "id"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("workflow_runs.id"))
    task_run_id: Mapped[int | None] = mapped_column(ForeignKey("task_runs.id"), nullable=True)
    task_name: Mapped[str | None] = mapped_column(String(100), nullable=True)
    attempt: Mapped[int | None] = mapped_column(Integer, nullable=True)
    from_state: Mapped[str | None] = mapped_column(String(20), nullable=True)
    to_state: Mapped[str] = mapped_column(String(20))
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Signal(Base):
    """A signal sent to a code run: stored on receipt, delivered to the run's ``wait_signal`` calls exactly once,
    in arrival order (``id``). ``key``: the same key twice is one signal."""

    __tablename__ = "signals"
    __table_args__ = (
        UniqueConstraint("run_id", "key"),
        # replay: the oldest undelivered signal of a name
        Index("ix_signals_pending", "run_id", "name", "id",
              postgresql_where=text("task_run_id IS NULL"), sqlite_where=text("task_run_id IS NULL")),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("workflow_runs.id"))
    name: Mapped[str] = mapped_column(String(100))
    data: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    actor: Mapped[str] = mapped_column(String(200))
    #: the ``wait_signal`` step it was delivered to (NULL: not delivered yet)
    task_run_id: Mapped[int | None] = mapped_column(ForeignKey("task_runs.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Counter(Base):
    """Monotonic counts of things that leave no row behind (e.g. a message retried because its task row was not
    visible yet). Incremented with an upsert in a short transaction of its own; read by ``/metrics``."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class ApiToken(Base):
    """A named API token with a role (``tideflow token add``). Only the SHA-256 of its secret is stored: the
    secret is shown once, when the token is made. Removing the row revokes the token and its UI sessions."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(20))
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


# -- schedules (migration 0007) ---------------------------------------------------------------------------------


class Schedule(Base):
    """A cron schedule of a workflow (declared in its DAG's ``schedule:`` or ``@tideflow.workflow(schedule=...)``),
    synced here when the DAG is registered or a process with the code workflow starts beat (``paused`` survives
    re-registration). ``cursor``: the last fire time the scheduler dealt with (fired or skipped)."""

    __tablename__ = "schedules"
    __table_args__ = (
        # the scheduler pass: schedules whose next fire time has come (one index scan, whatever their number)
        Index("ix_schedules_due", "next_due_at", postgresql_where=text("active AND NOT paused"),
              sqlite_where=text("active AND NOT paused")),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    workflow_name: Mapped[str] = mapped_column(String(100), index=True)
    #: the declared fields (``app.scheduling.ScheduleSpec``)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    paused: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    #: who paused it and when (kept after a resume: the last pause)
    paused_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: False: the workflow no longer declares it (kept for its history; never fires)
    active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    cursor: Mapped[datetime] = mapped_column(UTCDateTime())
    #: when the first fire time after ``cursor`` is due (its jitter included); NULL: none (past ``end``)
    next_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ScheduleFire(Base):
    """One fire time of one schedule, whatever came of it: a run started, skipped (``reason`` says why), buffered
    (``overlap: buffer_one``: started when the running one ends), or pending in a backfill. The unique
    (schedule_name, fire_time) is what makes every fire time start at most one run, however many schedulers race:
    the row is inserted in the transaction that starts the run."""

    __tablename__ = "schedule_fires"
    __table_args__ = (
        UniqueConstraint("schedule_name", "fire_time"),
        Index("ix_schedule_fires_waiting", "schedule_name", "fire_time",
              postgresql_where=text("outcome IN ('buffered', 'pending')"),
              sqlite_where=text("outcome IN ('buffered', 'pending')")),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    schedule_name: Mapped[str] = mapped_column(String(100))
    fire_time: Mapped[datetime] = mapped_column(UTCDateTime())
    #: started, skipped, buffered, pending (a backfill's, not submitted yet)
    outcome: Mapped[str] = mapped_column(String(20))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("workflow_runs.id"), nullable=True)
    backfill_id: Mapped[int | None] = mapped_column(ForeignKey("backfills.id"), nullable=True, index=True)
    reason: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Backfill(Base):
    """A durable backfill (``tideflow schedule backfill``): its fire times are ``schedule_fires`` rows, submitted
    oldest first by the scheduler pass, at most ``parallel`` live at once, until none is left (``state`` done).
    The same (schedule, range) again is this row: nothing new."""

    __tablename__ = "backfills"
    __table_args__ = (UniqueConstraint("schedule_name", "range_start", "range_end"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    schedule_name: Mapped[str] = mapped_column(String(100))
    range_start: Mapped[datetime] = mapped_column(UTCDateTime())
    range_end: Mapped[datetime] = mapped_column(UTCDateTime())
    parallel: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(20))  # running, done
    actor: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Pool(Base):
    """A pool of slots (``tideflow pool set NAME SLOTS``): at most ``slots`` tasks naming it run at once,
    cluster-wide. Slots in use are counted from the live ``task_runs`` rows (no counter to drift); this row is
    locked by every admission into the pool, so two claims never take its last slot twice."""

    __tablename__ = "pools"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    slots: Mapped[int] = mapped_column(Integer)
    #: ``tideflow pool set NAME SLOTS --rate-limit 10/m``: at most that many of its tasks start per window
    rate_limit: Mapped[str | None] = mapped_column(String(20), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class RateStart(Base):
    """One attempt's start, counted against a rate limit (``rate_key``: ``task:WF.TASK``, ``activity:NAME``,
    ``pool:NAME``): an admission counts the starts of its key in the last window (a sliding log, exact; rows older
    than the window are deleted by the admissions of their key). Inserted in the claim's transaction."""

    __tablename__ = "rate_starts"
    __table_args__ = (Index("ix_rate_starts_rate_key_started_at", "rate_key", "started_at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    rate_key: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())


metadata = Base.metadata
