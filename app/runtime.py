"""What a process needs to run services: settings, database, dispatcher. Built once per process (after
fork in Celery pool children) and passed explicitly; there is no module-level singleton."""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass, field
from functools import cached_property

from sqlalchemy.orm import Session

from app.config import Settings
from app.db import repository as repo
from app.db.engine import Database
from app.definitions import WorkflowSpec
from app.dispatch import Dispatcher
from app.errors import NotFound


@dataclass(frozen=True)
class LoadedWorkflow:
    """A registered definition, parsed once per process (a workflow row never changes)."""

    id: int
    name: str
    version: int
    spec: WorkflowSpec

    @cached_property
    def deps(self) -> dict[str, list[str]]:
        return {t.name: list(t.depends_on) for t in self.spec.tasks}

    def ancestors_of(self, name: str) -> set[str]:
        """Every task upstream of ``name`` (walked on demand: a whole-DAG table is quadratic on long chains)."""
        seen: set[str] = set()
        stack = list(self.deps[name])
        while stack:
            dep = stack.pop()
            if dep not in seen:
                seen.add(dep)
                stack.extend(self.deps[dep])
        return seen


@dataclass
class Runtime:
    settings: Settings
    db: Database
    dispatcher: Dispatcher
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    _workflows: dict[int, LoadedWorkflow] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def create(cls, settings: Settings, dispatcher: Dispatcher) -> Runtime:
        return cls(settings=settings, db=Database(settings.database_url), dispatcher=dispatcher)

    def workflow(self, s: Session, workflow_id: int) -> LoadedWorkflow:
        with self._lock:
            cached = self._workflows.get(workflow_id)
        if cached is not None:
            return cached
        row = repo.workflow_by_id(s, workflow_id)
        if row is None:
            raise NotFound(f"workflow id {workflow_id} does not exist")
        loaded = LoadedWorkflow(row.id, row.name, row.version, WorkflowSpec.model_validate(row.definition))
        with self._lock:
            if len(self._workflows) > 1000:
                self._workflows.clear()
            self._workflows[workflow_id] = loaded
        return loaded

    def close(self) -> None:
        self.db.dispose()


