"""The Python API, for application code::

    from app.client import Tideflow

    tf = Tideflow.from_env()
    run_id = tf.start_run("nightly-etl", {"day": "2026-01-01"})
    run = tf.wait(run_id, timeout=600)   # polls until the run is terminal; its view, as tf.run(run_id) returns it
    print(run["state"])                  # succeeded, failed or cancelled (still running after a timeout)

    # or inside your own SQLAlchemy transaction: the run exists, and is dispatched, only if you commit
    with Session(engine) as session, session.begin():
        session.add(order)
        tf.start_run("fulfil-order", {"order": order_id}, session=session)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.config import Settings, load_settings
from app.definitions import WorkflowSpec, load_definition_file
from app.runtime import Runtime
from app.services import control, master, views
from app.states import RUN_SETTLED

V = TypeVar("V")


class Tideflow:
    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    @classmethod
    def from_env(cls, settings: Settings | None = None) -> Tideflow:
        from app.broker import CeleryDispatcher, create_app  # Celery only for a client that publishes

        settings = settings or load_settings()
        return cls(Runtime.create(settings, CeleryDispatcher(create_app(settings))))

    def register(self, definition: WorkflowSpec | dict[str, Any] | str | Path) -> tuple[str, int, bool]:
        report = self.register_report(definition)
        return report["name"], report["version"], report["created"]

    def register_report(self, definition: WorkflowSpec | dict[str, Any] | str | Path) -> dict[str, Any]:
        """:meth:`register`, as ``POST /api/workflows`` answers: ``{name, version, created, warnings}``; the
        warnings say what could not be checked in this process (a python task's module it cannot import)."""
        if isinstance(definition, str | Path):
            definition = load_definition_file(definition)
        with self.runtime.db.transaction() as s:
            row, created, warnings = control.register_workflow(
                s, definition, python_modules=self.runtime.settings.allowed_python_modules)
            return {"name": row.name, "version": row.version, "created": created, "warnings": warnings}

    def validate(self, definition: WorkflowSpec | dict[str, Any] | str | Path) -> dict[str, Any]:
        """Check a definition exactly as :meth:`register` would, storing nothing: ``{name, warnings}``, or the
        :class:`~app.errors.DefinitionError` registering would raise."""
        if isinstance(definition, str | Path):
            definition = load_definition_file(definition)
        with self.runtime.db.read() as s:
            spec, warnings = control.check_definition(
                s, definition, python_modules=self.runtime.settings.allowed_python_modules)
            return {"name": spec.name, "warnings": warnings}

    def start_run(
        self, workflow: Any, params: dict[str, Any] | None = None, *, priority: int | None = None,
        version: int | None = None, session: Session | None = None, actor: str = "api", key: str | None = None,
    ) -> int:
        """Start a run of ``workflow`` (a DAG or code workflow's name, or a ``@tideflow.workflow`` function).
        ``key``: idempotent start: if a run holds that key, its id is returned and nothing new starts (the key
        is unique in the database, so racing starts create one run)."""
        return self.start_run_keyed(workflow, params, priority=priority, version=version, session=session,
                                    actor=actor, key=key)[0]

    def start_run_keyed(
        self, workflow: Any, params: dict[str, Any] | None = None, *, priority: int | None = None,
        version: int | None = None, session: Session | None = None, actor: str = "api", key: str | None = None,
    ) -> tuple[int, bool]:
        """:meth:`start_run`, also saying whether the run is new (False: ``key`` was held by an existing run)."""
        from app.code.registry import workflow_name

        name = workflow_name(workflow)
        if session is not None:
            return master.start_run_keyed(session, self.runtime, name, params, priority=priority, version=version,
                                          actor=actor, key=key)
        with self.runtime.db.transaction() as s:
            return master.start_run_keyed(s, self.runtime, name, params, priority=priority, version=version,
                                          actor=actor, key=key)

    def parameters(self, workflow: Any) -> list[Any] | None:
        """The typed parameters (:class:`app.params.Parameter`) a start of ``workflow`` is checked against; None
        when it is not registered (here, for a code workflow)."""
        from app.code.registry import workflow_name

        return self.read(master.declared_parameters, workflow_name(workflow))

    def check_start(self, workflow: Any, params: dict[str, Any] | None = None, *, version: int | None = None
                    ) -> dict[str, Any]:
        """Check a start without doing it (``run start --dry-run``): the parameters the run would get, or the
        error :meth:`start_run` would raise. Nothing is stored or published."""
        from app.code.registry import workflow_name

        with self.runtime.db.read() as s:
            return master.resolve_params(s, self.runtime, workflow_name(workflow), params, version=version)

    def signal(
        self, run_id: int, name: str, data: Any = None, *, key: str | None = None, session: Session | None = None,
        actor: str = "api",
    ) -> int:
        """Send signal ``name`` (with JSON ``data``) to a code run: stored durably (inside ``session``'s
        transaction when given), delivered to the run's ``ctx.wait_signal(name)`` once, in arrival order. The
        same ``key`` twice delivers once. Returns the signal's id. A finished run: :class:`InvalidState`."""
        return self.signal_keyed(run_id, name, data, key=key, session=session, actor=actor)[0]

    def signal_keyed(
        self, run_id: int, name: str, data: Any = None, *, key: str | None = None, session: Session | None = None,
        actor: str = "api",
    ) -> tuple[int, bool]:
        """:meth:`signal`, also saying whether the signal is new (False: ``key`` was sent before; its id)."""
        from app.code.runs import send_signal

        if session is not None:
            return send_signal(session, self.runtime, run_id, name, data, key=key, actor=actor)
        with self.runtime.db.transaction() as s:
            return send_signal(s, self.runtime, run_id, name, data, key=key, actor=actor)

    def resume(self, run_id: int, *, actor: str = "api") -> str:
        """Continue a paused run, or a ``blocked`` code run with the code deployed now; returns its state after."""
        return self.resume_from(run_id, actor=actor)[1]

    def resume_from(self, run_id: int, *, actor: str = "api") -> tuple[str, str]:
        """:meth:`resume`, also saying what the run was resumed from: ``paused`` or ``blocked``."""
        was, state = control.resume_run(self.runtime, run_id, actor=actor)
        return str(was), state

    def pause(self, run_id: int, *, actor: str = "api") -> None:
        """Pause a running run (DAG or code): no new task starts until :meth:`resume`; running ones finish."""
        control.pause_run(self.runtime, run_id, actor=actor)

    def task_id(self, run_id: int, task: str | int) -> int:
        """The task run id of a run's task given by name or task run id (as ``tideflow task logs RUN TASK``)."""
        return self.read(views.run_task_id, run_id, str(task))

    def force_success(
        self, run_or_task_run_id: int, step: str | int | None = None, *, result: Any = None, actor: str = "api",
        reason: str = "by request",
    ) -> tuple[int, str]:
        """Mark a failed task succeeded with ``result`` (JSON; default None): ``tf.force_success(run, step)`` (a
        task name, a task run id, or a code run's step position ``"#3"``: as ``tideflow task force-success RUN
        STEP``), or ``tf.force_success(task_run_id)``. A DAG run's downstream continues; a code run is replayed and
        ``ctx.activity`` returns ``result`` at that position. Returns the run's id and state after."""
        task_run_id = run_or_task_run_id if step is None else self.task_id(run_or_task_run_id, step)
        return control.force_success_task(self.runtime, task_run_id, actor=actor, reason=reason, result=result)

    def rerun(self, run_or_task_run_id: int, step: str | int | None = None, *, actor: str = "api",
              ) -> tuple[int, str, int]:
        """Run a finished run again from a task (``tf.rerun(run, step)`` or ``tf.rerun(task_run_id)``): a DAG's
        task and everything downstream of it; a code run reset to the step's position (it and every later step
        superseded and run anew). Returns the run's id, its state after and how many tasks were reset."""
        task_run_id = run_or_task_run_id if step is None else self.task_id(run_or_task_run_id, step)
        return control.rerun_task(self.runtime, task_run_id, actor=actor)

    def replay(self, run_id: int) -> Any:
        """Replay a stored code run against this process's code, with no side effects: a
        :class:`~app.code.replay.ReplayReport` (``.ok``, ``.divergence``)."""
        from app.code.replay import replay_run

        with self.runtime.db.read() as s:
            return replay_run(s, run_id)

    def cancel(self, run_id: int, *, actor: str = "api") -> None:
        """Cancel a run: a DAG run's live tasks stop; a code run's current wait raises ``tideflow.Cancelled``
        (its ``finally`` blocks and compensations run) and its children are cancelled."""
        control.cancel_run(self.runtime, run_id, actor=actor)

    def retry(self, run_id: int, *, actor: str = "api") -> int:
        return control.retry_run(self.runtime, run_id, actor=actor)

    # -- schedules (app/services/scheduler.py) ---------------------------------------------------------------------

    def schedules(self, workflow: str | None = None) -> list[dict[str, Any]]:
        """Every schedule (``tideflow schedule list``, ``GET /api/schedules``): cron, its text, next 3 fire times,
        paused, the last fire times. Syncs this process's code workflows' schedules first."""
        from app.services import scheduler

        scheduler.sync_code_schedules(self.runtime)
        return self.read(views.list_schedules, workflow=workflow)

    def schedule(self, name: str) -> dict[str, Any]:
        """One schedule with its recent fire times (skipped ones with why) and its backfills."""
        return self.read(views.show_schedule, name)

    def pause_schedule(self, name: str, *, actor: str = "api") -> None:
        from app.services import scheduler

        scheduler.set_paused(self.runtime, name, True, actor=actor)

    def resume_schedule(self, name: str, *, actor: str = "api") -> None:
        """Resume from now: fire times of the pause are not caught up (backfill them if needed)."""
        from app.services import scheduler

        scheduler.set_paused(self.runtime, name, False, actor=actor)

    def trigger_schedule(self, name: str, *, actor: str = "api") -> int:
        """Start a run of the schedule now (logical time: now); returns the run's id."""
        from app.services import scheduler

        return scheduler.trigger(self.runtime, name, actor=actor)

    def backfill(self, name: str, start: datetime, end: datetime, *, parallel: int = 1, dry_run: bool = False,
                 actor: str = "api") -> dict[str, Any]:
        """One run per fire time of schedule ``name`` in [start, end], oldest first, at most ``parallel`` live at
        once, submitted by the scheduler passes (durable: it goes on without this process). Fire times already
        recorded are left alone, so the same backfill again creates nothing new. ``dry_run``: only the list."""
        from app.services import scheduler

        return scheduler.create_backfill(self.runtime, name, start, end, parallel=parallel, dry_run=dry_run,
                                         actor=actor)


    def set_pool(self, name: str, slots: int, *, rate_limit: str | None = None) -> dict[str, Any]:
        """Create or resize pool ``name`` (``tideflow pool set``): at most ``slots`` of the tasks naming it run at
        once, cluster-wide (and, with ``rate_limit`` ``"10/m"``, at most 10 of them start per minute); tasks that
        now fit are re-published at once. Returns the pool with its use."""
        from app.clock import utcnow
        from app.services import limits

        with self.runtime.db.transaction() as s:
            limits.set_pool(s, self.runtime, name, slots, utcnow(), rate_limit)
        return next(p for p in self.pools() if p["name"] == name)

    def pools(self) -> list[dict[str, Any]]:
        """Every pool: name, slots, running (slots in use), waiting (tasks submitted to it), free."""
        from app.services import limits

        return self.read(limits.pool_rows)

    def read(self, view: Callable[..., V], *args: Any, **kwargs: Any) -> V:
        """Call a read view of :mod:`app.services.views` in a read-only session."""
        with self.runtime.db.read() as s:
            return view(s, *args, **kwargs)

    def run(self, run_id: int) -> dict[str, Any]:
        return self.read(views.show_run, run_id)

    def health(self) -> dict[str, Any]:
        """Can this process reach the database and the broker? Never raises."""
        database = True
        try:
            with self.runtime.db.read() as s:
                s.execute(text("SELECT 1"))
        except Exception:  # noqa: BLE001 - any failure means "down"
            database = False
        broker = self.runtime.dispatcher.ping()
        return {"status": "ok" if database and broker else "degraded", "database": database, "broker": broker}

    def wait(
        self, run_id: int, timeout: float = 300.0, interval: float = 0.2, *,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll the run every ``interval`` seconds until it is terminal (succeeded, failed or cancelled), or a
        code run is ``blocked`` (it waits for a person), or ``timeout`` seconds have passed; return the last view
        read: the same dict as :meth:`run` and ``GET /api/runs/{id}``, so
        ``tf.wait(run_id)["state"] == "succeeded"`` tells success. After a timeout
        its state is not terminal (check ``view["state"] in app.states.RUN_TERMINAL``); nothing is cancelled.
        ``on_progress(view)`` is called with every view read, the first and the returned one included (the
        CLI's ``run start --wait`` and ``tideflow demo`` draw their live table with it). Raises
        :class:`app.errors.NotFound` if the run does not exist."""
        deadline = time.monotonic() + timeout
        while True:
            view = self.run(run_id)
            if on_progress is not None:
                on_progress(view)
            remaining = deadline - time.monotonic()
            if view["state"] in RUN_SETTLED or remaining <= 0:
                return view
            time.sleep(min(interval, remaining))

    def close(self) -> None:
        self.runtime.close()
