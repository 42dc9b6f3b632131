"""The SQL of ``/metrics`` (:mod:`app.metrics`): read-only queries over the tables the engine writes. Rows are
written by :mod:`app.db.repository` (``counters`` through ``repo.increment_counter``); nothing here writes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, case, exists, func, literal_column, or_, select
from sqlalchemy.orm import Session

from app.db.repository import A, C, E, R, S, T, W
from app.states import TaskKind, TaskState

# -- totals and lookups ---------------------------------------------------------------------------------


def counter_values(s: Session) -> dict[str, int]:
    return {name: int(value) for name, value in s.execute(select(C.c.name, C.c.value))}


def workflow_ids(s: Session) -> list[int]:
    return [int(i) for i in s.scalars(select(W.c.id))]


def workflow_definitions(s: Session, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    wanted = list(ids)
    if not wanted:
        return {}
    return {int(i): d for i, d in s.execute(select(W.c.id, W.c.definition).where(W.c.id.in_(wanted)))}


# -- incremental scans of append-only rows (the caller keeps the cursor, see app/metrics/__init__.py) -------


def snapshot(s: Session) -> None:
    """Make the rest of this read transaction one consistent snapshot across statements. Call it first:
    PostgreSQL switches the transaction to REPEATABLE READ; an SQLite read transaction already is one."""
    if s.get_bind().dialect.name == "postgresql":
        s.connection(execution_options={"isolation_level": "REPEATABLE READ"})


class EventKind(StrEnum):
    """What an event row counts as, for ``/metrics``."""

    FIRST = "first"  # pending -> submitted: dependencies met, first publish of an attempt
    RETRY = "retry"  # running -> submitted: the attempt failed, a new one is published
    LOST_RETRY = "lost_retry"  # the same, because the reconciler found the attempt's lease expired
    LOST_FAILED = "lost_failed"  # running -> failed: lease expired and no retries left
    REPUBLISH = "republish"  # submitted -> submitted: the reconciler re-published an unclaimed attempt
    OTHER = "other"


def _event_kind() -> Any:
    """The event's :class:`EventKind`, in SQL. A lease expiry is the transition out of ``running`` whose
    attempt ended ``lost`` (only the reconciler writes that outcome, in the same transaction); a retry's
    event carries the new attempt number, a failure's the attempt that ended."""
    lost_attempt = case((E.c.to_state == TaskState.SUBMITTED, E.c.attempt - 1), else_=E.c.attempt)
    lost = exists().where(A.c.task_run_id == E.c.task_run_id, A.c.attempt == lost_attempt, A.c.outcome == "lost")
    src, dst = E.c.from_state, E.c.to_state
    return case(
        (and_(src == TaskState.PENDING, dst == TaskState.SUBMITTED), EventKind.FIRST.value),
        (and_(src == TaskState.SUBMITTED, dst == TaskState.SUBMITTED), EventKind.REPUBLISH.value),
        (and_(src == TaskState.RUNNING, dst == TaskState.SUBMITTED, lost), EventKind.LOST_RETRY.value),
        (and_(src == TaskState.RUNNING, dst == TaskState.SUBMITTED), EventKind.RETRY.value),
        (and_(src == TaskState.RUNNING, dst == TaskState.FAILED, lost), EventKind.LOST_FAILED.value),
        else_=EventKind.OTHER.value,
    )


IdRanges = Sequence[tuple[int, int]]


def _in_ranges(col: Any, ranges: IdRanges) -> Any:
    return or_(*(col.between(lo, hi) for lo, hi in ranges))


def event_kinds_after(s: Session, after_id: int) -> tuple[dict[str, int], int]:
    """Events with ``id > after_id``, counted by :class:`EventKind` (every row, ``other`` included), and the
    highest id seen (``after_id`` if none). One scan of the new rows by primary key."""
    kind = _event_kind().label("kind")
    rows = s.execute(select(kind, func.count(), func.max(E.c.id)).where(E.c.id > after_id).group_by(kind)).all()
    return {k: int(n) for k, n, _ in rows}, max((int(m) for _, _, m in rows), default=after_id)


def event_kinds_in(s: Session, ranges: IdRanges) -> list[tuple[int, str]]:
    """(id, kind) of the events inside ``ranges`` (ids a scan found missing: normally few, late commits)."""
    if not ranges:
        return []
    q = select(E.c.id, _event_kind()).where(_in_ranges(E.c.id, ranges))
    return [(int(i), str(k)) for i, k in s.execute(q)]


def attempt_waits_after(
    s: Session, after_id: int, bounds: Sequence[float],
) -> tuple[dict[int, tuple[int, float]], int, int]:
    """Attempts with ``id > after_id``: {bucket index: (count, sum of waits)} (see :func:`_bucket_of`; -1: not
    recorded), the number of rows and the highest id seen (``after_id`` if none)."""
    bucket = _bucket_of(A.c.wait_seconds, bounds).label("bucket")
    q = (select(bucket, func.count(), func.coalesce(func.sum(A.c.wait_seconds), 0.0), func.max(A.c.id))
         .where(A.c.id > after_id).group_by(bucket))
    rows = s.execute(q).all()
    return ({int(b): (int(n), float(total)) for b, n, total, _ in rows}, sum(int(n) for _, n, _, _ in rows),
            max((int(m) for *_, m in rows), default=after_id))


def attempt_waits_in(s: Session, ranges: IdRanges) -> list[tuple[int, float | None]]:
    """(id, wait_seconds) of the attempts inside ``ranges`` (late commits of ids a scan found missing)."""
    if not ranges:
        return []
    return [(int(i), w) for i, w in s.execute(select(A.c.id, A.c.wait_seconds).where(_in_ranges(A.c.id, ranges)))]


def _missing_ids(s: Session, col: Any, at: Any, after_id: int, upto: int) -> list[tuple[int, int, datetime]]:
    prev = func.lag(col, 1, after_id).over(order_by=col)
    sub = select(col.label("id"), prev.label("prev"), at.label("at")).where(col > after_id, col <= upto).subquery()
    q = select(sub.c.prev + 1, sub.c.id - 1, sub.c.at).where(sub.c.id - sub.c.prev > 1).order_by(sub.c.id)
    return [(int(lo), int(hi), when) for lo, hi, when in s.execute(q)]


def missing_event_ids(s: Session, after_id: int, upto: int) -> list[tuple[int, int, datetime]]:
    """Ranges of ids in ``(after_id, upto]`` with no visible event (transactions still open when the snapshot
    was taken, which may commit later; rolled back ones; skipped sequence values), each with the time of the
    visible event right after it: its ids were handed out before then."""
    return _missing_ids(s, E.c.id, E.c.created_at, after_id, upto)


def missing_attempt_ids(s: Session, after_id: int, upto: int) -> list[tuple[int, int, datetime]]:
    """Like :func:`missing_event_ids`, for ``task_attempts`` (with the next attempt's start)."""
    return _missing_ids(s, A.c.id, A.c.started_at, after_id, upto)


def missing_task_ids(s: Session, after_id: int, upto: int) -> list[tuple[int, int, datetime]]:
    """Like :func:`missing_event_ids`, for ``task_runs`` (with the next row's creation)."""
    return _missing_ids(s, T.c.id, T.c.created_at, after_id, upto)


# -- code runs (gauges and totals read whole at each scrape: timers and signals are few next to events) -------


def runs_by_kind_and_state(s: Session) -> dict[tuple[str, str], int]:
    """{(kind, state): runs} (``workflow_runs.kind``: dag or code)."""
    q = select(R.c.kind, R.c.state, func.count()).group_by(R.c.kind, R.c.state)
    return {(str(kind), str(state)): int(n) for kind, state, n in s.execute(q)}


def _timer_steps() -> Any:
    return and_(T.c.type == TaskKind.TIMER.value, T.c.due_at.is_not(None))


def pending_timers(s: Session) -> tuple[int, datetime | None]:
    """Code-run timer steps not fired yet (``ctx.sleep``: running until the reconciler fires them at
    ``due_at``; partial index ``ix_task_runs_due``), and the earliest due time among them."""
    q = select(func.count(), func.min(T.c.due_at)).where(
        T.c.state == literal_column(f"'{TaskState.RUNNING.value}'"), T.c.due_at.is_not(None),
        T.c.type == TaskKind.TIMER.value)
    n, earliest = s.execute(q).one()
    if isinstance(earliest, str):  # SQLite: a MIN() over the column loses its type
        earliest = datetime.fromisoformat(earliest)
    if earliest is not None and earliest.tzinfo is None:
        earliest = earliest.replace(tzinfo=UTC)
    return int(n), earliest


def signal_totals(s: Session) -> tuple[int, int]:
    """Signals received (every row of ``signals``: stored on receipt, never deleted) and delivered to a
    ``wait_signal`` (``task_run_id`` set)."""
    received, delivered = s.execute(select(func.count(), func.count(S.c.task_run_id))).one()
    return int(received), int(delivered)


def _seconds(s: Session, later: Any, earlier: Any) -> Any:
    """``later - earlier`` in seconds, in SQL (PostgreSQL: timestamptz; SQLite: naive UTC text)."""
    if s.get_bind().dialect.name == "postgresql":
        return func.extract("epoch", later - earlier)
    return (func.julianday(later) - func.julianday(earlier)) * 86400.0


def timer_delays(s: Session, bounds: Sequence[float]) -> tuple[list[int], float]:
    """Fired timers (succeeded timer steps): per bucket of ``bounds`` (not cumulative, +Inf last) how long
    after its due time each was fired (``finished_at - due_at``, 0 if a clock put it before), and their sum."""
    delay = _seconds(s, T.c.finished_at, T.c.due_at)
    clamped = case((delay < 0, 0.0), else_=delay)
    bucket = case(*((clamped <= bound, i) for i, bound in enumerate(bounds)), else_=len(bounds)).label("bucket")
    q = (select(bucket, func.count(), func.coalesce(func.sum(clamped), 0.0))
         .where(_timer_steps(), T.c.state == TaskState.SUCCEEDED.value, T.c.finished_at.is_not(None))
         .group_by(bucket))
    counts = [0] * (len(bounds) + 1)
    total = 0.0
    for b, n, summed in s.execute(q):
        counts[int(b)] += int(n)
        total += float(summed)
    return counts, total


def _advance_latency(s: Session) -> Any:
    """Per task row, in SQL: for a code run's step that its workflow's pass made first (the lowest position among
    the steps the pass created: they share their ``created_at``), the seconds from the latest finish of an earlier
    step before that (what the pass acted on: an activity's end, a timer fired, a signal or a child's end) to the
    step's creation; NULL for every other row (DAG tasks, a pass's later steps, a run's first pass)."""
    prior_t, same_t = T.alias("prior"), T.alias("same_pass")
    prior = (select(func.max(prior_t.c.finished_at))
             .where(prior_t.c.run_id == T.c.run_id, prior_t.c.seq < T.c.seq, prior_t.c.finished_at <= T.c.created_at)
             .scalar_subquery())
    first_of_pass = ~exists().where(same_t.c.run_id == T.c.run_id, same_t.c.seq < T.c.seq,
                                    same_t.c.created_at == T.c.created_at)
    return case((and_(T.c.seq > 0, first_of_pass), _seconds(s, T.c.created_at, prior)), else_=None)


def _bucket_of(value: Any, bounds: Sequence[float]) -> Any:
    """Index of the first bound >= ``value`` (``len(bounds)``: above them all; -1: NULL)."""
    return case((value.is_(None), -1), *((value <= bound, i) for i, bound in enumerate(bounds)), else_=len(bounds))


def advance_latencies_after(
    s: Session, after_id: int, bounds: Sequence[float],
) -> tuple[dict[int, tuple[int, float]], int, int]:
    """Task rows with ``id > after_id``: {bucket index: (count, sum)} of :func:`_advance_latency` (bucket -1:
    rows without one), the number of rows and the highest id seen (``after_id`` if none)."""
    n, top = s.execute(select(func.count(), func.max(T.c.id)).where(T.c.id > after_id)).one()
    # only code runs' later steps can have a latency (DAG tasks have no seq): the correlated lookups run for them
    # alone, in a statement of their own (in one statement with the count over every new row, the planner's cost
    # estimate of a long DAG history turned PostgreSQL's JIT on: 18 s for a first scrape of 20,000 tasks in
    # bench/metrics_scrape.py, 27 ms so)
    inner = (select(_advance_latency(s).label("latency")).where(T.c.id > after_id, T.c.seq > 0)
             .subquery())
    latency = func.max(inner.c.latency, 0.0) if s.get_bind().dialect.name == "sqlite" else \
        func.greatest(inner.c.latency, 0.0)
    clamped = case((inner.c.latency.is_(None), None), else_=latency)
    bucket = _bucket_of(clamped, bounds).label("bucket")
    q = select(bucket, func.count(), func.coalesce(func.sum(clamped), 0.0)).group_by(bucket)
    by_bucket = {int(b): (int(k), float(total)) for b, k, total in s.execute(q)}
    return by_bucket, int(n), int(top) if top is not None else after_id


def advance_latencies_in(s: Session, ranges: IdRanges) -> list[tuple[int, float | None]]:
    """(id, latency) of the task rows inside ``ranges`` (late commits of ids a scan found missing)."""
    if not ranges:
        return []
    q = select(T.c.id, _advance_latency(s)).where(_in_ranges(T.c.id, ranges))
    return [(int(i), None if v is None else max(float(v), 0.0)) for i, v in s.execute(q)]
