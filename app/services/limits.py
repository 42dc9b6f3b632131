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

**Concurrency keys** (Hatchet, DBOS partitioned queues): a workflow's ``concurrency: {key, limit}`` queues runs as
``max_active_runs`` does, per rendered key; a task's works like a pool per rendered key value (its admissions
serialised by a transaction-scoped advisory lock on the key), and so does a code activity's
(``@tideflow.activity(concurrency=...)``: rendered from the call's arguments when the workflow makes it,
:func:`activity_key`; its step row then carries the key like a DAG task's row). **Rate limits**
(``rate_limit: "10/m"`` on a task, an activity or a pool): a sliding log of starts per scope (``rate_starts``),
checked and written by the admission under the scope's advisory lock: at most N starts in any window. A claim over
a rate limit is retried when the window lets one more start (the worker returns ``too_early`` with that delay: a
Celery countdown).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from app import templating
from app.clock import after, utcnow
from app.db import repository as repo
from app.definitions import POOL_RE, RATE_RE, ConcurrencySpec
from app.dispatch import ExecuteMessage, publish_after_commit
from app.errors import TideflowError
from app.records import RunRecord, TaskRecord, WorkflowRecord
from app.runtime import Runtime
from app.states import RunState, TaskState

MAX_SLOTS = 1_000_000
#: queued runs a promotion looks at (past those whose concurrency key is full)
PROMOTE_SCAN = 500


def is_limited(task: TaskRecord) -> bool:
    """Whether a claim of ``task`` goes through :func:`admit` (a plain claim requires it is not)."""
    return task.pool is not None or task.concurrency_key is not None or task.rate_key is not None


def admit(s: Session, task: TaskRecord) -> tuple[str | None, datetime]:
    """In the claiming transaction, before the claim: (None, when it starts) if the task may start now (its pool's
    row, or its concurrency key's or rate key's advisory lock, stays locked until commit, so the count holds),
    else (why it waits, e.g. "pool db: 4/4 in use", now). An admitted start is counted against its rate limits
    here, at the time returned: the clock is read after the locks, so an attempt that freed the slot ended
    (committed) before this one starts, and the claim records that same time (the ledger agrees with the log)."""
    reason, scopes = _admit(s, task)
    now = utcnow()
    if reason is None:
        for key, rate in scopes:
            n, window = parse_rate(rate)
            if repo.rate_window(s, key, after(-window, now))[0] >= n:
                return rate_reached(key, rate), now
        for key, rate in scopes:
            repo.record_start(s, key, now, forget_before=after(-parse_rate(rate)[1], now))
    return reason, now


def _admit(s: Session, task: TaskRecord) -> tuple[str | None, list[tuple[str, str]]]:
    """The pool and concurrency-key checks, taking every lock the admission needs (rate keys' included); with the
    task's rate scopes."""
    pool_rate = None
    if task.pool is not None:
        pool = repo.lock_pool(s, task.pool)
        if pool is None:
            return missing(task.pool), []
        slots, pool_rate = pool
        running = repo.pool_running(s, task.pool)
        if running >= slots:
            return in_use(task.pool, running, slots), []
    if task.concurrency_key is not None:
        repo.lock_concurrency_key(s, task.concurrency_key)
        running, limit = repo.key_running(s, task.concurrency_key), task.concurrency_limit or 1
        if running >= limit:
            return key_in_use(task.concurrency_key, running, limit), []
    scopes = rate_scopes(task, pool_rate)
    for key, _rate in scopes:
        repo.lock_concurrency_key(s, f"rate:{key}")
    return None, scopes


# -- rate limits: a sliding log of starts per key (``rate_starts``), exact: at most N starts in any window --------

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(text: str) -> tuple[int, float]:
    """``"10/m"`` -> (10, 60.0): at most 10 starts in any 60 s."""
    n, unit = text.split("/")
    return int(n), _UNITS[unit]


def rate_scopes(task: TaskRecord, pool_rate: str | None) -> list[tuple[str, str]]:
    """The rate limits a start of ``task`` counts against: its own (``task:WF.TASK`` / ``activity:NAME``) and its
    pool's (``pool:NAME``)."""
    scopes = []
    if task.rate_key is not None and task.rate_limit is not None:
        scopes.append((task.rate_key, task.rate_limit))
    if task.pool is not None and pool_rate is not None:
        scopes.append((f"pool:{task.pool}", pool_rate))
    return scopes


def rate_reached(key: str, rate: str) -> str:
    return f"rate limit {key}: {rate} reached"


def rate_wait(s: Session, task: TaskRecord, now: datetime) -> float | None:
    """Seconds until a rate limit of ``task`` lets one more start (None: none of them is reached now): a refused
    claim's message is retried then (Celery countdown), not dropped."""
    pool = repo.lock_pool(s, task.pool, lock=False) if task.pool is not None else None
    wait = None
    for key, rate in rate_scopes(task, pool[1] if pool is not None else None):
        n, window = parse_rate(rate)
        count, oldest = repo.rate_window(s, key, after(-window, now))
        if count >= n and oldest is not None:
            wait = max(wait or 0.0, (oldest - now).total_seconds() + window, 0.05)
    return wait


def key_in_use(key: str, running: int, limit: int) -> str:
    return f"concurrency key {key}: {running}/{limit} running"


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
    released: bool = False,
) -> list[ExecuteMessage]:
    """Re-publish as many of the pool's waiting tasks as it has free slots, next first (their messages go out
    after commit). A hint, not an admission: each still passes :func:`admit` when claimed. ``released``: one
    attempt just freed its slot: only if the pool was full before (claims may have been refused) is a task
    re-published, one (a pool with room refused nobody: its waiting tasks' messages are still on their way)."""
    row = repo.lock_pool(s, pool, lock=False)
    if row is None:
        return []
    running = repo.pool_running(s, pool)
    free = row[0] - running
    if released:
        free = 1 if running + 1 >= row[0] else 0
    if free <= 0:
        return []
    waiting = repo.pool_waiting(s, pool, free, now=now, published_before=published_before)
    messages = _republish(s, rt, waiting, f"a slot of pool {pool} is free", now)
    publish_after_commit(s, rt.dispatcher, execute=messages)
    return messages


def fill_key(
    s: Session, rt: Runtime, key: str, limit: int, now: datetime, *, published_before: datetime | None = None,
    released: bool = False,
) -> list[ExecuteMessage]:
    """:func:`fill` for a task concurrency key."""
    running = repo.key_running(s, key)
    free = limit - running
    if released:
        free = 1 if running + 1 >= limit else 0
    if free <= 0:
        return []
    waiting = repo.key_waiting(s, key, free, now=now, published_before=published_before)
    messages = _republish(s, rt, waiting, f"concurrency key {key} has room", now)
    publish_after_commit(s, rt.dispatcher, execute=messages)
    return messages


def release(s: Session, rt: Runtime, task: TaskRecord, now: datetime) -> None:
    """``task``'s running attempt ended in this transaction: if it held a pool slot (or a place of its concurrency
    key), the next waiting task is re-published after commit."""
    if task.pool is not None:
        fill(s, rt, task.pool, now, released=True)
    if task.concurrency_key is not None:
        fill_key(s, rt, task.concurrency_key, task.concurrency_limit or 1, now, released=True)


def fill_free_slots(s: Session, rt: Runtime, now: datetime) -> int:
    """The reconciler's backstop: in every pool with free slots, re-publish waiting tasks nobody published for
    ``orphan_timeout`` (a release's message lost on its way, a worker killed between claim refusal and ...)."""
    quiet = after(-rt.settings.orphan_timeout_seconds, now)
    usage = repo.pool_usage(s)
    count = 0
    for pool, (_running, waiting) in usage.items():
        if waiting:
            count += len(fill(s, rt, pool, now, published_before=quiet))
    for key, (_running, waiting, limit) in repo.key_usage(s).items():
        if waiting:
            count += len(fill_key(s, rt, key, limit, now, published_before=quiet))
    return count


def set_pool(s: Session, rt: Runtime, name: str, slots: int, now: datetime, rate_limit: str | None = None) -> int:
    """Create or resize a pool (and set or clear its rate limit); waiting tasks that now fit are re-published.
    Returns how many."""
    if not re.match(POOL_RE, name):
        raise TideflowError(f"pool name {name!r} is not valid (letters, digits, '_', '-', '.'; at most 100)")
    if not 0 <= slots <= MAX_SLOTS:
        raise TideflowError(f"slots must be between 0 and {MAX_SLOTS}, not {slots}")
    if rate_limit is not None and not re.match(RATE_RE, rate_limit):
        raise TideflowError(f"rate limit {rate_limit!r} is not N/s, N/m or N/h (e.g. 10/m)")
    repo.set_pool(s, name, slots, now, rate_limit)
    return len(fill(s, rt, name, now))


def pool_rows(s: Session) -> list[dict[str, Any]]:
    """Every pool with its use: name, slots, running (slots in use), waiting (submitted tasks), free, rate_limit."""
    usage = repo.pool_usage(s)
    rates = repo.pool_rates(s)
    rows = []
    for name, slots in repo.pools(s).items():
        running, waiting = usage.get(name, (0, 0))
        rows.append({"name": name, "slots": slots, "running": running, "waiting": waiting,
                     "free": max(slots - running, 0), "rate_limit": rates.get(name)})
    return rows


def waiting_for(s: Session, tasks: Iterable[TaskRecord]) -> dict[int, str]:
    """Why each submitted task of ``tasks`` cannot start now (the run view's ``waiting_for``), by task id."""
    limited = [t for t in tasks if t.state == TaskState.SUBMITTED and is_limited(t)]
    if not limited:
        return {}
    slots = repo.pools(s)
    usage = repo.pool_usage(s, {t.pool for t in limited if t.pool is not None})
    keys = repo.key_usage(s, {t.concurrency_key for t in limited if t.concurrency_key is not None})
    rates = repo.pool_rates(s)
    why: dict[int, str] = {}
    for t in limited:
        if t.pool is not None:
            size = slots.get(t.pool)
            running = usage.get(t.pool, (0, 0))[0]
            if size is None:
                why[t.id] = missing(t.pool)
            elif running >= size:
                why[t.id] = in_use(t.pool, running, size)
        if t.concurrency_key is not None and t.id not in why:
            running, limit = keys.get(t.concurrency_key, (0, 0, 0))[0], t.concurrency_limit or 1
            if running >= limit:
                why[t.id] = key_in_use(t.concurrency_key, running, limit)
        if t.id not in why:
            now = utcnow()
            for key, rate in rate_scopes(t, rates.get(t.pool) if t.pool is not None else None):
                n, window = parse_rate(rate)
                if repo.rate_window(s, key, after(-window, now))[0] >= n:
                    why[t.id] = rate_reached(key, rate)
                    break
    return why


# -- max_active_runs ----------------------------------------------------------------------------------


def max_active_runs(definition: dict[str, Any]) -> int | None:
    limit = definition.get("max_active_runs")
    return int(limit) if limit is not None else None


def run_key(definition: dict[str, Any], params: dict[str, Any]) -> str | None:
    """A new run's workflow concurrency key (``concurrency: {key, limit}``), rendered from its parameters."""
    c = definition.get("concurrency")
    if not c:
        return None
    return str(templating.render(c["key"], {"params": params}))[:200]


def task_key(spec: ConcurrencySpec | None, params: dict[str, Any]) -> dict[str, Any]:
    """A new task row's concurrency columns (every row has both keys: one multi-row insert)."""
    if spec is None:
        return {"concurrency_key": None, "concurrency_limit": None}
    return {"concurrency_key": _key_text(spec.key, {"params": params}), "concurrency_limit": spec.limit}


def _key_text(template: str, context: dict[str, Any], scopes: tuple[str, ...] = templating.DAG_SCOPES) -> str:
    """A rendered concurrency key, as stored (keys are global: the same text in two workflows shares a limit)."""
    return str(templating.render(template, context, scopes=scopes))[:200]


def activity_key(
    spec: ConcurrencySpec, fn: Callable[..., Any], argv: list[Any], kwargs: dict[str, Any],
    params: Mapping[str, Any],
) -> str:
    """A new activity step's concurrency key (``@tideflow.activity(concurrency={"key": ..., "limit": N})``): the
    template rendered against the call's arguments bound by name to ``fn``'s parameters, defaults applied
    (``{{ args.customer_id }}``), and the run's parameters (``{{ params.x }}``); a plain string is the key itself.
    Rendered once, when the workflow makes the call (:meth:`app.code.engine.Context.start_activity`); the step
    row then carries it and is admitted like a DAG task with that key. A key that does not render raises
    :class:`app.templating.TemplateError` (the call's activity then fails without running)."""
    refs = templating.references(spec.key, templating.ACTIVITY_KEY_SCOPES)
    bound: dict[str, Any] = {}
    if any(scope == "args" for scope, _ in refs):
        try:
            call = inspect.signature(fn).bind(*argv, **kwargs)
        except TypeError as exc:
            raise templating.TemplateError(f"the arguments do not fit the activity's parameters: {exc}") from None
        call.apply_defaults()
        bound = dict(call.arguments)
    return _key_text(spec.key, {"args": bound, "params": dict(params)}, templating.ACTIVITY_KEY_SCOPES)


def _key_limit(definition: dict[str, Any]) -> int | None:
    c = definition.get("concurrency")
    return int(c["limit"]) if c else None


def admit_run(s: Session, row: WorkflowRecord, key: str | None = None) -> str | None:
    """Before a new run of ``row``'s workflow (with concurrency key ``key``) is inserted: None if it may run now,
    else why it is queued (the workflow's lock is held until commit, so concurrent starts count each other)."""
    limit, key_limit = max_active_runs(row.definition), _key_limit(row.definition)
    if limit is None and (key_limit is None or key is None):
        return None
    repo.lock_workflow_name(s, row.name)
    if limit is not None:
        running = repo.count_runs_in(s, row.name, RunState.RUNNING)
        queued = repo.count_runs_in(s, row.name, RunState.QUEUED)
        if running >= limit or queued:
            return runs_in_use(row.name, running, limit) + (f", {queued} queued already" if queued else "")
    if key_limit is not None and key is not None:
        running = repo.count_runs_in(s, row.name, RunState.RUNNING, concurrency_key=key)
        queued = repo.count_runs_in(s, row.name, RunState.QUEUED, concurrency_key=key)
        if running >= key_limit or queued:
            return key_in_use(key, running, key_limit) + (f", {queued} queued already" if queued else "")
    return None


def runs_in_use(workflow: str, running: int, limit: int) -> str:
    return f"max_active_runs of {workflow}: {running}/{limit} running"


def promote_runs(s: Session, rt: Runtime, workflow_name: str, *, actor: str) -> list[int]:
    """Start as many of the workflow's queued runs as it has room for (``queued -> running``, then their first
    advance, in this transaction). Returns their ids."""
    latest = repo.workflow(s, workflow_name)
    if latest is None:
        return []
    limit, key_limit = max_active_runs(latest.definition), _key_limit(latest.definition)
    repo.lock_workflow_name(s, workflow_name)
    running = repo.count_runs_in(s, workflow_name, RunState.RUNNING)
    if limit is not None and running >= limit:
        return []
    per_key = repo.running_run_keys(s, workflow_name) if key_limit is not None else {}
    from app.services.master import advance_locked  # the advance loop, which itself finishes runs (and promotes)

    started: list[int] = []
    for run in repo.queued_runs(s, workflow_name, PROMOTE_SCAN):
        if limit is not None and running >= limit:
            break
        key = run.concurrency_key
        if key_limit is not None and key is not None and per_key.get(key, 0) >= key_limit:
            continue  # its key is full: a run behind it with another key may start
        room = []
        if limit is not None:
            room.append(runs_in_use(workflow_name, running, limit))
        if key_limit is not None and key is not None:
            room.append(key_in_use(key, per_key.get(key, 0), key_limit))
        why = "dequeued: " + ("; ".join(room) if room else "its workflow sets no limit now")
        if repo.transition_run(s, run, RunState.RUNNING, actor=actor, reason=why):
            running += 1
            if key is not None:
                per_key[key] = per_key.get(key, 0) + 1
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
    definition = latest.definition if latest is not None else {}
    limit, key_limit = max_active_runs(definition), _key_limit(definition)
    running = repo.count_runs_in(s, run.workflow_name, RunState.RUNNING)
    if limit is not None and running >= limit:
        return runs_in_use(run.workflow_name, running, limit)
    if key_limit is not None and run.concurrency_key is not None:
        key = run.concurrency_key
        return key_in_use(key, repo.count_runs_in(s, run.workflow_name, RunState.RUNNING, concurrency_key=key),
                          key_limit)
    return "queued: starts at the reconciler's next pass"
