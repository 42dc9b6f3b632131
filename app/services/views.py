"""Read models for the CLI (and the later REST API): plain JSON-ready dicts, no business rules."""

from __future__ import annotations

from datetime import datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy.orm import Session

from app.code.engine import parse_divergence, step_name
from app.db import repository as repo
from app.errors import NotFound
from app.graph import layout
from app.records import RunRecord, TaskRecord
from app.services import limits
from app.states import TASK_LIVE, RunKind, RunState, TaskKind, TaskState


def _ts(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _duration(start: datetime | None, end: datetime | None) -> float | None:
    return round((end - start).total_seconds(), 3) if start and end else None


def workflow_summary(row: Any) -> dict[str, Any]:
    d = row.definition
    kind = "code" if d.get("kind") == "code" else "dag"
    code = kind == "code"
    return {"name": row.name, "kind": kind, "version": row.version, "id": row.id, "digest": row.digest[:12],
            "tasks": len(d.get("tasks", [])), "created_at": _ts(row.created_at),
            "module": d.get("module") if code else None, "function": d.get("function") if code else None,
            "params": list(d.get("params", [])) if code else None, "parameters": parameters(row)}


def parameters(row: Any) -> list[dict[str, Any]]:
    """A stored workflow's typed parameters (:mod:`app.params`), for the start form: a DAG's from its ``params:``;
    a code workflow's from its function's hints when this process has that very code (same digest), else its
    stored names (type ``any``)."""
    from app.code import registry
    from app.params import Parameter, dag_parameters

    d = row.definition
    if d.get("kind") != "code":
        return [p.view() for p in dag_parameters(dict(d.get("params") or {}))[0]]
    wdef = registry.get_workflow(row.name)
    if wdef is not None and wdef.digest() == row.digest:
        return [p.view() for p in wdef.parameters()]
    required = set(d.get("required", []))
    return [Parameter(n, required=n in required, nullable=True).view() for n in d.get("params", [])]


def list_workflows(s: Session) -> list[dict[str, Any]]:
    """Both kinds: the stored workflows, and the code workflows this process registered that no run has stored
    yet (``version`` None)."""
    from app.code import registry

    rows = [workflow_summary(r) for r in repo.list_workflows(s)]
    stored = {r["name"] for r in rows}
    rows += [workflow_summary(SimpleNamespace(name=w.name, definition=w.definition(), version=None, id=None,
                                              digest=w.digest(), created_at=None))
             for w in registry.workflows() if w.name not in stored]
    return sorted(rows, key=lambda r: r["name"])


def show_workflow(s: Session, name: str, version: int | None = None) -> dict[str, Any]:
    row = repo.workflow(s, name, version)
    if row is None:
        raise NotFound(f"workflow '{name}' is not registered")
    versions = [v.version for v in repo.workflow_versions(s, name)]
    return {**workflow_summary(row), "versions": versions, "definition": row.definition}


def workflow_grid(s: Session, name: str, limit: int = 25) -> dict[str, Any]:
    """Airflow's grid: the workflow's ``limit`` most recent runs as columns (oldest on the left), its task names
    as rows (in the newest run's order, then names only older runs have), each cell the task's state in that
    run (None: that run has no such task). Two queries, whatever the number of runs."""
    from app.code import registry

    runs = list(reversed(repo.grid_runs(s, name, limit)))
    if not runs and repo.workflow(s, name) is None and registry.get_workflow(name) is None:
        raise NotFound(f"workflow '{name}' is not registered")
    column = {r.id: i for i, r in enumerate(runs)}
    rows: dict[str, list[dict[str, Any] | None]] = {}
    for t in repo.grid_tasks(s, column):  # newest run first: its order decides the rows' order
        cells = rows.setdefault(t.name, [None] * len(runs))
        cells[column[t.run_id]] = {"task_run_id": t.id, "state": t.state, "attempt": t.attempt}
    return {
        "workflow": name,
        "runs": [{"id": r.id, "kind": r.kind, "state": r.state, "version": r.version, "created_at": _ts(r.created_at),
                  "duration": _duration(r.created_at, r.finished_at)} for r in runs],
        "tasks": [{"name": task, "cells": cells} for task, cells in rows.items()],
    }


def run_summary(run: Any) -> dict[str, Any]:
    return {
        "id": run.id, "workflow": run.workflow_name, "kind": run.kind, "state": run.state, "priority": run.priority,
        "key": run.key,
        "params": run.params, "parent_task_run_id": run.parent_task_run_id, "parent_run_id": run.parent_run_id,
        "error": run.error,
        "created_at": _ts(run.created_at), "finished_at": _ts(run.finished_at),
        "duration": _duration(run.created_at, run.finished_at),
        "schedule": run.schedule_name, "schedule_time": _ts(run.schedule_time),
    }


def list_runs(
    s: Session, *, state: str | None = None, workflow: str | None = None, limit: int = 50,
    before: int | None = None, kind: str | None = None,
) -> list[dict[str, Any]]:
    """Newest first; ``before`` (a run id) pages backwards (keyset paging: stable while runs are added)."""
    rows = repo.list_runs(s, state=state, workflow_name=workflow, limit=limit, before_id=before, kind=kind)
    return [run_summary(r) for r in rows]


def show_run(s: Session, run_id: int) -> dict[str, Any]:
    run = repo.get_run_view(s, run_id)
    if run is None:
        raise NotFound(f"run {run_id} does not exist")
    tasks = repo.run_tasks(s, run_id)
    wf = repo.workflow_by_id(s, run.workflow_id)
    defs = {t["name"]: t for t in (wf.definition.get("tasks", []) if wf else [])}
    deps = {name: list(t.get("depends_on", [])) for name, t in defs.items()}
    skipped = repo.skip_reasons(s, run_id) if any(t.state == TaskState.SKIPPED for t in tasks) else {}
    pos = layout(deps)
    by_task: dict[int, list[dict[str, Any]]] = {}
    for a in repo.attempts(s, [t.id for t in tasks]):
        by_task.setdefault(a.task_run_id, []).append({
            "attempt": a.attempt, "worker": a.worker, "pid": a.pid, "outcome": a.outcome, "error": a.error,
            "started_at": _ts(a.started_at), "finished_at": _ts(a.finished_at), "duration": a.duration,
        })
    code = run.kind == RunKind.CODE
    steps = sorted((t for t in tasks if t.seq is not None and t.superseded_at is None),
                   key=lambda t: t.seq or 0) if code else []
    # the steps a reset (task rerun / force-success) superseded: kept, shown apart, oldest reset first
    superseded = sorted((t for t in tasks if t.seq is not None and t.superseded_at is not None),
                        key=lambda t: (t.superseded_at, t.seq or 0)) if code else []
    waits = limits.waiting_for(s, tasks)

    def step(t: TaskRecord) -> dict[str, Any]:
        return {
            "seq": t.seq, "kind": t.type, "name": step_name(t.name), "state": t.state, "task_run_id": t.id,
            "attempt": t.attempt, "attempts": by_task.get(t.id, []), "due_at": _ts(t.due_at),
            "child_run_id": t.child_run_id, "result": t.result, "error": t.error, "created_at": _ts(t.created_at),
            "started_at": _ts(t.started_at), "finished_at": _ts(t.finished_at), "waiting_for": waits.get(t.id),
            "superseded_at": _ts(t.superseded_at),
        }

    return {
        **run_summary(run),
        "workflow_version": wf.version if wf else None,
        "waiting_for": limits.run_waiting_for(s, run),
        "steps": [step(t) for t in steps],
        "superseded_steps": [step(t) for t in superseded],
        "waiting": _waiting(run, steps),
        "blocked": _blocked(run),
        "result": run.result if run.kind == "code" else None,
        "state_values": run.state_values or {},
        "cancel_requested": run.cancel_requested,
        "continued_run_id": run.continued_run_id,
        "children": [{"id": c.id, "workflow": c.workflow_name, "kind": c.kind, "state": c.state}
                     for c in repo.child_runs(s, run_id)],
        "tasks": [{
            "id": t.id, "name": t.name, "type": t.type, "state": t.state, "attempt": t.attempt, "seq": t.seq,
            "due_at": _ts(t.due_at),
            "depends_on": deps.get(t.name, []), "layer": pos.get(t.name, (0, 0))[0], "row": pos.get(t.name, (0, 0))[1],
            "failures": t.failures, "queue": t.queue, "priority": t.priority, "worker": t.worker,
            "child_run_id": t.child_run_id, "result": t.result, "error": t.error,
            "started_at": _ts(t.started_at), "finished_at": _ts(t.finished_at),
            "duration": _duration(t.started_at, t.finished_at), "attempts": by_task.get(t.id, []),
            # branching (DAG tasks): the rule and condition it was defined with, and why it was skipped
            "trigger_rule": defs.get(t.name, {}).get("trigger_rule", "all_success") if t.seq is None else None,
            "when": defs.get(t.name, {}).get("when"),
            "skip_reason": skipped.get(t.id) if t.state == TaskState.SKIPPED else None,
            "pool": t.pool, "waiting_for": waits.get(t.id), "superseded_at": _ts(t.superseded_at),
        } for t in tasks],
    }


def _wait(t: TaskRecord) -> dict[str, Any]:
    """What one live step of a code run waits for: words and fields."""
    name = step_name(t.name)
    base: dict[str, Any] = {"kind": t.type, "seq": t.seq, "name": name, "task_run_id": t.id, "until": None,
                            "signal": None, "timeout_at": None, "child_run_id": None, "attempt": None}
    if t.kind == TaskKind.TIMER:
        return {**base, "text": f"sleeping until {_ts(t.due_at)}", "until": _ts(t.due_at)}
    if t.kind == TaskKind.SIGNAL:
        timeout = f"timeout at {_ts(t.due_at)}" if t.due_at is not None else "no timeout"
        return {**base, "text": f"waiting for signal {name}, {timeout}", "signal": name, "timeout_at": _ts(t.due_at)}
    if t.kind == TaskKind.SUBWORKFLOW:
        text = (f"waiting for child run {t.child_run_id} ({name})" if t.child_run_id is not None
                else f"waiting for child workflow {name} to start")
        return {**base, "text": text, "child_run_id": t.child_run_id}
    attempt = max(t.attempt, 1)  # a pending activity's first attempt is not submitted yet
    retry = (f", retry at {_ts(t.not_before)}" if t.state != TaskState.RUNNING and t.not_before is not None
             and t.attempt > 1 else "")
    return {**base, "text": f"waiting for {t.type} {name}, attempt {attempt}{retry}", "attempt": attempt}


def _waiting(run: RunRecord, steps: list[TaskRecord]) -> dict[str, Any] | None:
    """A running code run's current wait: its first live step (``more``: how many others it also waits for, as
    in a ``gather``; the text names them all). None when it waits for nothing (between steps, or finished)."""
    if run.state != RunState.RUNNING:
        return None
    waits = [_wait(t) for t in steps if t.state in TASK_LIVE]
    if not waits:
        return None
    return {**waits[0], "text": "; ".join(w["text"] for w in waits), "more": len(waits) - 1}


def _blocked(run: RunRecord) -> dict[str, Any] | None:
    """A blocked code run's divergence, read back from the message it was blocked with (its ``error``): the
    position, what the history holds there and what the code asked for (None each when the cause is not a
    divergence, e.g. a process without the workflow's code)."""
    if run.state != RunState.BLOCKED:
        return None
    return {**parse_divergence(run.error), "message": run.error}


def run_history(s: Session, run_id: int) -> list[dict[str, Any]]:
    if repo.get_run(s, run_id) is None:
        raise NotFound(f"run {run_id} does not exist")
    return [{
        "id": e.id, "at": _ts(e.created_at), "task": e.task_name, "attempt": e.attempt,
        "from": e.from_state, "to": e.to_state, "actor": e.actor, "reason": e.reason,
    } for e in repo.run_events(s, run_id)]


def task_logs(s: Session, task_run_id: int) -> dict[str, Any]:
    task = repo.get_task(s, task_run_id)
    if task is None:
        raise NotFound(f"task run {task_run_id} does not exist")
    return {
        "task_run_id": task.id, "run_id": task.run_id, "name": task.name, "state": task.state,
        "attempts": [{"attempt": a.attempt, "outcome": a.outcome, "worker": a.worker, "error": a.error,
                      "log": a.log or ""} for a in repo.attempts(s, [task.id])],
    }


def list_tokens(s: Session) -> list[dict[str, Any]]:
    """The named API tokens (never their secrets: only a hash is stored)."""
    from app.db.tokens import list_tokens as rows

    return [{"name": t.name, "role": t.role, "created_at": _ts(t.created_at)} for t in rows(s)]


def run_task_logs(s: Session, run_id: int, task: str) -> dict[str, Any]:
    """:func:`task_logs` of run ``run_id``'s task ``task`` (:func:`run_task_id`: ``tideflow task logs RUN TASK``)."""
    return task_logs(s, run_task_id(s, run_id, task))


def run_task_id(s: Session, run_id: int, task: str) -> int:
    """The task run id of run ``run_id``'s task ``task``: its name, or its task run id (``tideflow task logs|
    force-success|rerun RUN TASK``). A code run's step is also named by its position (``#3``, or ``3`` when 3 is not
    one of the run's task run ids), its row name (``charge#3``) or its name alone when one step of the history has
    it. A name a run holds several steps of is an error naming them."""
    run = repo.get_run(s, run_id)
    if run is None:
        raise NotFound(f"run {run_id} does not exist")
    if task.isdigit():
        found = repo.get_task(s, int(task))
        if found is not None and found.run_id == run_id:
            return found.id
    named = repo.tasks_named(s, run_id, [task])
    if not named and run.kind == RunKind.CODE:
        steps = repo.run_steps(s, run_id)
        position = task[1:] if task.startswith("#") else task
        if position.isdigit():
            named = [t for t in steps if t.seq == int(position)]
            if not named:
                raise NotFound(f"run {run_id} has no step at position {position} (its history has {len(steps)})")
        else:
            named = [t for t in steps if step_name(t.name) == task]
            if len(named) > 1:
                where = ", ".join(f"{t.name} (task run {t.id})" for t in named[:10]) + (", ..." if len(named) > 10
                                                                                         else "")
                raise NotFound(f"run {run_id} has {len(named)} steps named '{task}': {where}: give a position (#N) "
                               "or a task run id")
    if not named:
        raise NotFound(f"run {run_id} has no task '{task}'")
    if len(named) > 1:
        ids = ", ".join(str(t.id) for t in sorted(named, key=lambda t: t.id))
        raise NotFound(f"run {run_id} has {len(named)} tasks named '{task}' (task run ids {ids}): give one of the ids")
    return named[0].id


# -- schedules ------------------------------------------------------------------------------------------------------


def _fire(f: Any) -> dict[str, Any]:
    m = f._mapping
    return {"fire_time": _ts(f.fire_time), "outcome": f.outcome, "run_id": f.run_id,
            "run_state": m["run_state"] if "run_state" in m else None,  # noqa: SIM401
            "reason": f.reason, "actor": f.actor, "backfill": f.backfill_id}


def schedule_summary(s: Session, row: Any, *, now: datetime | None = None, last: int = 5) -> dict[str, Any]:
    """A schedule as ``schedule list`` / ``GET /api/schedules`` show it: its declared fields, the human text of its
    cron, its next 3 fire times (none while paused) and its ``last`` fire times with their runs."""
    from app.clock import utcnow
    from app.scheduling import ScheduleSpec, describe, fire_times

    spec = ScheduleSpec.model_validate(row.spec)
    now = now or utcnow()
    upcoming: list[str] = []
    if not row.paused and row.active:
        begin = max(now, row.cursor)
        if spec.start is not None and spec.start > begin:
            begin = spec.start
        for t in fire_times(spec.cron, spec.timezone, begin):
            if (spec.end is not None and t > spec.end) or len(upcoming) == 3:
                break
            upcoming.append(t.isoformat())
    return {"name": row.name, "workflow": row.workflow_name, "cron": spec.cron, "timezone": spec.timezone,
            "description": describe(spec.cron), "next": upcoming, "paused": bool(row.paused),
            "paused_by": row.paused_by, "paused_at": _ts(row.paused_at),
            "active": bool(row.active), "catchup": spec.catchup, "catchup_window": spec.catchup_window,
            "overlap": spec.overlap, "jitter": spec.jitter, "params": spec.params,
            "start": _ts(spec.start), "end": _ts(spec.end), "cursor": _ts(row.cursor),
            "last": [_fire(f) for f in repo.fires(s, row.name, limit=last)]}


def list_schedules(s: Session, *, workflow: str | None = None) -> list[dict[str, Any]]:
    return [schedule_summary(s, row) for row in repo.schedules(s, workflow_name=workflow)]


def show_schedule(s: Session, name: str, *, limit: int = 50) -> dict[str, Any]:
    """One schedule with its recent fire times (skipped ones with why) and its backfills."""
    row = repo.schedule(s, name)
    if row is None:
        raise NotFound(f"schedule '{name}' does not exist (tideflow schedule list)")
    out = schedule_summary(s, row, last=limit)
    out["backfills"] = [{"id": b.id, "from": _ts(b.range_start), "to": _ts(b.range_end), "parallel": b.parallel,
                         "state": b.state, "actor": b.actor, **repo.backfill_counts(s, b.id)}
                        for b in repo.backfills(s, name)]
    return out
