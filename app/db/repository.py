"""The one owner of SQL. Every state change is :func:`transition_task` or :func:`transition_run`: a guarded
``UPDATE ... WHERE id = ? AND state = expected [AND attempt = ?] [AND lease_token = ?]`` that reports
whether it landed, and writes its event row in the same transaction when it did.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Row,
    Table,
    and_,
    bindparam,
    delete,
    exists,
    false,
    func,
    insert,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.clock import utcnow
from app.db.schema import (
    Backfill,
    Counter,
    Event,
    Pool,
    RateStart,
    Schedule,
    ScheduleFire,
    Signal,
    TaskAttempt,
    TaskRun,
    UTCDateTime,
    Workflow,
    WorkflowRun,
)
from app.records import RunRecord, SignalRecord, TaskRecord, WorkflowRecord
from app.states import (
    RUN_TERMINAL,
    TASK_LIVE_ORDERED,
    TASK_TERMINAL,
    AttemptOutcome,
    RunKind,
    RunState,
    TaskState,
    check_run_transition,
    check_task_transition,
)

W: Table = Workflow.__table__  # type: ignore[assignment]
R: Table = WorkflowRun.__table__  # type: ignore[assignment]
T: Table = TaskRun.__table__  # type: ignore[assignment]
A: Table = TaskAttempt.__table__  # type: ignore[assignment]
E: Table = Event.__table__  # type: ignore[assignment]
C: Table = Counter.__table__  # type: ignore[assignment]
S: Table = Signal.__table__  # type: ignore[assignment]
P: Table = Pool.__table__  # type: ignore[assignment]
RS: Table = RateStart.__table__  # type: ignore[assignment]


def _state_is(*states: str) -> Any:
    """``task_runs.state IN ('a', ...)`` with literals, not bind parameters: the partial indexes' predicates
    must be provable from the query text, or PostgreSQL's generic plans (psycopg prepares repeated
    statements) cannot use them."""
    return T.c.state.in_([literal_column(f"'{st}'") for st in states])


# Statements built once (the hot path's inserts): building them per call costs more than running them.
_INSERT_EVENT = insert(E)
_INSERT_ATTEMPT = insert(A)

#: ``UPDATE task_runs ... RETURNING *``, built once: ``.returning(*T.c)`` coerces each of the ~40 columns again
#: at every call (SQLAlchemy's ``coercions.expect``), about a tenth of the statement's client CPU
_UPDATE_TASK_RETURNING = update(T).returning(*T.c)

#: the states of a pool's tasks that count (``ix_task_runs_pool``)
_POOL_LIVE = (TaskState.SUBMITTED, TaskState.RUNNING)

UNHANDLED = T.c.handled == false()  # renders the literal, matching ix_task_runs_unhandled's predicate



def _is_pg(s: Session) -> bool:
    return s.get_bind().dialect.name == "postgresql"


# -- driver SQL: the hot path's statements, compiled once ------------------------------------------------
#
# On PostgreSQL the hot transitions (claim, finish, submit: each a guarded UPDATE with its event row, and the
# attempt's row) run as ONE statement each, a data-modifying ``WITH`` (``WITH upd AS (UPDATE ... RETURNING ...),
# ev AS (INSERT INTO events ... SELECT ... FROM upd) SELECT ... FROM upd``): the event (and the attempt's row) are
# written only if the guarded update landed, in the same statement of the same transaction, so nothing about
# the transition changes but the round trips. The SQL text is compiled from the Core statement once per shape
# and run with ``exec_driver_sql`` on the session's connection (the same transaction; psycopg prepares it
# server-side after a few executions): building and compiling a Core statement per call cost more client CPU
# than the database spent running it. SQLite keeps the Core statements (no DML in ``WITH``).

_DRIVER_SQL: dict[Any, tuple[str, dict[str, Any], dict[str, Callable[[Any], Any]]]] = {}


def _driver_compile(s: Session, key: Any, build: Callable[[], tuple[Any, str, str]]) -> tuple[
        str, dict[str, Any], dict[str, Callable[[Any], Any]]]:
    """``build()`` -> (a Core statement with named ``bindparam``s, SQL before it, SQL after it), compiled once for
    ``key``: the text, the statement's own fixed parameter values, and the bind processors (JSON)."""
    entry = _DRIVER_SQL.get(key)
    if entry is None:
        stmt, head, tail = build()
        compiled = stmt.compile(dialect=s.get_bind().dialect)
        fixed = {k: v for k, v in compiled.params.items() if v is not None}
        procs = {k: p for k, p in compiled._bind_processors.items() if p is not None}
        entry = _DRIVER_SQL[key] = (head + compiled.string + tail, fixed, procs)
    return entry


def _driver_execute(s: Session, sql: tuple[str, dict[str, Any], dict[str, Callable[[Any], Any]]],
                    params: dict[str, Any]) -> Any:
    text, fixed, procs = sql
    values = {**fixed, **params}
    for name, proc in procs.items():
        if name in values:
            values[name] = proc(values[name])
    first = getattr(s, "first_statement", None)
    if first is not None and first():  # app.db.engine.RetryingSession: a dead pooled connection is replaced
        return s.retry_first(lambda: s.connection().exec_driver_sql(text, values))  # type: ignore[attr-defined]
    return s.connection().exec_driver_sql(text, values)


#: the event row of a transition, written by the transition's own statement (``upd``: the updated task row)
_EVENT_FROM_UPD = (", ev AS (INSERT INTO events (run_id, task_run_id, task_name, attempt, from_state, to_state, actor, "
                   "reason, created_at) SELECT upd.run_id, upd.id, upd.name, upd.attempt, %(ev_from)s, %(ev_to)s, "
                   "%(ev_actor)s, %(ev_reason)s, %(ev_now)s FROM upd)")


def _event_params(src: str, to: str, actor: str, reason: str, now: datetime) -> dict[str, Any]:
    return {"ev_from": str(src), "ev_to": str(to), "ev_actor": actor[:200], "ev_reason": reason, "ev_now": now}


def _guarded_update(cond_keys: tuple[str, ...], value_keys: Iterable[str], returning: Any) -> Any:
    """``UPDATE task_runs SET <value_keys> WHERE <guards> RETURNING ...`` with a bind parameter per value
    (``v_<column>``) and per guard (``w_<name>``); the states compared are literals (partial indexes)."""
    return (update(T).where(*[_GUARDS[k] for k in cond_keys])
            .values({k: bindparam(f"v_{k}", type_=T.c[k].type) for k in value_keys}).returning(*returning))


class _UTCRow:
    """A driver row for ``*Record.from_row``: timestamps in UTC, as ``UTCDateTime`` returns them through Core."""

    __slots__ = ("_mapping",)

    def __init__(self, row: Any):
        m = self._mapping = dict(zip(row._fields, row, strict=True))
        for k in _TIMES.intersection(m):
            if m[k] is not None:
                m[k] = m[k].astimezone(UTC)


#: the timestamp columns of the rows the driver statements return
_TIMES = frozenset(c.name for t in (T, R) for c in t.c if isinstance(c.type, UTCDateTime))


def _bind(values: dict[str, Any]) -> dict[str, Any]:
    return {f"v_{k}": v for k, v in values.items()}


_GUARDS: dict[str, Any] = {
    "id": T.c.id == bindparam("w_id"),
    "attempt": T.c.attempt == bindparam("w_attempt"),
    "fence": T.c.lease_token == bindparam("w_fence"),
    "publish_count": T.c.publish_count == bindparam("w_publish_count"),
    **{f"state={st}": T.c.state == literal_column(f"'{st}'") for st in TaskState},
}


def _lock(s: Session, q: Any, *, lock: bool = True, **how: Any) -> Any:
    """``q`` locking the rows it reads for this transaction (``SELECT ... FOR UPDATE``; ``how``: ``skip_locked``,
    ``key_share`` (``FOR NO KEY UPDATE``), ``of``) on PostgreSQL, when ``lock``. SQLite: ``q`` as it is (the
    IMMEDIATE transaction already holds the database's write lock)."""
    return q.with_for_update(**how) if lock and _is_pg(s) else q


# -- workflows --------------------------------------------------------------------------------------


def _workflow(row: Row[Any] | None) -> WorkflowRecord | None:
    return WorkflowRecord.from_row(row) if row is not None else None


def workflow(s: Session, name: str, version: int | None = None) -> WorkflowRecord | None:
    q = select(W).where(W.c.name == name)
    q = q.where(W.c.version == version) if version is not None else q.order_by(W.c.version.desc()).limit(1)
    return _workflow(s.execute(q).first())


def workflow_by_id(s: Session, workflow_id: int) -> WorkflowRecord | None:
    return _workflow(s.execute(select(W).where(W.c.id == workflow_id)).first())


def workflow_versions(s: Session, name: str) -> list[WorkflowRecord]:
    return [WorkflowRecord.from_row(r) for r in s.execute(select(W).where(W.c.name == name).order_by(W.c.version))]


def list_workflows(s: Session) -> list[WorkflowRecord]:
    latest = select(W.c.name, func.max(W.c.version).label("version")).group_by(W.c.name).subquery()
    q = select(W).join(latest, and_(W.c.name == latest.c.name, W.c.version == latest.c.version))
    return [WorkflowRecord.from_row(r) for r in s.execute(q.order_by(W.c.name))]


def insert_workflow(s: Session, name: str, digest: str, definition: dict[str, Any]) -> WorkflowRecord:
    version = (s.execute(select(func.max(W.c.version)).where(W.c.name == name)).scalar() or 0) + 1
    s.execute(insert(W).values(name=name, version=version, digest=digest, definition=definition,
                               created_at=utcnow()))
    row = workflow(s, name, version)
    assert row is not None
    return row


# -- runs ---------------------------------------------------------------------------------------------


def insert_run(
    s: Session, *, workflow_row: WorkflowRecord, params: dict[str, Any], priority: int, on_failure: str,
    parent_task_run_id: int | None, actor: str, reason: str, kind: RunKind = RunKind.DAG, key: str | None = None,
    state: RunState = RunState.RUNNING, concurrency_key: str | None = None,
) -> RunRecord:
    """The new run (its row as inserted: ``RETURNING``, no read after the insert). With a ``key`` an existing
    run holds, the unique index ``ix_workflow_runs_key`` raises ``IntegrityError`` (the caller's savepoint)."""
    now = utcnow()
    run = RunRecord.from_row(s.execute(
        insert(R).values(
            workflow_id=workflow_row.id, workflow_name=workflow_row.name, state=state, kind=kind,
            params=params, priority=priority, on_failure=on_failure, parent_task_run_id=parent_task_run_id,
            key=key, concurrency_key=concurrency_key, created_at=now, updated_at=now,
        ).returning(*R.c)
    ).one())
    add_event(s, run_id=run.id, from_state=None, to_state=state, actor=actor, reason=reason, now=now)
    return run


def _run(row: Row[Any] | None) -> RunRecord | None:
    return RunRecord.from_row(row) if row is not None else None


def _task(row: Row[Any] | None) -> TaskRecord | None:
    return TaskRecord.from_row(row) if row is not None else None


def get_run(s: Session, run_id: int) -> RunRecord | None:
    return _run(s.execute(select(R).where(R.c.id == run_id)).first())


def run_by_key(s: Session, key: str) -> RunRecord | None:
    return _run(s.execute(select(R).where(R.c.key == key)).first())


def set_run_values(s: Session, run_id: int, **values: Any) -> None:
    """Columns of a run that are not its state (a code run's published state, cancel request, continuation)."""
    s.execute(update(R).where(R.c.id == run_id).values(updated_at=utcnow(), **values))


def lock_run(s: Session, run_id: int, *, skip_locked: bool = False) -> RunRecord | None:
    """The run row, locked for this transaction: advances of one run are serialised (fan-in safety).

    ``FOR NO KEY UPDATE``, not ``FOR UPDATE``: workers insert event rows referencing the run while holding
    their task row's lock, and the foreign-key check's ``KEY SHARE`` lock must not wait on us (it would
    deadlock with an advance or cancel that updates that task). On SQLite the IMMEDIATE transaction already
    holds the database's write lock."""
    if _is_pg(s):
        sql = _driver_compile(s, ("lock_run", skip_locked), lambda: (
            select(R).where(R.c.id == bindparam("w_id")).with_for_update(skip_locked=skip_locked, key_share=True),
            "", ""))
        row = _driver_execute(s, sql, {"w_id": run_id}).first()
        return RunRecord.from_row(_UTCRow(row)) if row is not None else None
    return _run(s.execute(select(R).where(R.c.id == run_id)).first())


def _with_parent_run() -> Any:
    """``SELECT workflow_runs.*, <the parent task's run_id> AS parent_run_id``: one outer join, so a list of runs
    carries its parents' run ids without a query per run."""
    parent = T.alias("parent_task")
    return (select(R, parent.c.run_id.label("parent_run_id"))
            .select_from(R.outerjoin(parent, parent.c.id == R.c.parent_task_run_id)))


def get_run_view(s: Session, run_id: int) -> RunRecord | None:
    """:func:`get_run` with ``parent_run_id`` (read models)."""
    return _run(s.execute(_with_parent_run().where(R.c.id == run_id)).first())


def list_runs(
    s: Session, *, state: str | None = None, workflow_name: str | None = None, limit: int = 50,
    before_id: int | None = None, kind: str | None = None,
) -> list[RunRecord]:
    """Newest first, each with its ``parent_run_id``."""
    q = _with_parent_run().order_by(R.c.id.desc()).limit(limit)
    if state:
        q = q.where(R.c.state == state)
    if workflow_name:
        q = q.where(R.c.workflow_name == workflow_name)
    if kind:
        q = q.where(R.c.kind == kind)
    if before_id:
        q = q.where(R.c.id < before_id)
    return [RunRecord.from_row(r) for r in s.execute(q)]


def grid_runs(s: Session, workflow_name: str, limit: int) -> Sequence[Any]:
    """A workflow's ``limit`` most recent runs, newest first, with their workflow version (the grid's columns;
    index ``ix_workflow_runs_workflow_name_id``): (id, kind, state, created_at, finished_at, version)."""
    q = (select(R.c.id, R.c.kind, R.c.state, R.c.created_at, R.c.finished_at, W.c.version)
         .join(W, W.c.id == R.c.workflow_id).where(R.c.workflow_name == workflow_name)
         .order_by(R.c.id.desc()).limit(limit))
    return s.execute(q).all()


def grid_tasks(s: Session, run_ids: Iterable[int]) -> Sequence[Any]:
    """The tasks of these runs in one query (the grid's cells), each run's in position order (a code run's
    steps by ``seq``, a DAG's tasks as created, i.e. in definition order):
    (run_id, id, name, state, attempt)."""
    ids = list(run_ids)
    if not ids:
        return []
    q = (select(T.c.run_id, T.c.id, T.c.name, T.c.state, T.c.attempt)
         .where(T.c.run_id.in_(ids), T.c.superseded_at.is_(None))
         .order_by(T.c.run_id.desc(), T.c.seq, T.c.id))
    return s.execute(q).all()


def child_runs(s: Session, run_id: int) -> Sequence[Any]:
    """The runs started by the run's tasks (subworkflow tasks, code children, their continuations), oldest
    first: (id, workflow_name, kind, state)."""
    q = (select(R.c.id, R.c.workflow_name, R.c.kind, R.c.state).join(T, T.c.id == R.c.parent_task_run_id)
         .where(T.c.run_id == run_id).order_by(R.c.id))
    return s.execute(q).all()


def transition_run(
    s: Session, run: RunRecord, to: RunState, *, actor: str, reason: str, error: str | None = None, **values: Any,
) -> bool:
    src = RunState(run.state)
    check_run_transition(src, to)
    now = utcnow()
    finished = now if to in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED) else None
    res = s.execute(
        update(R)
        .where(R.c.id == run.id, R.c.state == src)
        .values(state=to, updated_at=now, finished_at=finished, error=error, **values)
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        return False
    add_event(s, run_id=run.id, from_state=src, to_state=to, actor=actor, reason=reason, now=now)
    return True


# -- tasks --------------------------------------------------------------------------------------------


def insert_tasks(s: Session, run_id: int, tasks: list[dict[str, Any]]) -> None:
    """Create the run's task rows (pending). ``tasks``: dicts with name, type, queue, priority and what the
    row snapshots of the definition (``app.definitions.task_row_values``: body, timeout, retry policy)."""
    now = utcnow()
    rows = [
        {**t, "run_id": run_id, "state": TaskState.PENDING, "attempt": 0, "failures": 0, "lost_attempts": 0,
         "publish_count": 0, "handled": True, "created_at": now, "updated_at": now}
        for t in tasks
    ]
    s.execute(insert(T), rows)


def insert_steps(s: Session, rows: list[dict[str, Any]]) -> list[TaskRecord]:
    """A code run's new steps (task rows with a ``seq``), as inserted, in the order given."""
    if not rows:
        return []
    now = utcnow()
    values = [{"attempt": 0, "failures": 0, "lost_attempts": 0, "publish_count": 0, "handled": True,
               "created_at": now, "updated_at": now, **r} for r in rows]
    result = s.execute(insert(T).returning(*T.c, sort_by_parameter_order=True), values)
    return [TaskRecord.from_row(r) for r in result]


def run_steps(s: Session, run_id: int) -> list[TaskRecord]:
    """A code run's history: its steps by position (not the ones a reset superseded)."""
    return [TaskRecord.from_row(r) for r in s.execute(
        select(T).where(T.c.run_id == run_id, T.c.seq.is_not(None), T.c.superseded_at.is_(None)).order_by(T.c.seq))]


def supersede_steps(
    s: Session, run_id: int, from_seq: int, *, actor: str, reason: str, now: datetime,
) -> list[TaskRecord]:
    """A reset of a code run (``task rerun``, ``task force-success``; the caller holds the run's lock and has
    checked none of them is live): its steps at positions ``>= from_seq`` leave the history replay reads. Their rows
    are kept as they were (state, result, attempts: the history is append-only), marked ``superseded_at``, each with
    an event; a signal one of them consumed is pending again (the replay delivers it anew, in arrival order).
    Returns them, by position."""
    rows = s.execute(update(T).where(T.c.run_id == run_id, T.c.seq.is_not(None), T.c.seq >= from_seq,
                                     T.c.superseded_at.is_(None))
                     .values(superseded_at=now, updated_at=now, handled=True).returning(*T.c)).all()
    steps = sorted((TaskRecord.from_row(r) for r in rows), key=lambda t: t.seq or 0)
    for t in steps:
        add_event(s, run_id=run_id, task_run_id=t.id, task_name=t.name, attempt=t.attempt, from_state=t.state,
                  to_state=t.state, actor=actor, reason=f"superseded: {reason}", now=now)
    if steps:
        s.execute(update(S).where(S.c.run_id == run_id, S.c.task_run_id.in_([t.id for t in steps]))
                  .values(task_run_id=None))
    return steps


def live_steps(s: Session, run_id: int) -> list[TaskRecord]:
    return [TaskRecord.from_row(r) for r in s.execute(
        select(T).where(T.c.run_id == run_id, _state_is(*TASK_LIVE_ORDERED)).order_by(T.c.id))]


def get_task(s: Session, task_run_id: int) -> TaskRecord | None:
    return _task(s.execute(select(T).where(T.c.id == task_run_id)).first())


def run_tasks(s: Session, run_id: int) -> list[TaskRecord]:
    return [TaskRecord.from_row(r) for r in s.execute(select(T).where(T.c.run_id == run_id).order_by(T.c.id))]


def tasks_named(s: Session, run_id: int, names: Iterable[str]) -> list[TaskRecord]:
    wanted = list(names)
    if not wanted:
        return []
    if _is_pg(s):  # the advance's read of the finished task's children: driver SQL, one text for any number
        sql = _driver_compile(s, "tasks_named", lambda: (
            select(T).where(T.c.run_id == bindparam("w_run_id"), T.c.name == func.any(bindparam("w_names")),
                            T.c.superseded_at.is_(None)), "", ""))
        return [TaskRecord.from_row(_UTCRow(r)) for r in _driver_execute(s, sql, {"w_run_id": run_id,
                                                                                 "w_names": wanted})]
    return [TaskRecord.from_row(r) for r in s.execute(
        select(T).where(T.c.run_id == run_id, T.c.name.in_(wanted), T.c.superseded_at.is_(None)))]


def unhandled_tasks(s: Session, run_id: int) -> list[TaskRecord]:
    """The run's terminal tasks the advance loop has not acted on (partial index ``ix_task_runs_unhandled``)."""
    return [TaskRecord.from_row(r) for r in s.execute(select(T).where(T.c.run_id == run_id, UNHANDLED))]


def has_live_tasks(s: Session, run_id: int) -> bool:
    """Whether any task of the run is pending, submitted or running (partial index ``ix_task_runs_live``)."""
    q = select(T.c.id).where(T.c.run_id == run_id, _state_is(*TASK_LIVE_ORDERED)).limit(1)
    return s.execute(q).first() is not None


def task_states(s: Session, run_id: int) -> dict[str, TaskState]:
    return {name: TaskState(state) for name, state in s.execute(
        select(T.c.name, T.c.state).where(T.c.run_id == run_id))}


def deliberate_skips(s: Session, run_id: int) -> set[str]:
    """The run's tasks skipped on purpose (a false ``when:``, a branch not chosen, a rule that skips): skipped with
    no error. A task skipped because of a failure carries the reason as its error (``app.dag.Skip``)."""
    return {name for (name,) in s.execute(
        select(T.c.name).where(T.c.run_id == run_id, T.c.state == TaskState.SKIPPED, T.c.error.is_(None)))}


def skip_reasons(s: Session, run_id: int) -> dict[int, str]:
    """Why each skipped task of the run was skipped: the reason of its latest event into ``skipped``, by task run
    id (read models)."""
    q = (select(E.c.task_run_id, E.c.reason)
         .where(E.c.run_id == run_id, E.c.to_state == TaskState.SKIPPED, E.c.task_run_id.is_not(None))
         .order_by(E.c.id))
    return {int(task_id): reason for task_id, reason in s.execute(q)}


def task_results(s: Session, run_id: int, names: Iterable[str] | None = None) -> dict[str, Any]:
    """Results of the run's succeeded tasks, by name (all of them, or only ``names``)."""
    q = select(T.c.name, T.c.result).where(T.c.run_id == run_id, T.c.state == TaskState.SUCCEEDED)
    if names is not None:
        wanted = list(names)
        if not wanted:
            return {}
        if _is_pg(s):  # a claim's read of its inputs: driver SQL
            sql = _driver_compile(s, "task_results", lambda: (
                select(T.c.name, T.c.result).where(T.c.run_id == bindparam("w_run_id"),
                                                   T.c.state == literal_column(f"'{TaskState.SUCCEEDED}'"),
                                                   T.c.name == func.any(bindparam("w_names"))), "", ""))
            return {name: result for name, result in _driver_execute(s, sql, {"w_run_id": run_id, "w_names": wanted})}
        q = q.where(T.c.name.in_(wanted))
    return {name: result for name, result in s.execute(q)}


def _terminal_defaults(to: TaskState, values: dict[str, Any], now: datetime) -> None:
    """A task that becomes terminal is unhandled until the advance loop has applied its consequences (the one
    rule that makes a finished task impossible to forget), and has a ``finished_at`` (which the reconciler's
    scan of unhandled tasks orders by). Only a caller that hands the row to the advance loop in the same
    transaction passes ``handled=True``."""
    if to in TASK_TERMINAL:
        values.setdefault("handled", False)
        if values.get("finished_at") is None:
            values["finished_at"] = now


def transition_task(
    s: Session, task: TaskRecord, to: TaskState, *, actor: str, reason: str, fence: str | None = None,
    now: datetime | None = None, **values: Any,
) -> bool:
    """Move ``task`` from the state (and attempt) it was read in to ``to``.

    Lands only if nobody changed the row since: same state, same attempt and, for a running task's own
    completion, the same lease token ``fence`` (the fence that stops a failed-over worker from overwriting a newer
    attempt). ``values`` are extra columns to set (attempt, lease, result, ...).
    """
    src = TaskState(task.state)
    check_task_transition(src, to)
    now = now or utcnow()
    _terminal_defaults(to, values, now)
    cond = [T.c.id == task.id, T.c.state == src, T.c.attempt == task.attempt]
    if fence is not None:
        cond.append(T.c.lease_token == fence)
    if src == TaskState.SUBMITTED and to == TaskState.SUBMITTED:
        cond.append(T.c.publish_count == task.publish_count)
    elif to == TaskState.SUBMITTED and "ready_at" not in values:
        # a new attempt is ready to run now, or once its retry delay is over; a re-publish leaves it alone
        not_before = values.get("not_before")
        values["ready_at"] = max(now, not_before) if not_before is not None else now
    if _is_pg(s):  # the update and its event in one statement (see "driver SQL" above)
        keys = ("id", f"state={src}", "attempt", *(("fence",) if fence is not None else ()),
                *(("publish_count",) if src == to == TaskState.SUBMITTED else ()))
        values.update(state=to, updated_at=now)
        names = tuple(sorted(values))
        sql = _driver_compile(s, ("transition", keys, names), lambda: (
            _guarded_update(keys, names, [T.c.id, T.c.run_id, T.c.name, T.c.attempt]), "WITH upd AS (",
            ")" + _EVENT_FROM_UPD + " SELECT upd.id FROM upd"))
        return _driver_execute(s, sql, {
            "w_id": task.id, "w_attempt": task.attempt, "w_fence": fence, "w_publish_count": task.publish_count,
            **_bind(values), **_event_params(src, to, actor, reason, now)}).first() is not None
    res = s.execute(update(T).where(*cond).values(state=to, updated_at=now, **values))
    if res.rowcount != 1:  # type: ignore[attr-defined]
        return False
    add_event(
        s, run_id=task.run_id, task_run_id=task.id, task_name=task.name,
        attempt=values.get("attempt", task.attempt), from_state=src, to_state=to, actor=actor,
        reason=reason, now=now,
    )
    return True


def transition_by_id(
    s: Session, task_run_id: int, src: TaskState, to: TaskState, *, attempt: int, actor: str, reason: str,
    now: datetime, fence: str | None = None, where: Sequence[Any] = (), **values: Any,
) -> TaskRecord | None:
    """:func:`transition_task` for a caller that has not read the row: one guarded
    ``UPDATE ... WHERE id = ? AND state = src AND attempt = ? [AND lease_token = fence] RETURNING *`` plus
    its event. Returns the updated row, or None if it did not land. The worker's hot path (claim, finish)."""
    check_task_transition(src, to)
    _terminal_defaults(to, values, now)
    if _is_pg(s) and not where:
        keys = ("id", f"state={src}", "attempt", *(("fence",) if fence is not None else ()))
        values.update(state=to, updated_at=now)
        names = tuple(sorted(values))
        sql = _driver_compile(s, ("transition_by_id", keys, names), lambda: (
            _guarded_update(keys, names, T.c), "WITH upd AS (", ")" + _EVENT_FROM_UPD + " SELECT * FROM upd"))
        got = _driver_execute(s, sql, {"w_id": task_run_id, "w_attempt": attempt, "w_fence": fence, **_bind(values),
                                       **_event_params(src, to, actor, reason, now)}).first()
        return TaskRecord.from_row(_UTCRow(got)) if got is not None else None
    cond = [T.c.id == task_run_id, T.c.state == src, T.c.attempt == attempt, *where]
    if fence is not None:
        cond.append(T.c.lease_token == fence)
    row = s.execute(_UPDATE_TASK_RETURNING.where(*cond).values(state=to, updated_at=now, **values)).first()
    if row is not None:
        add_event(s, run_id=row.run_id, task_run_id=row.id, task_name=row.name, attempt=attempt,
                  from_state=src, to_state=to, actor=actor, reason=reason, now=now)
    return _task(row)


#: a claim's guard: the task's run is not paused (a paused run's submitted tasks wait for ``run resume``, which
#: re-publishes them). Read in the claim's own statement: a pause that committed before it is seen; one after it
#: lets this attempt run, as any task already running when a run is paused.
_RUN_NOT_PAUSED = ~exists().where(R.c.id == T.c.run_id, R.c.state == literal_column(f"'{RunState.PAUSED}'"))


def claim_task(
    s: Session, task_run_id: int, attempt: int, *, actor: str, reason: str, now: datetime, unlimited: bool = False,
    pid: int | None = None, **values: Any,
) -> TaskRecord | None:
    """The worker's claim, ``submitted -> running`` for exactly ``attempt`` once its retry delay has passed
    (no read before it), with its event and, given ``pid``, the attempt's row (one statement on PostgreSQL).
    None when there was nothing to claim (missing row, other state or attempt, early).
    ``unlimited``: only a task under no limit (no pool), so a claim of one costs nothing more than before
    limits existed; a limited task is claimed only after its admission (``app.services.limits``)."""
    if _is_pg(s):
        return _claim_pg(s, task_run_id, attempt, actor=actor, reason=reason, now=now, unlimited=unlimited,
                         pid=pid, **values)
    task = transition_by_id(
        s, task_run_id, TaskState.SUBMITTED, TaskState.RUNNING, attempt=attempt, actor=actor, reason=reason,
        now=now, where=[*_claim_guards(now, unlimited), _RUN_NOT_PAUSED], **values,
    )
    if task is not None and pid is not None:
        insert_attempt(s, task, attempt=attempt, worker=values["worker"], pid=pid, now=now)
    return task


def _claim_guards(now: Any, unlimited: bool) -> list[Any]:
    where = [or_(T.c.not_before.is_(None), T.c.not_before <= now)]
    if unlimited:
        where += [T.c.pool.is_(None), T.c.concurrency_key.is_(None), T.c.rate_key.is_(None)]
    return where


#: the claim's attempt row, written by the claim's own statement (``wait_seconds``: since ``ready_at``, clamped at 0)
_ATTEMPT_FROM_UPD = (f", att AS (INSERT INTO task_attempts (task_run_id, attempt, worker, pid, outcome, started_at, "
                     f"wait_seconds) SELECT upd.id, upd.attempt, %(v_worker)s, %(a_pid)s, '{AttemptOutcome.RUNNING}', "
                     "%(ev_now)s, CASE WHEN upd.ready_at IS NULL THEN NULL "
                     "ELSE GREATEST(EXTRACT(EPOCH FROM (%(ev_now)s - upd.ready_at)), 0) END FROM upd)")


def _claim_pg(
    s: Session, task_run_id: int, attempt: int, *, actor: str, reason: str, now: datetime, unlimited: bool,
    pid: int | None, **values: Any,
) -> TaskRecord | None:
    """The claim on PostgreSQL: the guarded update, its event and the attempt's row in one statement."""
    values.update(state=TaskState.RUNNING, updated_at=now)
    names = tuple(sorted(values))

    def build() -> tuple[Any, str, str]:
        stmt = (update(T).where(_GUARDS["id"], _GUARDS[f"state={TaskState.SUBMITTED}"], _GUARDS["attempt"],
                                *_claim_guards(bindparam("w_now", type_=T.c.not_before.type), unlimited),
                                _RUN_NOT_PAUSED)
                .values({k: bindparam(f"v_{k}", type_=T.c[k].type) for k in names}).returning(*T.c))
        attempt_row = _ATTEMPT_FROM_UPD if pid is not None else ""
        return stmt, "WITH upd AS (", ")" + _EVENT_FROM_UPD + attempt_row + " SELECT * FROM upd"

    row = _driver_execute(s, _driver_compile(s, ("claim", unlimited, names, pid is None), build), {
        "w_id": task_run_id, "w_attempt": attempt, "w_now": now, "a_pid": pid, **_bind(values),
        **_event_params(TaskState.SUBMITTED, TaskState.RUNNING, actor, reason, now)}).first()
    return TaskRecord.from_row(_UTCRow(row)) if row is not None else None


def run_is_paused(s: Session, run_id: int) -> bool:
    return s.execute(select(R.c.state).where(R.c.id == run_id)).scalar() == RunState.PAUSED


def keep_attempt_log(s: Session, task_run_id: int, attempt: int, log: str) -> None:
    """Store the output of an attempt that was stopped (its outcome was already written by whoever stopped
    it). Not a transition: the outcome is untouched. Replaces the tail the heartbeats stored while it ran (the
    worker's buffer holds all of that and more)."""
    s.execute(update(A).where(A.c.task_run_id == task_run_id, A.c.attempt == attempt).values(log=log))


def renew_lease(
    s: Session, task_run_id: int, lease_token: str, expires_at: datetime, *, attempt: int | None = None,
    log: str | None = None,
) -> bool:
    """Heartbeat: extend the lease if this attempt still holds it. Not a transition: no event.

    With ``log`` (and ``attempt``): also store the running attempt's output so far (the live logs), only if the
    lease was renewed and the attempt is still running. On PostgreSQL that is the same statement (a
    data-modifying ``WITH``: ``WITH renewed AS (UPDATE task_runs ... RETURNING id), logged AS (UPDATE
    task_attempts ... FROM renewed) SELECT count(*) FROM renewed``), so the heartbeat costs no extra round
    trip; on SQLite (no DML in ``WITH``) a second statement in the same transaction."""
    renew = (update(T)
             .where(T.c.id == task_run_id, T.c.state == TaskState.RUNNING, T.c.lease_token == lease_token)
             .values(lease_expires_at=expires_at))
    if log is None or attempt is None:
        return bool(s.execute(renew).rowcount == 1)  # type: ignore[attr-defined]
    live = [A.c.attempt == attempt, A.c.outcome == AttemptOutcome.RUNNING]
    if _is_pg(s):
        renewed = renew.returning(T.c.id).cte("renewed")
        logged = update(A).where(A.c.task_run_id == renewed.c.id, *live).values(log=log).cte("logged")
        return bool(s.execute(select(func.count()).select_from(renewed).add_cte(logged)).scalar_one() == 1)
    if s.execute(renew).rowcount != 1:  # type: ignore[attr-defined]
        return False
    s.execute(update(A).where(A.c.task_run_id == task_run_id, *live).values(log=log))
    return True


def mark_handled(s: Session, task_ids: Iterable[int]) -> int:
    ids = list(task_ids)
    if not ids:
        return 0
    res = s.execute(update(T).where(T.c.id.in_(ids), T.c.handled.is_(False)).values(handled=True))
    return int(res.rowcount)  # type: ignore[attr-defined]


# -- attempts -----------------------------------------------------------------------------------------


def insert_attempt(s: Session, task: TaskRecord, *, attempt: int, worker: str, pid: int, now: datetime) -> None:
    """The attempt's row, at its claim (``now``); ``task`` is the claimed row (its ``ready_at`` gives how long
    the attempt waited for a worker: clamped at 0, a negative wait is clock skew between hosts)."""
    ready_at = task.ready_at
    wait = max((now - ready_at).total_seconds(), 0.0) if ready_at is not None else None
    s.execute(_INSERT_ATTEMPT, {"task_run_id": task.id, "attempt": attempt, "worker": worker, "pid": pid,
                                "outcome": AttemptOutcome.RUNNING, "started_at": now, "wait_seconds": wait})


#: a finished attempt's row, written by the finishing transition's own statement
_FINISH_ATTEMPT_FROM_UPD = (", att AS (UPDATE task_attempts SET outcome = %(a_outcome)s, finished_at = %(ev_now)s, "
                            "duration = EXTRACT(EPOCH FROM (%(ev_now)s - task_attempts.started_at)), "
                            "log = COALESCE(%(a_log)s, task_attempts.log) FROM upd "
                            "WHERE task_attempts.task_run_id = upd.id AND task_attempts.attempt = upd.attempt "
                            f"AND task_attempts.outcome = '{AttemptOutcome.RUNNING}')")


def finish_running(
    s: Session, task: TaskRecord, to: TaskState, *, fence: str, actor: str, reason: str, now: datetime,
    outcome: AttemptOutcome, log: str | None, started_at: datetime | None, **values: Any,
) -> bool:
    """A running attempt's end: :func:`transition_task` fenced by its lease token, then :func:`finish_attempt`
    (on PostgreSQL the update, its event and the attempt's row in one statement). False: the fence refused it."""
    if not _is_pg(s):
        if not transition_task(s, task, to, actor=actor, reason=reason, fence=fence, now=now, **values):
            return False
        finish_attempt(s, task.id, task.attempt, outcome=outcome, log=log, now=now, started_at=started_at)
        return True
    src = TaskState(task.state)
    check_task_transition(src, to)
    _terminal_defaults(to, values, now)
    values.update(state=to, updated_at=now)
    keys = ("id", f"state={src}", "attempt", "fence")
    names = tuple(sorted(values))
    sql = _driver_compile(s, ("finish_running", keys, names), lambda: (
        _guarded_update(keys, names, [T.c.id, T.c.run_id, T.c.name, T.c.attempt]), "WITH upd AS (",
        ")" + _EVENT_FROM_UPD + _FINISH_ATTEMPT_FROM_UPD + " SELECT upd.id FROM upd"))
    return _driver_execute(s, sql, {
        "w_id": task.id, "w_attempt": task.attempt, "w_fence": fence, "a_outcome": str(outcome), "a_log": log,
        **_bind(values), **_event_params(src, to, actor, reason, now)}).first() is not None


def finish_attempt(
    s: Session, task_run_id: int, attempt: int, *, outcome: AttemptOutcome, error: str | None = None,
    log: str | None = None, now: datetime | None = None, started_at: datetime | None = None,
) -> None:
    now = now or utcnow()
    if started_at is None:
        row = s.execute(select(A.c.started_at).where(A.c.task_run_id == task_run_id, A.c.attempt == attempt)).first()
        if row is None:
            return
        started_at = row.started_at
    values: dict[str, Any] = {"outcome": outcome, "finished_at": now,
                              "duration": (now - started_at).total_seconds()}
    if error is not None:
        values["error"] = error
    if log is not None:
        values["log"] = log
    s.execute(update(A).where(A.c.task_run_id == task_run_id, A.c.attempt == attempt,
                              A.c.outcome == AttemptOutcome.RUNNING).values(**values))


def attempts(s: Session, task_run_ids: Iterable[int]) -> Sequence[Row[Any]]:
    ids = list(task_run_ids)
    if not ids:
        return []
    return s.execute(select(A).where(A.c.task_run_id.in_(ids)).order_by(A.c.task_run_id, A.c.attempt)).all()


# -- events -------------------------------------------------------------------------------------------


def add_event(
    s: Session, *, run_id: int, to_state: str, actor: str, reason: str, from_state: str | None = None,
    task_run_id: int | None = None, task_name: str | None = None, attempt: int | None = None,
    now: datetime | None = None,
) -> None:
    s.execute(_INSERT_EVENT, {
        "run_id": run_id, "task_run_id": task_run_id, "task_name": task_name, "attempt": attempt,
        "from_state": str(from_state) if from_state is not None else None, "to_state": str(to_state),
        "actor": actor[:200], "reason": reason, "created_at": now or utcnow(),
    })


def run_events(s: Session, run_id: int) -> Sequence[Row[Any]]:
    return s.execute(select(E).where(E.c.run_id == run_id).order_by(E.c.id)).all()


# -- reconciler scans (each row locked; concurrent reconcilers skip each other's rows) ---------------------


def _locked(s: Session, q: Any) -> Any:
    return _lock(s, q, skip_locked=True, of=T, key_share=True)


def due_orphans(s: Session, now: datetime, limit: int) -> list[TaskRecord]:
    """Submitted tasks due for a re-publish, with their run's workflow name (for the message's label); not those
    of a paused run (their claims are refused until ``run resume`` re-publishes them)."""
    q = (select(T, R.c.workflow_name).join(R, R.c.id == T.c.run_id)
         .where(_state_is(TaskState.SUBMITTED), T.c.next_publish_at <= now,
                R.c.state != RunState.PAUSED)  # a paused run's are re-published by its resume
         .order_by(T.c.next_publish_at).limit(limit))
    return [TaskRecord.from_row(r) for r in s.execute(_locked(s, q))]


def expired_leases(s: Session, now: datetime, limit: int) -> list[TaskRecord]:
    """Running tasks whose lease lapsed, with their run's workflow name (a retry's message label)."""
    q = (select(T, R.c.workflow_name).join(R, R.c.id == T.c.run_id)
         .where(_state_is(TaskState.RUNNING), T.c.lease_expires_at.is_not(None), T.c.lease_expires_at < now)
         .order_by(T.c.lease_expires_at).limit(limit))
    return [TaskRecord.from_row(r) for r in s.execute(_locked(s, q))]


def due_steps(s: Session, now: datetime, limit: int) -> list[TaskRecord]:
    """Running timers and signal waits whose ``due_at`` passed (partial index ``ix_task_runs_due``), with their
    run's workflow name (the advance message's label)."""
    q = (select(T, R.c.workflow_name).join(R, R.c.id == T.c.run_id)
         .where(_state_is(TaskState.RUNNING), T.c.due_at.is_not(None), T.c.due_at <= now)
         .order_by(T.c.due_at).limit(limit))
    return [TaskRecord.from_row(r) for r in s.execute(_locked(s, q))]


def runs_with_unhandled_tasks(s: Session, older_than: datetime, limit: int) -> list[int]:
    q = (select(T.c.run_id).where(UNHANDLED, T.c.finished_at <= older_than)
         .order_by(T.c.finished_at).limit(limit))
    seen: dict[int, None] = {}
    for (run_id,) in s.execute(q):
        seen.setdefault(int(run_id), None)
    return list(seen)


def count_tasks_by_state(s: Session, run_id: int | None = None) -> dict[str, int]:
    q = select(T.c.state, func.count()).group_by(T.c.state)
    if run_id is not None:
        q = q.where(T.c.run_id == run_id)
    return {state: int(n) for state, n in s.execute(q)}


def count_runs_by_state(s: Session) -> dict[str, int]:
    return {state: int(n) for state, n in s.execute(select(R.c.state, func.count()).group_by(R.c.state))}


# -- counters (things that leave no row behind; /metrics reads them, app/metrics/queries.py) ----------------

#: ``counters`` row: execute messages retried because their task row was not visible yet
MISSING_ROW_RETRIES = "missing_row_retries"


def increment_counter(s: Session, name: str, n: int = 1) -> None:
    """``INSERT ... ON CONFLICT (name) DO UPDATE SET value = counters.value + n`` (PostgreSQL and SQLite)."""
    ins = (pg_insert if _is_pg(s) else sqlite_insert)(C).values(name=name, value=n)
    s.execute(ins.on_conflict_do_update(index_elements=[C.c.name], set_={"value": C.c.value + ins.excluded.value}))


# -- signals (a code run's; the caller holds the run's lock, so a signal and an advance never interleave) -------


def insert_signal(
    s: Session, run_id: int, name: str, data: Any, *, key: str | None, actor: str, now: datetime,
) -> SignalRecord:
    row = s.execute(insert(S).values(run_id=run_id, name=name, data=data, key=key, actor=actor[:200],
                                     created_at=now).returning(*S.c)).one()
    return SignalRecord.from_row(row)


def signal_by_key(s: Session, run_id: int, key: str) -> SignalRecord | None:
    row = s.execute(select(S).where(S.c.run_id == run_id, S.c.key == key)).first()
    return SignalRecord.from_row(row) if row is not None else None


def pending_signals(s: Session, run_id: int) -> list[tuple[int, str, Any]]:
    """Signals not delivered yet, oldest first: (id, name, data)."""
    q = select(S.c.id, S.c.name, S.c.data).where(S.c.run_id == run_id, S.c.task_run_id.is_(None)).order_by(S.c.id)
    return [(int(i), str(n), d) for i, n, d in s.execute(q)]


def run_signals(s: Session, run_id: int) -> list[SignalRecord]:
    return [SignalRecord.from_row(r) for r in s.execute(select(S).where(S.c.run_id == run_id).order_by(S.c.id))]


def deliver_signal(s: Session, signal_id: int, task_run_id: int) -> bool:
    """Mark a signal delivered to a ``wait_signal`` step (once: guarded on not delivered yet)."""
    res = s.execute(update(S).where(S.c.id == signal_id, S.c.task_run_id.is_(None)).values(task_run_id=task_run_id))
    return bool(res.rowcount == 1)  # type: ignore[attr-defined]


def waiting_signal_step(s: Session, run_id: int, name: str) -> TaskRecord | None:
    """The run's oldest running wait for signal ``name`` (a run waits on few things at once: filtered here)."""
    q = (select(T).where(T.c.run_id == run_id, T.c.type == "signal", _state_is(TaskState.RUNNING))
         .order_by(T.c.seq))
    waits = (TaskRecord.from_row(r) for r in s.execute(q))
    return next((t for t in waits if (t.body.signal or "") == name), None)


def set_child_run(s: Session, task_run_id: int, old_child: int, new_child: int) -> bool:
    """A child run continued as new: its parent task now waits for the continuation."""
    res = s.execute(update(T).where(T.c.id == task_run_id, T.c.child_run_id == old_child)
                    .values(child_run_id=new_child, updated_at=utcnow()))
    return bool(res.rowcount == 1)  # type: ignore[attr-defined]


# -- schedules (app/services/scheduler.py) ------------------------------------------------------------------------

SCH: Table = Schedule.__table__  # type: ignore[assignment]
SF: Table = ScheduleFire.__table__  # type: ignore[assignment]
BF: Table = Backfill.__table__  # type: ignore[assignment]

#: runs that are not terminal (a blocked code run waits for a person: still live for overlap and backfills)
_RUN_LIVE = R.c.state.notin_([str(st) for st in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED)])


def schedules(s: Session, *, workflow_name: str | None = None, include_inactive: bool = False) -> list[Row[Any]]:
    q = select(SCH).order_by(SCH.c.name)
    if workflow_name is not None:
        q = q.where(SCH.c.workflow_name == workflow_name)
    if not include_inactive:
        q = q.where(SCH.c.active)
    return list(s.execute(q))


def schedule(s: Session, name: str, *, lock: bool = False, skip_locked: bool = False) -> Row[Any] | None:
    return s.execute(_lock(s, select(SCH).where(SCH.c.name == name), lock=lock, skip_locked=skip_locked)).first()


def insert_schedule(s: Session, *, name: str, workflow_name: str, spec: dict[str, Any], cursor: datetime,
                    next_due_at: datetime | None) -> None:
    now = utcnow()
    s.execute(insert(SCH).values(name=name, workflow_name=workflow_name, spec=spec, paused=False, active=True,
                                 cursor=cursor, next_due_at=next_due_at, created_at=now, updated_at=now))


def update_schedule(s: Session, name: str, **values: Any) -> int:
    res = s.execute(update(SCH).where(SCH.c.name == name).values(updated_at=utcnow(), **values))
    return int(res.rowcount)  # type: ignore[attr-defined]


def due_schedule_names(s: Session, now: datetime, limit: int) -> list[str]:
    """Active, unpaused schedules whose next fire time is due (index ``ix_schedules_due``)."""
    q = (select(SCH.c.name).where(SCH.c.active, ~SCH.c.paused, SCH.c.next_due_at <= now)
         .order_by(SCH.c.next_due_at).limit(limit))
    return list(s.execute(q).scalars())


def insert_fire(s: Session, *, schedule_name: str, fire_time: datetime, outcome: str, reason: str, actor: str,
                run_id: int | None = None, backfill_id: int | None = None) -> bool:
    """Record a fire time; False when (schedule, fire time) is recorded already (by anyone: the unique constraint
    decides, also between racing schedulers: the second insert waits for the first's transaction)."""
    now = utcnow()
    values = dict(schedule_name=schedule_name, fire_time=fire_time, outcome=outcome, reason=reason,
                  actor=actor[:200], run_id=run_id, backfill_id=backfill_id, created_at=now, updated_at=now)
    ins = (pg_insert(SF) if _is_pg(s) else sqlite_insert(SF)).values(**values)
    res = s.execute(ins.on_conflict_do_nothing(index_elements=["schedule_name", "fire_time"]))
    return bool(res.rowcount)  # type: ignore[attr-defined]


def update_fire(s: Session, fire_id: int, *, expect_outcome: str, **values: Any) -> bool:
    """A guarded change of a fire row (buffered/pending -> started or skipped)."""
    res = s.execute(update(SF).where(SF.c.id == fire_id, SF.c.outcome == expect_outcome)
                    .values(updated_at=utcnow(), **values))
    return bool(res.rowcount)  # type: ignore[attr-defined]


def set_fire_run(s: Session, schedule_name: str, fire_time: datetime, run_id: int) -> None:
    s.execute(update(SF).where(SF.c.schedule_name == schedule_name, SF.c.fire_time == fire_time)
              .values(run_id=run_id))


def fire(s: Session, schedule_name: str, fire_time: datetime) -> Row[Any] | None:
    return s.execute(select(SF).where(SF.c.schedule_name == schedule_name, SF.c.fire_time == fire_time)).first()


def fires(s: Session, schedule_name: str, *, limit: int = 20, outcome: str | None = None) -> list[Row[Any]]:
    """A schedule's fire times, newest first, with their run's state."""
    q = (select(SF, R.c.state.label("run_state")).select_from(SF.outerjoin(R, R.c.id == SF.c.run_id))
         .where(SF.c.schedule_name == schedule_name).order_by(SF.c.fire_time.desc()).limit(limit))
    if outcome is not None:
        q = q.where(SF.c.outcome == outcome)
    return list(s.execute(q))


def live_schedule_runs(s: Session, schedule_name: str) -> list[RunRecord]:
    """The runs a schedule started that are not terminal (``overlap``)."""
    q = select(R).where(R.c.schedule_name == schedule_name, _RUN_LIVE).order_by(R.c.id)
    return [RunRecord.from_row(r) for r in s.execute(q)]


def waiting_fires(s: Session, outcome: str, limit: int) -> list[Row[Any]]:
    """Fire rows waiting to start (``buffered``, or a backfill's ``pending``), oldest first per schedule (index
    ``ix_schedule_fires_waiting``)."""
    q = select(SF).where(SF.c.outcome == literal_column(f"'{outcome}'")).order_by(SF.c.schedule_name,
                                                                                SF.c.fire_time).limit(limit)
    return list(s.execute(q))


def insert_backfill(s: Session, *, schedule_name: str, start: datetime, end: datetime, parallel: int,
                    actor: str) -> tuple[int, bool]:
    """The backfill of (schedule, start, end): (its id, created). An existing one is the answer."""
    found = s.execute(select(BF.c.id).where(BF.c.schedule_name == schedule_name, BF.c.range_start == start,
                                            BF.c.range_end == end)).scalar()
    if found is not None:
        return int(found), False
    now = utcnow()
    try:
        with s.begin_nested():
            new_id = s.execute(insert(BF).values(
                schedule_name=schedule_name, range_start=start, range_end=end, parallel=parallel, state="running",
                actor=actor[:200], created_at=now, updated_at=now).returning(BF.c.id)).scalar_one()
    except IntegrityError:
        found = s.execute(select(BF.c.id).where(BF.c.schedule_name == schedule_name, BF.c.range_start == start,
                                                BF.c.range_end == end)).scalar()
        assert found is not None
        return int(found), False
    return int(new_id), True


def backfill(s: Session, backfill_id: int, *, lock: bool = False) -> Row[Any] | None:
    return s.execute(_lock(s, select(BF).where(BF.c.id == backfill_id), lock=lock, skip_locked=True)).first()


def running_backfill_ids(s: Session) -> list[int]:
    return list(s.execute(select(BF.c.id).where(BF.c.state == "running").order_by(BF.c.id)).scalars())


def backfills(s: Session, schedule_name: str) -> list[Row[Any]]:
    return list(s.execute(select(BF).where(BF.c.schedule_name == schedule_name).order_by(BF.c.id.desc())))


def backfill_counts(s: Session, backfill_id: int) -> dict[str, int]:
    """A backfill's fire rows by progress: pending, live (run not terminal), done (run terminal), skipped."""
    q = (select(SF.c.outcome, R.c.state).select_from(SF.outerjoin(R, R.c.id == SF.c.run_id))
         .where(SF.c.backfill_id == backfill_id))
    out = {"pending": 0, "live": 0, "done": 0, "skipped": 0}
    for outcome, state in s.execute(q):
        if outcome == "started":
            out["done" if state in ("succeeded", "failed", "cancelled") else "live"] += 1
        elif outcome in out:
            out[outcome] += 1
    return out


def backfill_pending(s: Session, backfill_id: int, limit: int) -> list[Row[Any]]:
    q = (select(SF).where(SF.c.backfill_id == backfill_id, SF.c.outcome == literal_column("'pending'"))
         .order_by(SF.c.fire_time).limit(limit))
    return list(s.execute(q))


def set_backfill(s: Session, backfill_id: int, **values: Any) -> None:
    s.execute(update(BF).where(BF.c.id == backfill_id).values(updated_at=utcnow(), **values))


# -- limits (app/services/limits.py: pools) ------------------------------------------------------------


def set_pool(s: Session, name: str, slots: int, now: datetime, rate_limit: str | None = None) -> None:
    """Create or resize a pool (an upsert: ``INSERT ... ON CONFLICT (name) DO UPDATE``)."""
    ins = (pg_insert if _is_pg(s) else sqlite_insert)(P).values(name=name, slots=slots, rate_limit=rate_limit,
                                                                updated_at=now)
    s.execute(ins.on_conflict_do_update(index_elements=[P.c.name],
                                        set_={"slots": slots, "rate_limit": rate_limit, "updated_at": now}))


def lock_pool(s: Session, name: str, *, lock: bool = True) -> tuple[int, str | None] | None:
    """The pool's slots and rate limit, its row locked for this transaction (``FOR UPDATE``; ``lock=False``: only read):
    admissions into one pool are serialised, so two claims never both see its last free slot. None: no such
    pool. (SQLite: the IMMEDIATE transaction already holds the database's write lock.)"""
    row = s.execute(_lock(s, select(P.c.slots, P.c.rate_limit).where(P.c.name == name), lock=lock)).first()
    return (int(row.slots), row.rate_limit) if row is not None else None


def pools(s: Session) -> dict[str, int]:
    """Every pool's slots, by name."""
    return {str(n): int(v) for n, v in s.execute(select(P.c.name, P.c.slots).order_by(P.c.name))}


def pool_rates(s: Session) -> dict[str, str]:
    """The rate limits of the pools that have one, by name."""
    q = select(P.c.name, P.c.rate_limit).where(P.c.rate_limit.is_not(None))
    return {str(n): str(r) for n, r in s.execute(q)}


def pool_usage(s: Session, names: Iterable[str] | None = None) -> dict[str, tuple[int, int]]:
    """Per pool named by a live task: (running, waiting) - its tasks running (each holds a slot until its
    attempt ends: it finishes, or the reconciler declares its lapsed lease lost) and submitted (waiting for a
    slot or a worker). Index ``ix_task_runs_pool``."""
    q = (select(T.c.pool, T.c.state, func.count()).where(T.c.pool.is_not(None), _state_is(*_POOL_LIVE))
         .group_by(T.c.pool, T.c.state))
    if names is not None:
        wanted = list(names)
        if not wanted:
            return {}
        q = q.where(T.c.pool.in_(wanted))
    usage: dict[str, list[int]] = {}
    for pool, state, n in s.execute(q):
        usage.setdefault(str(pool), [0, 0])[0 if state == TaskState.RUNNING else 1] += int(n)
    return {p: (u[0], u[1]) for p, u in usage.items()}


def pool_running(s: Session, name: str) -> int:
    """Slots of the pool in use now: its running tasks (read after :func:`lock_pool`)."""
    q = select(func.count()).where(T.c.pool == name, _state_is(TaskState.RUNNING))
    return int(s.execute(q).scalar_one())


def pool_waiting(
    s: Session, name: str, limit: int, *, now: datetime, published_before: datetime | None = None,
) -> list[TaskRecord]:
    """The pool's submitted tasks that may run now (retry delay over), next first: by priority (9 first), then by
    how long they have been ready (first come). ``published_before``: only those not (re-)published since."""
    return _waiting(s, T.c.pool == name, limit, now, published_before)


def _waiting(s: Session, owner: Any, limit: int, now: datetime, published_before: datetime | None
             ) -> list[TaskRecord]:
    """:func:`pool_waiting` of the tasks ``owner`` (a pool's, a concurrency key's) selects."""
    q = (select(T, R.c.workflow_name).join(R, R.c.id == T.c.run_id)
         .where(owner, _state_is(TaskState.SUBMITTED), or_(T.c.not_before.is_(None), T.c.not_before <= now))
         .order_by(T.c.priority.desc(), T.c.ready_at, T.c.id).limit(limit))
    if published_before is not None:
        q = q.where(T.c.updated_at <= published_before)
    return [TaskRecord.from_row(r) for r in s.execute(q)]


# -- limits: max_active_runs (app/services/limits.py) ------------------------------------------------------


def lock_workflow_name(s: Session, name: str) -> None:
    """Serialise the admissions of one workflow's runs: its first version's row, locked for this transaction
    (``FOR NO KEY UPDATE``: run inserts' foreign-key checks, ``KEY SHARE``, do not wait on it)."""
    s.execute(_lock(s, select(W.c.id).where(W.c.name == name).order_by(W.c.version).limit(1), key_share=True)).first()


#: the run states that hold a slot of ``max_active_runs`` / a workflow concurrency key: a paused run keeps its slot
#: (resuming it must not exceed the limit)
_HOLDS_SLOT = (str(RunState.RUNNING), str(RunState.PAUSED))


def count_runs_in(s: Session, workflow_name: str, state: RunState, *, concurrency_key: str | None = None) -> int:
    """The workflow's runs in ``state`` (with ``concurrency_key``: only those with that key). ``running`` counts the
    paused runs too: they hold their slot."""
    states = _HOLDS_SLOT if state == RunState.RUNNING else (str(state),)
    q = select(func.count()).where(R.c.workflow_name == workflow_name, R.c.state.in_(states))
    if concurrency_key is not None:
        q = q.where(R.c.concurrency_key == concurrency_key)
    return int(s.execute(q).scalar_one())


def running_run_keys(s: Session, workflow_name: str) -> dict[str, int]:
    """The workflow's running (or paused: they hold their slot) runs per concurrency key."""
    q = (select(R.c.concurrency_key, func.count()).where(R.c.workflow_name == workflow_name,
                                                         R.c.state.in_(_HOLDS_SLOT),
                                                         R.c.concurrency_key.is_not(None))
         .group_by(R.c.concurrency_key))
    return {str(k): int(n) for k, n in s.execute(q)}


def queued_runs(s: Session, workflow_name: str, limit: int) -> list[RunRecord]:
    """The workflow's queued runs, next first: by priority (9 first), then first come (index
    ``ix_workflow_runs_queued``); each locked unless another transaction holds it (``SKIP LOCKED``)."""
    q = (select(R).where(R.c.workflow_name == workflow_name, R.c.state == literal_column(f"'{RunState.QUEUED}'"))
         .order_by(R.c.priority.desc(), R.c.id).limit(limit))
    return [RunRecord.from_row(r) for r in s.execute(_lock(s, q, skip_locked=True, key_share=True))]


def workflows_with_queued_runs(s: Session) -> list[str]:
    q = select(R.c.workflow_name).where(R.c.state == literal_column(f"'{RunState.QUEUED}'")).distinct()
    return sorted(str(n) for (n,) in s.execute(q))



# -- limits: concurrency keys of tasks ----------------------------------------------------------------------


def lock_concurrency_key(s: Session, key: str) -> None:
    """Serialise the admissions of one task concurrency key: a transaction-scoped advisory lock on PostgreSQL
    (``pg_advisory_xact_lock``, released at commit; there is no row per key to lock). SQLite: the IMMEDIATE
    transaction already holds the database's write lock."""
    if _is_pg(s):
        s.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(f"tideflow.concurrency:{key}", 0))))


def key_running(s: Session, key: str) -> int:
    q = select(func.count()).where(T.c.concurrency_key == key, _state_is(TaskState.RUNNING))
    return int(s.execute(q).scalar_one())


def key_usage(s: Session, keys: Iterable[str] | None = None) -> dict[str, tuple[int, int, int]]:
    """Per task concurrency key with live tasks: (running, waiting, limit) - the limit is the largest its live
    tasks carry. Index ``ix_task_runs_concurrency_key``."""
    q = (select(T.c.concurrency_key, T.c.state, func.count(), func.max(T.c.concurrency_limit))
         .where(T.c.concurrency_key.is_not(None), _state_is(*_POOL_LIVE)).group_by(T.c.concurrency_key, T.c.state))
    if keys is not None:
        wanted = list(keys)
        if not wanted:
            return {}
        q = q.where(T.c.concurrency_key.in_(wanted))
    usage: dict[str, list[int]] = {}
    for key, state, n, limit in s.execute(q):
        u = usage.setdefault(str(key), [0, 0, 0])
        u[0 if state == TaskState.RUNNING else 1] += int(n)
        u[2] = max(u[2], int(limit or 0))
    return {k: (u[0], u[1], u[2]) for k, u in usage.items()}


def key_waiting(s: Session, key: str, limit: int, *, now: datetime,
                published_before: datetime | None = None) -> list[TaskRecord]:
    """:func:`pool_waiting` for a task concurrency key."""
    return _waiting(s, T.c.concurrency_key == key, limit, now, published_before)



# -- limits: rate limits (a sliding log of starts per rate key) -----------------------------------------------


def rate_window(s: Session, key: str, since: datetime) -> tuple[int, datetime | None]:
    """Starts of ``key`` after ``since``, and the oldest of them (index ``ix_rate_starts_rate_key_started_at``)."""
    row = s.execute(select(func.count(), func.min(RS.c.started_at))
                    .where(RS.c.rate_key == key, RS.c.started_at > since)).one()
    oldest = row[1]
    if oldest is not None and oldest.tzinfo is None:  # an aggregate is not typed: SQLite gives naive UTC text
        oldest = (datetime.fromisoformat(oldest) if isinstance(oldest, str) else oldest).replace(tzinfo=UTC)
    return int(row[0]), oldest


def record_start(s: Session, key: str, now: datetime, *, forget_before: datetime) -> None:
    """Count one start against ``key``, and forget its starts that left the window."""
    s.execute(delete(RS).where(RS.c.rate_key == key, RS.c.started_at <= forget_before))
    s.execute(insert(RS).values(rate_key=key, started_at=now))


# -- retention: deleting old finished runs (``tideflow db prune``) ------------------------------------------------

_RUN_TERMINAL_STATES = sorted(str(st) for st in RUN_TERMINAL)


def prunable_runs(s: Session, finished_before: datetime, limit: int, *, after: int = 0) -> list[int]:
    """Up to ``limit`` top-level runs (no parent task) that are terminal and finished before ``finished_before``,
    oldest id first, locked for this transaction (PostgreSQL; one locked by someone else is skipped), except a run
    that a backfill still running counts (its fire row's run state is how the backfill tells a live fire time from
    a done one)."""
    in_running_backfill = exists(select(SF.c.id).join(BF, BF.c.id == SF.c.backfill_id)
                                 .where(SF.c.run_id == R.c.id, BF.c.state == "running"))
    q = (select(R.c.id).where(R.c.id > after, R.c.parent_task_run_id.is_(None), R.c.state.in_(_RUN_TERMINAL_STATES),
                              R.c.finished_at < finished_before, ~in_running_backfill)
         .order_by(R.c.id).limit(limit))
    # as lock_run does: a retry or rerun of one of them waits for this transaction, or is skipped
    return list(s.execute(_lock(s, q, skip_locked=True, key_share=True)).scalars())


def run_trees(s: Session, root_ids: Sequence[int]) -> tuple[list[int], set[int]]:
    """The runs of each root's tree (the root, its child runs, theirs...; locked, on PostgreSQL), and the roots
    whose tree holds a run that is not terminal (a child still running, paused or blocked: not to be pruned)."""
    root_of = {r: r for r in root_ids}
    live_roots: set[int] = set()
    level = list(root_ids)
    while level:
        q = (select(R.c.id, R.c.state, T.c.run_id).select_from(R.join(T, T.c.id == R.c.parent_task_run_id))
             .where(T.c.run_id.in_(level)))
        level = []
        for child, state, parent in s.execute(_lock(s, q, of=R, key_share=True)):
            if child in root_of:
                continue
            root_of[child] = root_of[parent]
            if state not in _RUN_TERMINAL_STATES:
                live_roots.add(root_of[child])
            level.append(child)
    return [r for r, root in root_of.items() if root not in live_roots], live_roots


def delete_runs(s: Session, run_ids: Sequence[int]) -> dict[str, int]:
    """Delete runs with their tasks, attempts, events and signals (callers pass whole finished trees, see
    :func:`run_trees`). A schedule's fire row stays (it is what makes its fire time start at most one run), with
    no run. Returns the rows deleted per table."""
    if not run_ids:
        return {"runs": 0, "tasks": 0, "attempts": 0, "events": 0, "signals": 0}
    ids = list(run_ids)
    tasks = select(T.c.id).where(T.c.run_id.in_(ids)).scalar_subquery()

    def count(res: Any) -> int:
        return int(res.rowcount)

    # the two links between a parent's task and its child run, in both directions, go first
    s.execute(update(T).where(T.c.run_id.in_(ids), T.c.child_run_id.is_not(None)).values(child_run_id=None))
    s.execute(update(R).where(R.c.id.in_(ids), R.c.parent_task_run_id.is_not(None)).values(parent_task_run_id=None))
    # by run id (indexed: ix_events_run_id_id, the signals' (run_id, key)): an event or signal about a task is its
    # run's; one that were not would fail the batch's foreign keys, deleting nothing
    out = {"events": count(s.execute(delete(E).where(E.c.run_id.in_(ids)))),
           "signals": count(s.execute(delete(S).where(S.c.run_id.in_(ids)))),
           "attempts": count(s.execute(delete(A).where(A.c.task_run_id.in_(tasks))))}
    s.execute(update(SF).where(SF.c.run_id.in_(ids)).values(run_id=None))
    out["tasks"] = count(s.execute(delete(T).where(T.c.run_id.in_(ids))))
    out["runs"] = count(s.execute(delete(R).where(R.c.id.in_(ids))))
    return out


def count_tasks(s: Session, run_ids: Sequence[int]) -> int:
    return int(s.execute(select(func.count()).select_from(T).where(T.c.run_id.in_(list(run_ids)))).scalar_one())
