"""Concurrency limits, durable and cluster-wide: the one owner of admission rules.

**Pools** (Airflow pools, DolphinScheduler task groups): a task or activity naming ``pool: NAME`` runs only while
one of the pool's slots (``tideflow pool set NAME SLOTS``) is free.

- Where: at the claim (:func:`app.services.attempts.claim`), in the claiming transaction. A task under no limit is
  claimed by the usual single ``UPDATE`` (it also requires ``pool IS NULL``, so it costs nothing more); a pooled
  one is admitted by :func:`admit`: the pool's row is locked (``SELECT ... FOR UPDATE``: admissions into one pool
  are serialised), its slots in use are counted, and the claim lands only if one is free.
- Slots in use are counted from the live rows, never from a counter that could drift: a slot is a *running* task
  of the pool. A running attempt keeps its slot until it ends: it finishes, fails, is cancelled, or, when its
  worker is lost, until the reconciler declares its lapsed lease lost; that same transaction closes the attempt
  in ``task_attempts``, so the attempts ledger never shows more overlapping attempts than slots.
- A claim that finds no free slot changes nothing: the task stays ``submitted`` (its message is acknowledged and
  dropped: no busy loop). Whoever frees a slot re-publishes the pool's next waiting task in its own transaction
  (:func:`release`: by priority, then first ready), and so does ``pool set`` when it adds slots. The backstop,
  for a re-publish lost on its way, is the reconciler (:func:`fill_free_slots`): a pool with free slots and
  waiting tasks not published for ``orphan_timeout`` gets them re-published.

**max_active_runs** (per workflow, DAG and code): a run started while that many runs of its workflow are running
(or while others already wait) is inserted ``queued`` (:func:`admit_run`, holding the workflow's lock: its first
version's row). Nothing of it runs. When a running run of the workflow ends (or blocks), the same transaction
starts the next queued ones (:func:`promote_runs`: by priority, then first come); the reconciler does the same
for every workflow with queued runs (:func:`promote_all`), the backstop should that transaction's process die
between. ``run cancel`` cancels a queued run.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from app.clock import after
from app.db import repository as repo
from app.definitions import POOL_RE
from app.dispatch import ExecuteMessage, publish_after_commit
from app.errors import TideflowError
from app.records import RunRecord, TaskRecord, WorkflowRecord
from app.runtime import Runtime
from app.states import RunState, TaskState

MAX_SLOTS = 1_000_000


def admit(s: Session, task: TaskRecord) -> str | None:
    """In the claiming transaction, before the claim: None if the task may start now (its pool's row stays
    locked until commit, so the count holds), else why it waits ("pool db: 4/4 in use")."""
    if task.pool is None:
        return None
    slots = repo.lock_pool(s, task.pool)
    if slots is None:
        return missing(task.pool)
    running = repo.pool_running(s, task.pool)
    return None if running < slots else in_use(task.pool, running, slots)


def missing(pool: str) -> str:
    return f"pool {pool} does not exist (tideflow pool set {pool} SLOTS)"


def in_use(pool: str, running: int, slots: int) -> str:
    return f"pool {pool}: {running}/{slots} in use"


def _republish(s: Session, rt: Runtime, tasks: list[TaskRecord], why: str, now: datetime) -> list[ExecuteMessage]:
    messages = []
    for task in tasks:
        n = task.publish_count + 1
        if repo.transition_task(s, task, TaskState.SUBMITTED, actor="limits", now=now, publish_count=n,
                                next_publish_at=after(rt.settings.orphan_timeout_seconds, now),
                                reason=f"{why}: re-published (publish #{n} of attempt {task.attempt})"):
            messages.append(ExecuteMessage(task.id, task.attempt, task.queue, task.priority, label=task.label))
    return messages


def fill(
    s: Session, rt: Runtime, pool: str, now: datetime, *, published_before: datetime | None = None,
) -> list[ExecuteMessage]:
    """Re-publish as many of the pool's waiting tasks as it has free slots, next first (their messages go out
    after commit). A hint, not an admission: each still passes :func:`admit` when claimed."""
    slots = repo.lock_pool(s, pool, lock=False)
    if slots is None:
        return []
    free = slots - repo.pool_running(s, pool)
    if free <= 0:
        return []
    waiting = repo.pool_waiting(s, pool, free, now=now, published_before=published_before)
    messages = _republish(s, rt, waiting, f"a slot of pool {pool} is free", now)
    publish_after_commit(s, rt.dispatcher, execute=messages)
    return messages


def release(s: Session, rt: Runtime, task: TaskRecord, now: datetime) -> None:
    """``task``'s running attempt ended in this transaction: if it held a pool slot, the pool's next waiting task
    is re-published after commit."""
    if task.pool is not None:
        fill(s, rt, task.pool, now)


def fill_free_slots(s: Session, rt: Runtime, now: datetime) -> int:
    """The reconciler's backstop: in every pool with free slots, re-publish waiting tasks nobody published for
    ``orphan_timeout`` (a release's message lost on its way, a worker killed between claim refusal and ...)."""
    quiet = after(-rt.settings.orphan_timeout_seconds, now)
    usage = repo.pool_usage(s)
    count = 0
    for pool, (_running, waiting) in usage.items():
        if waiting:
            count += len(fill(s, rt, pool, now, published_before=quiet))
    return count


def set_pool(s: Session, rt: Runtime, name: str, slots: int, now: datetime) -> int:
    """Create or resize a pool; waiting tasks that now fit are re-published. Returns how many."""
    if not re.match(POOL_RE, name):
        raise TideflowError(f"pool name {name!r} is not valid (letters, digits, '_', '-', '.'; at most 100)")
    if not 0 <= slots <= MAX_SLOTS:
        raise TideflowError(f"slots must be between 0 and {MAX_SLOTS}, not {slots}")
    repo.set_pool(s, name, slots, now)
    return len(fill(s, rt, name, now))


def pool_rows(s: Session) -> list[dict[str, Any]]:
    """Every pool with its use: name, slots, running (slots in use), waiting (submitted tasks), free."""
    usage = repo.pool_usage(s)
    rows = []
    for name, slots in repo.pools(s).items():
        running, waiting = usage.get(name, (0, 0))
        rows.append({"name": name, "slots": slots, "running": running, "waiting": waiting,
                     "free": max(slots - running, 0)})
    return rows


def waiting_for(s: Session, tasks: Iterable[TaskRecord]) -> dict[int, str]:
    """Why each submitted task of ``tasks`` cannot start now (the run view's ``waiting_for``), by task id."""
    pooled = [t for t in tasks if t.state == TaskState.SUBMITTED and t.pool is not None]
    if not pooled:
        return {}
    slots = repo.pools(s)
    usage = repo.pool_usage(s, {t.pool for t in pooled if t.pool is not None})
    why: dict[int, str] = {}
    for t in pooled:
        assert t.pool is not None
        size = slots.get(t.pool)
        running = usage.get(t.pool, (0, 0))[0]
        if size is None:
            why[t.id] = missing(t.pool)
        elif running >= size:
            why[t.id] = in_use(t.pool, running, size)
    return why


# -- max_active_runs ----------------------------------------------------------------------------------


def max_active_runs(definition: dict[str, Any]) -> int | None:
    limit = definition.get("max_active_runs")
    return int(limit) if limit is not None else None


def admit_run(s: Session, row: WorkflowRecord) -> str | None:
    """Before a new run of ``row``'s workflow is inserted: None if it may run now, else why it is queued (the
    workflow's lock is held until commit, so concurrent starts count each other)."""
    limit = max_active_runs(row.definition)
    if limit is None:
        return None
    repo.lock_workflow_name(s, row.name)
    running = repo.count_runs_in(s, row.name, RunState.RUNNING)
    queued = repo.count_runs_in(s, row.name, RunState.QUEUED)
    if running < limit and not queued:
        return None
    return runs_in_use(row.name, running, limit) + (f", {queued} queued already" if queued else "")


def runs_in_use(workflow: str, running: int, limit: int) -> str:
    return f"max_active_runs of {workflow}: {running}/{limit} running"


def promote_runs(s: Session, rt: Runtime, workflow_name: str, *, actor: str) -> list[int]:
    """Start as many of the workflow's queued runs as it has room for (``queued -> running``, then their first
    advance, in this transaction). Returns their ids."""
    latest = repo.workflow(s, workflow_name)
    if latest is None:
        return []
    limit = max_active_runs(latest.definition)
    repo.lock_workflow_name(s, workflow_name)
    running = repo.count_runs_in(s, workflow_name, RunState.RUNNING)
    room = limit - running if limit is not None else 1_000_000
    if room <= 0:
        return []
    from app.services.master import advance_locked  # the advance loop, which itself finishes runs (and promotes)

    started: list[int] = []
    for run in repo.queued_runs(s, workflow_name, room):
        why = "dequeued: " + (runs_in_use(workflow_name, running, limit) if limit is not None
                              else "its workflow no longer sets max_active_runs")
        if repo.transition_run(s, run, RunState.RUNNING, actor=actor, reason=why):
            running += 1
            started.append(run.id)
            advance_locked(s, rt, replace(run, state=RunState.RUNNING), actor=actor, full=True)
    return started


def promote_all(rt: Runtime, *, actor: str) -> int:
    """The reconciler's backstop: promote the queued runs of every workflow that has room (one transaction each)."""
    with rt.db.read() as s:
        names = repo.workflows_with_queued_runs(s)
    count = 0
    for name in names:
        with rt.db.transaction() as s:
            count += len(promote_runs(s, rt, name, actor=actor))
    return count


def run_waiting_for(s: Session, run: RunRecord) -> str | None:
    """Why a queued run has not started (the run view's ``waiting_for``)."""
    if run.state != RunState.QUEUED:
        return None
    latest = repo.workflow(s, run.workflow_name)
    limit = max_active_runs(latest.definition) if latest is not None else None
    if limit is None:
        return "queued: starts at the reconciler's next pass"
    return runs_in_use(run.workflow_name, repo.count_runs_in(s, run.workflow_name, RunState.RUNNING), limit)
