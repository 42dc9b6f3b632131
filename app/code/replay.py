"""The replay check: run a stored history against the code deployed now, with no side effects (nothing is written,
no activity runs), and report the first divergence. ``tideflow run replay ID`` checks a run in the database;
``tideflow.replay(workflow, history)`` checks an exported history (``tideflow run show ID --json`` saved to a file)
in a test suite, so a code change is checked against real histories before it is deployed (Temporal's replayer).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.clock import utcnow
from app.code import registry
from app.code.engine import AsyncContext, Context, PassOutcome, Step, run_pass, step_name
from app.db import repository as repo
from app.errors import NotFound, TideflowError
from app.states import RUN_TERMINAL, TaskKind, TaskState


@dataclass(frozen=True)
class ReplayReport:
    run_id: int | None
    workflow: str
    steps: int  # positions the history holds
    positions: int  # positions the code reached
    outcome: str  # what the code did at the end of the history (suspended, returned, failed, ...)
    divergence: str | None  # None: the code replays the history

    @property
    def ok(self) -> bool:
        return self.divergence is None

    def __str__(self) -> str:
        where = f"run {self.run_id}" if self.run_id is not None else "the history"
        if self.ok:
            return (f"{where} ({self.workflow}): {self.steps} step(s) replayed against the current code, no "
                    f"divergence (the code {self.outcome})")
        return f"{where} ({self.workflow}): divergence at {self.divergence}"


def replay_history(
    workflow: Any, steps: Sequence[Step], params: Mapping[str, Any], *, finished: bool, run_id: int | None = None,
    cancel_requested: bool = False, schedule_time: datetime | None = None,
) -> ReplayReport:
    name = registry.workflow_name(workflow)
    wdef = registry.get_workflow(name)
    if wdef is None:
        raise NotFound(f"workflow '{name}' is not registered in this process (TIDEFLOW_WORKFLOW_MODULES)")
    ctx_type = AsyncContext if wdef.is_async else Context
    ctx = ctx_type(run_id=run_id or 0, workflow=name, params=params, history=steps, now=utcnow(),
                   cancel_requested=cancel_requested, schedule_time=schedule_time)
    res = run_pass(wdef, params, ctx, finished=finished)
    divergence = res.error if res.outcome == PassOutcome.DIVERGED else None
    return ReplayReport(run_id, name, len(steps), res.positions, str(res.outcome), divergence)


def replay_run(s: Session, run_id: int) -> ReplayReport:
    """Replay a stored code run against this process's code (read only)."""
    run = repo.get_run(s, run_id)
    if run is None:
        raise NotFound(f"run {run_id} does not exist")
    if run.kind != "code":
        raise TideflowError(f"run {run_id} is a DAG run: only code runs are replayed")
    from app.code.decider import history_of

    return replay_history(run.workflow_name, history_of(repo.run_steps(s, run_id)), run.params,
                          finished=run.state in RUN_TERMINAL, run_id=run_id,
                          cancel_requested=run.cancel_requested,
                          schedule_time=run.schedule_time or run.created_at)


def steps_from_view(view: Mapping[str, Any]) -> list[Step]:
    """The history in a run's view (``tideflow run show ID --json``, ``GET /api/runs/{id}``)."""
    out = []
    for t in view.get("tasks", []):
        if t.get("seq") is None:
            continue
        out.append(Step(int(t["seq"]), TaskKind(t["type"]), step_name(t["name"]), TaskState(t["state"]),
                        t.get("result"), t.get("error"), t.get("id"), t.get("child_run_id")))
    return sorted(out, key=lambda st: st.seq)


def replay(workflow: Any, history: Mapping[str, Any] | str | Path) -> ReplayReport:
    """Check that ``workflow`` (a ``@tideflow.workflow`` function or its name) replays ``history``: a run's view
    as ``tideflow run show ID --json`` prints it, or the path of a file holding one. In a test suite::

        report = tideflow.replay(order, "tests/histories/order-1234.json")
        assert report.ok, report
    """
    view: Mapping[str, Any]
    view = json.loads(Path(history).read_text()) if isinstance(history, str | Path) else history
    return replay_history(workflow, steps_from_view(view), dict(view.get("params") or {}),
                          finished=view.get("state") in RUN_TERMINAL, run_id=view.get("id"),
                          cancel_requested=bool(view.get("cancel_requested")))
