"""The code-workflow decider: replay the run's function against its history (``app.code.engine``) and turn what
the pass asked for into a :class:`~app.services.deciders.Plan` for the advance loop. Like every decider it reads
(under the run's lock, in the caller's transaction) and never writes: the loop inserts the new steps, submits
activities, starts children and finishes the run.

The advance that runs this is the workflow step of Temporal's model: a Celery task (``tideflow.advance``, or the
worker that finished an activity, inline) fenced by the run's row lock and the steps' ``handled`` flags, so a
duplicate or late message replays to the same point and changes nothing.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from app.clock import utcnow
from app.code import registry
from app.code.engine import AsyncContext, Context, PassOutcome, Step, run_pass, step_name
from app.db import code_history
from app.db import repository as repo
from app.records import RunRecord, TaskRecord
from app.runtime import Runtime
from app.services.deciders import Plan
from app.states import TASK_LIVE, RunState, TaskKind, TaskState

log = logging.getLogger(__name__)


def history_of(tasks: Sequence[TaskRecord]) -> list[Step]:
    return [Step(t.seq if t.seq is not None else -1, t.kind, step_name(t.name), t.state, t.result, t.error, t.id,
                 t.child_run_id) for t in tasks]


class PrefixCache:
    """Per process: the terminal prefix of each recently advanced run's history (steps that ended never change),
    so that an advance reads only the steps from the first live one on, not the whole history: replay must not
    make a long workflow's advances cost in proportion to its length (issue 10: a 1,000-activity workflow costs
    at most 3x per activity what a 10-activity one does). A cached prefix is used only while the database still
    holds it (:func:`app.db.code_history.history_since`: count, highest id, latest ``updated_at``), so a prefix
    read in a transaction that rolled back, or from another database, is read again."""

    def __init__(self, max_runs: int = 256):
        self.max_runs = max_runs
        self._lock = threading.Lock()
        self._runs: OrderedDict[tuple[Any, ...], tuple[list[Step], code_history.PrefixStamp]] = OrderedDict()

    def history(self, s: Session, key: tuple[Any, ...], run_id: int) -> list[Step]:
        with self._lock:
            cached = self._runs.get(key)
        prefix: list[Step] = []
        prefix_updated: list[Any] = []
        rows: list[code_history.HistoryRow] | None = None
        if cached is not None:  # one query: the tail, and whether the database still holds the cached prefix
            steps, stamp = cached
            held, tail = code_history.history_since(s, run_id, steps[-1].seq + 1)
            if held == stamp:
                prefix, prefix_updated, rows = steps, [stamp[2]], tail
            else:
                self.drop(key)
        if rows is None:
            rows = code_history.history_from(s, run_id, 0)
        history = prefix + [Step(seq, TaskKind(kind), step_name(name), TaskState(state), result, error, tid, child)
                            for seq, kind, name, state, result, error, tid, child, _ in rows]
        n = len(prefix)
        while n < len(history) and history[n].done:
            n += 1
        if n > len(prefix):
            updated = [r[8] for r in rows[:n - len(prefix)]] + prefix_updated
            top = max(st.task_run_id or 0 for st in history[:n])
            with self._lock:
                self._runs[key] = (history[:n], (n, top, max(updated)))
                self._runs.move_to_end(key)
                while len(self._runs) > self.max_runs:
                    self._runs.popitem(last=False)
        return history

    def drop(self, key: tuple[Any, ...]) -> None:
        with self._lock:
            self._runs.pop(key, None)


PREFIXES = PrefixCache()


class CodeDecider:
    def __init__(self, rt: Runtime):
        self.rt = rt

    def decide(self, s: Session, run: RunRecord, changed: Sequence[TaskRecord], *, full: bool) -> Plan:
        if not full and not changed:
            return Plan()  # a duplicate advance: nothing new to replay against
        wf = registry.get_workflow(run.workflow_name)
        if wf is None:
            return Plan(outcome=RunState.BLOCKED, reason=(
                f"workflow '{run.workflow_name}' is not registered in process {self.rt.worker_id}: add its module "
                "to TIDEFLOW_WORKFLOW_MODULES of every process, then run resume"))
        history = PREFIXES.history(s, (self.rt.settings.database_url, run.id, run.created_at), run.id)
        ctx_type = AsyncContext if wf.is_async else Context
        ctx = ctx_type(run_id=run.id, workflow=run.workflow_name, params=run.params, history=history,
                       now=utcnow(), signals=lambda: repo.pending_signals(s, run.id),
                       cancel_requested=run.cancel_requested,
                       state_values=run.state_values, schedule_time=run.schedule_time or run.created_at)
        res = run_pass(wf, run.params, ctx)
        settings = self.rt.settings
        total = len(history) + len(res.new_steps)
        notes: list[str] = []
        if len(history) < settings.history_warn_steps <= total:
            notes.append(f"the history has {total} steps (warning at {settings.history_warn_steps}, hard cap "
                         f"{settings.history_max_steps}): consider ctx.continue_as_new")
            log.warning("run %s: %s", run.id, notes[-1])
        state_values = res.state_values if res.state_values != (run.state_values or {}) else None
        live_ids = [st.task_run_id for st in history if st.state in TASK_LIVE and st.task_run_id is not None]
        if total > settings.history_max_steps:
            live = code_history.steps_by_id(s, live_ids)
            return Plan(outcome=RunState.FAILED, cancel=live, state_values=state_values, reason=(
                f"the history has {total} steps, past the cap of {settings.history_max_steps} "
                "(TIDEFLOW_HISTORY_MAX_STEPS): use ctx.continue_as_new for long loops"))
        kw: dict[str, Any] = {"create": res.new_steps, "state_values": state_values, "notes": notes}
        if res.outcome == PassOutcome.SUSPENDED:
            return Plan(**kw)
        if res.outcome == PassOutcome.DIVERGED:
            return Plan(outcome=RunState.BLOCKED, state_values=state_values, reason=(
                f"nondeterministic code: {res.error}. The run is kept as it is: deploy code that replays its "
                f"history (ctx.patched() for new branches), check it with 'tideflow run replay {run.id}', then "
                f"'tideflow run resume {run.id}'"))
        # the function ended: what it started and left running is stopped with it (and what it started in this
        # pass without waiting for is recorded cancelled, so the history still replays)
        kw["cancel"] = code_history.steps_by_id(s, live_ids)
        for step in res.new_steps:
            if not step.done:
                step.state, step.due_at = TaskState.CANCELLED, None
                step.reason = "cancelled: the workflow ended without waiting for it"
        if res.outcome == PassOutcome.RETURNED:
            return Plan(outcome=RunState.SUCCEEDED, result=res.value, reason="the workflow returned", **kw)
        if res.outcome == PassOutcome.CONTINUE_AS_NEW:
            return Plan(outcome=RunState.SUCCEEDED, continue_as_new=res.params or {}, reason="continued as new",
                        **kw)
        if res.outcome == PassOutcome.CANCELLED:
            return Plan(outcome=RunState.CANCELLED, reason=f"cancelled ({res.error})", **kw)
        return Plan(outcome=RunState.FAILED, reason=res.error, **kw)
