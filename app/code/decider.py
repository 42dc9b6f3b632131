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
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from app.clock import utcnow
from app.code import registry
from app.code.engine import AsyncContext, Context, PassOutcome, Step, run_pass, step_name
from app.db import repository as repo
from app.records import RunRecord, TaskRecord
from app.runtime import Runtime
from app.services.deciders import Plan
from app.states import TASK_LIVE, RunState, TaskState

log = logging.getLogger(__name__)


def history_of(tasks: Sequence[TaskRecord]) -> list[Step]:
    return [Step(t.seq if t.seq is not None else -1, t.kind, step_name(t.name), t.state, t.result, t.error, t.id,
                 t.child_run_id) for t in tasks]


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
        rows = repo.run_steps(s, run.id)
        ctx_type = AsyncContext if wf.is_async else Context
        ctx = ctx_type(run_id=run.id, workflow=run.workflow_name, params=run.params, history=history_of(rows),
                       now=utcnow(), signals=repo.pending_signals(s, run.id), cancel_requested=run.cancel_requested,
                       state_values=run.state_values)
        res = run_pass(wf, run.params, ctx)
        settings = self.rt.settings
        total = len(rows) + len(res.new_steps)
        notes: list[str] = []
        if len(rows) < settings.history_warn_steps <= total:
            notes.append(f"the history has {total} steps (warning at {settings.history_warn_steps}, hard cap "
                         f"{settings.history_max_steps}): consider ctx.continue_as_new")
            log.warning("run %s: %s", run.id, notes[-1])
        state_values = res.state_values if res.state_values != (run.state_values or {}) else None
        live = [t for t in rows if t.state in TASK_LIVE]
        if total > settings.history_max_steps:
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
        kw["cancel"] = live
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
