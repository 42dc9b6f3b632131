"""SQL for replaying a code run's history cheaply (next to ``app.db.repository``): only the columns replay compares
and returns, not whole task records, and only from a position on (``app.code.decider`` keeps the terminal prefix
of each run's history in memory: a code step that ended never changes).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Table, func, select
from sqlalchemy.orm import Session

from app.db.schema import TaskRun
from app.records import TaskRecord
from app.states import TASK_TERMINAL

T: Table = TaskRun.__table__  # type: ignore[assignment]

#: a step as replay reads it: (seq, type, row name, state, result, error, id, child_run_id, updated_at)
HistoryRow = tuple[int, str, str, str, Any, str | None, int, int | None, Any]

_TERMINAL = sorted(str(s) for s in TASK_TERMINAL)


def history_from(s: Session, run_id: int, from_seq: int = 0) -> list[HistoryRow]:
    """A code run's steps at positions ``>= from_seq``, by position, with each one's ``updated_at`` last."""
    q = (select(T.c.seq, T.c.type, T.c.name, T.c.state, T.c.result, T.c.error, T.c.id, T.c.child_run_id,
                T.c.updated_at)
         .where(T.c.run_id == run_id, T.c.seq.is_not(None), T.c.seq >= from_seq).order_by(T.c.seq))
    return [(int(r[0]), str(r[1]), str(r[2]), str(r[3]), r[4], r[5], int(r[6]), r[7], r[8])
            for r in s.execute(q)]


#: what identifies a cached prefix of a run's history: (how many terminal steps, their highest id, their latest
#: ``updated_at``). Every change of a step row sets ``updated_at`` (guarded transitions), so a prefix read in a
#: transaction that then rolled back, and was written again since, no longer matches (nor does another database's).
PrefixStamp = tuple[int, int | None, Any]


def terminal_prefix(s: Session, run_id: int, below_seq: int) -> PrefixStamp:
    """The stamp of the run's terminal steps at positions ``< below_seq``."""
    q = select(func.count(), func.max(T.c.id), func.max(T.c.updated_at)).where(
        T.c.run_id == run_id, T.c.seq.is_not(None), T.c.seq < below_seq, T.c.state.in_(_TERMINAL))
    n, top, updated = s.execute(q).one()
    return int(n), (int(top) if top is not None else None), updated


def steps_by_id(s: Session, ids: Iterable[int]) -> list[TaskRecord]:
    """Whole records of some steps (the live ones, when a plan stops them), by position."""
    wanted = list(ids)
    if not wanted:
        return []
    return [TaskRecord.from_row(r) for r in s.execute(select(T).where(T.c.id.in_(wanted)).order_by(T.c.seq))]
