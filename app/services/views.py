"""Read models for the CLI (and the later REST API): plain JSON-ready dicts, no business rules."""

from __future__ import annotations

from datetime import datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy.orm import Session

from app.db import repository as repo
from app.errors import NotFound
from app.graph import layout


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
            "params": list(d.get("params", [])) if code else None}


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


def run_summary(run: Any) -> dict[str, Any]:
    return {
        "id": run.id, "workflow": run.workflow_name, "kind": run.kind, "state": run.state, "priority": run.priority,
        "key": run.key,
        "params": run.params, "parent_task_run_id": run.parent_task_run_id, "error": run.error,
        "created_at": _ts(run.created_at), "finished_at": _ts(run.finished_at),
        "duration": _duration(run.created_at, run.finished_at),
    }


def list_runs(
    s: Session, *, state: str | None = None, workflow: str | None = None, limit: int = 50,
    before: int | None = None,
) -> list[dict[str, Any]]:
    """Newest first; ``before`` (a run id) pages backwards (keyset paging: stable while runs are added)."""
    rows = repo.list_runs(s, state=state, workflow_name=workflow, limit=limit, before_id=before)
    return [run_summary(r) for r in rows]


def show_run(s: Session, run_id: int) -> dict[str, Any]:
    run = repo.get_run(s, run_id)
    if run is None:
        raise NotFound(f"run {run_id} does not exist")
    tasks = repo.run_tasks(s, run_id)
    wf = repo.workflow_by_id(s, run.workflow_id)
    deps = {t["name"]: list(t.get("depends_on", [])) for t in (wf.definition.get("tasks", []) if wf else [])}
    pos = layout(deps)
    by_task: dict[int, list[dict[str, Any]]] = {}
    for a in repo.attempts(s, [t.id for t in tasks]):
        by_task.setdefault(a.task_run_id, []).append({
            "attempt": a.attempt, "worker": a.worker, "pid": a.pid, "outcome": a.outcome, "error": a.error,
            "started_at": _ts(a.started_at), "finished_at": _ts(a.finished_at), "duration": a.duration,
        })
    return {
        **run_summary(run),
        "workflow_version": wf.version if wf else None,
        "result": run.result if run.kind == "code" else None,
        "state_values": run.state_values or {},
        "cancel_requested": run.cancel_requested,
        "continued_run_id": run.continued_run_id,
        "tasks": [{
            "id": t.id, "name": t.name, "type": t.type, "state": t.state, "attempt": t.attempt, "seq": t.seq,
            "due_at": _ts(t.due_at),
            "depends_on": deps.get(t.name, []), "layer": pos.get(t.name, (0, 0))[0], "row": pos.get(t.name, (0, 0))[1],
            "failures": t.failures, "queue": t.queue, "priority": t.priority, "worker": t.worker,
            "child_run_id": t.child_run_id, "result": t.result, "error": t.error,
            "started_at": _ts(t.started_at), "finished_at": _ts(t.finished_at),
            "duration": _duration(t.started_at, t.finished_at), "attempts": by_task.get(t.id, []),
        } for t in tasks],
    }


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


def run_task_logs(s: Session, run_id: int, task: str) -> dict[str, Any]:
    """:func:`task_logs` of run ``run_id``'s task ``task``: its name, or its task run id (``tideflow task logs RUN
    TASK``). A name a code run holds several steps of is an error naming their ids."""
    if repo.get_run(s, run_id) is None:
        raise NotFound(f"run {run_id} does not exist")
    if task.isdigit():
        found = repo.get_task(s, int(task))
        if found is not None and found.run_id == run_id:
            return task_logs(s, found.id)
    named = repo.tasks_named(s, run_id, [task])
    if not named:
        raise NotFound(f"run {run_id} has no task '{task}'")
    if len(named) > 1:
        ids = ", ".join(str(t.id) for t in sorted(named, key=lambda t: t.id))
        raise NotFound(f"run {run_id} has {len(named)} tasks named '{task}' (task run ids {ids}): give one of the ids")
    return task_logs(s, named[0].id)
