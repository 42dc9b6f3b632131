"""SQL for replaying a code run's history cheaply (next to ``app.db.repository``): only the columns replay compares
and returns, not whole task records, and only from a position on (``app.code.decider`` keeps the terminal prefix
of each run's history in memory: a code step that ended never changes).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Table, and_, func, select
from sqlalchemy.orm import Session

from app.db.schema import TaskRun
from app.records import TaskRecord
from app.states import TASK_TERMINAL

T: Table = TaskRun.__table__  # type: ignore[assignment]

#: a step as replay reads it: (seq, type, row name, state, result, error, id, child_run_id, updated_at)
HistoryRow = tuple[int, str, str, str, Any, str | None, int, int | None, Any]

_TERMINAL = sorted(str(s) for s in TASK_TERMINAL)
#: the history is the steps no reset superseded (``repository.supersede_steps``); a superseded step never changes
#: again, and a reset changes the count of the terminal prefix (or its latest ``updated_at``), so a cached prefix
#: read before a reset no longer matches its stamp
_LIVE_ROW = T.c.superseded_at.is_(None)


_COLUMNS = (T.c.seq, T.c.type, T.c.name, T.c.state, T.c.result, T.c.error, T.c.id, T.c.child_run_id, T.c.updated_at)


def _row(r: Any) -> HistoryRow:
    return int(r[0]), str(r[1]), str(r[2]), str(r[3]), r[4], r[5], int(r[6]), r[7], r[8]


def history_from(s: Session, run_id: int, from_seq: int = 0) -> list[HistoryRow]:
    """A code run's steps at positions ``>= from_seq``, by position, with each one's ``updated_at`` last."""
    q = (select(*_COLUMNS).where(T.c.run_id == run_id, T.c.seq.is_not(None), T.c.seq >= from_seq, _LIVE_ROW)
         .order_by(T.c.seq))
    return [_row(r) for r in s.execute(q)]


#: what identifies a cached prefix of a run's history: (how many terminal steps, their highest id, their latest
#: ``updated_at``). Every change of a step row sets ``updated_at`` (guarded transitions), so a prefix read in a
#: transaction that then rolled back, and was written again since, no longer matches (nor does another database's).
PrefixStamp = tuple[int, int | None, Any]


def history_since(s: Session, run_id: int, from_seq: int) -> tuple[PrefixStamp, list[HistoryRow]]:
    """In one query: the stamp of the run's terminal steps at positions ``< from_seq`` (compared with a cached
    prefix's), and the steps at positions ``>= from_seq`` (as :func:`history_from`)."""
    agg = select(func.count().label("n"), func.max(T.c.id).label("top"), func.max(T.c.updated_at).label("upd")).where(
        T.c.run_id == run_id, T.c.seq.is_not(None), T.c.seq < from_seq, T.c.state.in_(_TERMINAL), _LIVE_ROW).subquery()
    q = (select(agg.c.n, agg.c.top, agg.c.upd, *_COLUMNS)
         .select_from(agg.outerjoin(T, and_(T.c.run_id == run_id, T.c.seq >= from_seq, _LIVE_ROW)))
         .order_by(T.c.seq))
    stamp: PrefixStamp = (0, None, None)
    rows: list[HistoryRow] = []
    for r in s.execute(q):
        stamp = (int(r[0]), int(r[1]) if r[1] is not None else None, r[2])
        if r[3] is not None:
            rows.append(_row(r[3:]))
    return stamp, rows


def steps_by_id(s: Session, ids: Iterable[int]) -> list[TaskRecord]:
    """Whole records of some steps (the live ones, when a plan stops them), by position."""
    wanted = list(ids)
    if not wanted:
        return []
    return [TaskRecord.from_row(r) for r in s.execute(select(T).where(T.c.id.in_(wanted)).order_by(T.c.seq))]
