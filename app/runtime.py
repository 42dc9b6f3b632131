"""What a process needs to run services: settings, database, dispatcher. Built once per process (after
fork in Celery pool children) and passed explicitly; there is no module-level singleton."""

from __future__ import annotations

import os
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Generic, TypeVar

from sqlalchemy.orm import Session

from app.config import Settings
from app.dag import Rules
from app.db import repository as repo
from app.db.engine import Database
from app.definitions import TaskSpec, WorkflowSpec, task_row_values
from app.dispatch import Dispatcher
from app.errors import NotFound
from app.templating import schedule_scope

V = TypeVar("V")

#: this process's start, told apart from any other process's: two containers on one host network share the
#: hostname and can have the same pid (each has its own pid namespace), so host and pid alone are not an identity.
#: Pool processes forked by one Celery worker inherit it (their pids differ).
BOOT_ID = secrets.token_hex(3)


def worker_identity(node: str | None = None) -> str:
    """Who this process is in the history (``worker`` of task runs and attempts, ``actor`` of events):
    ``NODE:BOOT:PID``, where NODE is the Celery node name (``worker@host``, ``master@host``; the hostname in other
    processes), BOOT is :data:`BOOT_ID` and PID this process's id (still after the last colon)."""
    return f"{node or socket.gethostname()}:{BOOT_ID}:{os.getpid()}"[-200:]  # the columns are String(200)


@dataclass(frozen=True)
class LoadedWorkflow:
    """A registered definition, parsed once per process (a workflow row never changes)."""

    id: int
    name: str
    version: int
    spec: WorkflowSpec
    _task_rows: dict[int, list[dict[str, Any]]] = field(default_factory=dict, compare=False, repr=False)

    @cached_property
    def deps(self) -> dict[str, list[str]]:
        return {t.name: list(t.depends_on) for t in self.spec.tasks}

    @cached_property
    def rules(self) -> Rules:
        """The trigger rules, and which failures a rule handles (``app.dag.Rules``)."""
        return Rules.of(self.deps, {t.name: t.trigger_rule for t in self.spec.tasks if t.trigger_rule is not None})

    @cached_property
    def _tasks(self) -> dict[str, TaskSpec]:
        return self.spec.tasks_by_name()

    def task_rows(self, default_max_lost_attempts: int) -> list[dict[str, Any]]:
        """What each new task row snapshots of the definition (``definitions.task_row_values``), computed once
        per process: starting a run then costs an insert, not a parse of every task's placeholders."""
        cached = self._task_rows.get(default_max_lost_attempts)
        if cached is None:
            cached = [task_row_values(self.spec, t, default_max_lost_attempts=default_max_lost_attempts)
                      for t in self.spec.tasks]
            self._task_rows[default_max_lost_attempts] = cached
        return cached

    def task(self, name: str) -> TaskSpec:
        """A task's definition (``spec.task`` rebuilds its map on each call: O(tasks) on the hot path)."""
        return self._tasks[name]

    @cached_property
    def children(self) -> dict[str, list[str]]:
        kids: dict[str, list[str]] = {t.name: [] for t in self.spec.tasks}
        for t in self.spec.tasks:
            for dep in t.depends_on:
                kids[dep].append(t.name)
        return kids


class Cache(Generic[V]):
    """A per-process map of immutable rows by id, emptied when it reaches ``size`` (thread-safe)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: dict[int, V] = {}
        self._lock = threading.Lock()

    def get(self, key: int, load: Callable[[], V]) -> V:
        with self._lock:
            cached = self._items.get(key)
        if cached is not None:
            return cached
        value = load()
        with self._lock:
            if len(self._items) >= self.size:
                self._items.clear()
            self._items[key] = value
        return value


@dataclass(frozen=True)
class RunInfo:
    """The immutable part of a run row (what a worker needs to execute one of its tasks)."""

    id: int
    workflow_id: int
    workflow_name: str
    params: dict[str, Any]
    priority: int
    #: ``{{ schedule.* }}`` (``app.templating.schedule_scope``)
    schedule: dict[str, Any] = field(default_factory=dict)


@dataclass
class Runtime:
    settings: Settings
    db: Database
    dispatcher: Dispatcher
    #: :func:`worker_identity`
    worker_id: str = field(default_factory=worker_identity)
    _workflows: Cache[LoadedWorkflow] = field(default_factory=lambda: Cache(1000), repr=False)
    _runs: Cache[RunInfo] = field(default_factory=lambda: Cache(10_000), repr=False)
    #: the code workflows' schedules were synced by this process (app/services/scheduler.py)
    schedules_synced: bool = field(default=False, repr=False)

    @classmethod
    def create(cls, settings: Settings, dispatcher: Dispatcher, node: str | None = None) -> Runtime:
        """The process's runtime (``node``: a Celery worker's node name, part of :func:`worker_identity`). Puts
        ``TIDEFLOW_PYTHONPATH`` on ``sys.path`` and imports ``TIDEFLOW_WORKFLOW_MODULES`` first (registering the code
        workflows and activities this process can run): a module that does not import stops the process, naming
        it."""
        if settings.workflow_modules or settings.pythonpath:
            from app.code.registry import load_modules

            load_modules(settings.workflow_modules, settings.pythonpath)
        return cls(settings=settings, db=Database(settings.database_url, settings=settings), dispatcher=dispatcher,
                   worker_id=worker_identity(node))

    def workflow(self, s: Session, workflow_id: int) -> LoadedWorkflow:
        return self._workflows.get(workflow_id, lambda: self._load_workflow(s, workflow_id))

    def run_info(self, s: Session, run_id: int) -> RunInfo:
        """A run's immutable fields, cached per process: the tasks of one run mostly land on the same few
        workers, and these fields never change (state and timestamps are not part of it)."""
        return self._runs.get(run_id, lambda: self._load_run(s, run_id))

    @staticmethod
    def _load_workflow(s: Session, workflow_id: int) -> LoadedWorkflow:
        row = repo.workflow_by_id(s, workflow_id)
        if row is None:
            raise NotFound(f"workflow id {workflow_id} does not exist")
        return LoadedWorkflow(row.id, row.name, row.version, WorkflowSpec.model_validate(row.definition))

    @staticmethod
    def _load_run(s: Session, run_id: int) -> RunInfo:
        row = repo.get_run(s, run_id)
        if row is None:
            raise NotFound(f"run {run_id} does not exist")
        return RunInfo(row.id, row.workflow_id, row.workflow_name, dict(row.params), row.priority,
                       schedule_scope(row.schedule_name, row.schedule_time, row.created_at))

    def close(self) -> None:
        self.db.dispose()


