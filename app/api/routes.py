"""The REST API's routes: each one parses its input, calls the client (:mod:`app.client`, which calls the
services) and returns a read model. No rules live here."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from app.api import auth
from app.api.schemas import (
    MAX_ID,
    BackfillStarted,
    Error,
    EventView,
    ForceSuccess,
    Health,
    PoolView,
    Registered,
    Retried,
    RunDetail,
    RunPage,
    ScheduleDetail,
    ScheduleView,
    SendSignal,
    SetPool,
    SignalSent,
    StartBackfill,
    StartRun,
    TaskLogs,
    Triggered,
    WorkflowDetail,
    WorkflowGrid,
    WorkflowSummary,
)
from app.client import Tideflow
from app.definitions import NAME_RE, POOL_RE, WorkflowSpec
from app.services import views
from app.states import RunKind, RunState


def client(request: Request) -> Tideflow:
    tf: Tideflow = request.app.state.tideflow
    return tf


TF = Annotated[Tideflow, Depends(client)]
RunId = Annotated[int, Path(ge=1, le=MAX_ID, description="run id")]
Name = Annotated[str, Path(pattern=NAME_RE, description="workflow name")]
SignalName = Annotated[str, Path(pattern=NAME_RE, description="signal name (what ctx.wait_signal waits for)")]

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Error, "description": "the body could not be read (not UTF-8 JSON)"},
    401: {"model": Error, "description": "missing or invalid token, or the session has ended"},
    403: {"model": Error, "description": "the token's role does not allow this, or a browser session without the "
                                         "CSRF header"},
    429: {"model": Error, "description": "too many failed sign-ins from this address (Retry-After)"},
    422: {"model": Error, "description": "invalid request or definition; nothing was stored"},
    503: {"model": Error, "description": "database unavailable; nothing was changed"},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Error, "description": "no such object"}}
_CONFLICT: dict[int | str, dict[str, Any]] = {409: {"model": Error, "description": "not allowed in this state"}}

public = APIRouter(prefix="/api", tags=["health"])
#: reads need a viewer token, every other method an operator token; admin routes add ``auth.ADMIN`` (app/api/auth.py)
api = APIRouter(prefix="/api", dependencies=[auth.BY_METHOD], responses=_ERRORS)


@public.get("/health", response_model=Health, responses={503: {"model": Health}})
def health(tf: TF) -> Any:
    """Liveness and readiness: 200 when the database and the broker answer, 503 otherwise (no token)."""
    data = tf.health()
    return data if data["status"] == "ok" else JSONResponse(data, status_code=503)


# -- workflows --------------------------------------------------------------------------------------
@api.get("/workflows", response_model=list[WorkflowSummary], tags=["workflows"])
def list_workflows(tf: TF) -> Any:
    """The latest version of every registered workflow."""
    return tf.read(views.list_workflows)


@api.post("/workflows", response_model=Registered, status_code=201, tags=["workflows"], dependencies=[auth.ADMIN],
          responses={200: {"model": Registered, "description": "same content as the latest version"}})
def register_workflow(definition: WorkflowSpec, tf: TF, response: Response) -> Any:
    """Validate and store a definition. Changed content becomes a new version (201); the same content as
    the latest version returns it (200). An invalid definition is rejected (422) and nothing is stored: a
    ``python`` task whose function does not take its ``args`` too, when this process can import its module;
    when it cannot, ``warnings`` says so."""
    report = tf.register_report(definition)
    if not report["created"]:
        response.status_code = 200
    return report


@api.get("/workflows/{name}", response_model=WorkflowDetail, tags=["workflows"], responses=_NOT_FOUND)
def show_workflow(name: Name, tf: TF,
                  version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None) -> Any:
    """One version (default: the latest) with its definition and the list of all versions."""
    return tf.read(views.show_workflow, name, version)


@api.get("/workflows/{name}/grid", response_model=WorkflowGrid, tags=["workflows"], responses=_NOT_FOUND)
def workflow_grid(name: Name, tf: TF, limit: Annotated[int, Query(ge=1, le=100)] = 25) -> Any:
    """Recent runs x tasks (Airflow's grid): the ``limit`` most recent runs, oldest first, and for each task
    name its state in each of them."""
    return tf.read(views.workflow_grid, name, limit)


# -- runs -------------------------------------------------------------------------------------------
@api.post("/runs", response_model=RunDetail, status_code=201, tags=["runs"],
          responses={**_NOT_FOUND, 200: {"model": RunDetail, "description": "a run already holds the key"}})
def start_run(body: StartRun, tf: TF, request: Request, response: Response) -> Any:
    """Start a run (a DAG or code workflow). Its first tasks are published once the run is committed. With a
    ``key`` an existing run holds: that run, status 200 (idempotent start; racing starts create one run)."""
    run_id, created = tf.start_run_keyed(body.workflow, body.params, priority=body.priority, version=body.version,
                                         actor=_actor(request), key=body.key)
    if not created:
        response.status_code = 200
    return tf.run(run_id)


@api.get("/runs", response_model=RunPage, tags=["runs"])
def list_runs(
    tf: TF,
    state: Annotated[RunState | None, Query(
        description="incl. blocked (a code run waiting for run resume) and paused (run pause)")] = None,
    kind: Annotated[RunKind | None, Query(description="dag or code")] = None,
    workflow: Annotated[str | None, Query(pattern=NAME_RE)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[int | None, Query(ge=1, le=MAX_ID, description="only runs with a smaller id")] = None,
) -> Any:
    """Runs, newest first, filtered by state, kind and workflow; page with ``before``."""
    items = tf.read(views.list_runs, state=state.value if state else None, workflow=workflow, limit=limit,
                    before=before, kind=kind.value if kind else None)
    return {"items": items, "next_before": items[-1]["id"] if len(items) == limit else None}


@api.get("/runs/{run_id}", response_model=RunDetail, tags=["runs"], responses=_NOT_FOUND)
def show_run(run_id: RunId, tf: TF) -> Any:
    """A run with its tasks (state, graph position, attempts)."""
    return tf.run(run_id)


@api.get("/runs/{run_id}/history", response_model=list[EventView], tags=["runs"], responses=_NOT_FOUND)
def run_history(run_id: RunId, tf: TF) -> Any:
    """The run's append-only event history, oldest first."""
    return tf.read(views.run_history, run_id)


@api.post("/runs/{run_id}/cancel", response_model=RunDetail, tags=["runs"], responses={**_NOT_FOUND, **_CONFLICT})
def cancel_run(run_id: RunId, tf: TF, request: Request) -> Any:
    """Cancel a running run: pending tasks never start, running ones are stopped (409 if already finished)."""
    tf.cancel(run_id, actor=_actor(request))
    return tf.run(run_id)


@api.post("/runs/{run_id}/retry", response_model=Retried, tags=["runs"], responses={**_NOT_FOUND, **_CONFLICT})
def retry_run(run_id: RunId, tf: TF, request: Request) -> Any:
    """Re-run a failed or cancelled run from its unfinished tasks (409 otherwise)."""
    reset = tf.retry(run_id, actor=_actor(request))
    return {"id": run_id, "state": tf.run(run_id)["state"], "reset": reset}


@api.post("/runs/{run_id}/signals/{name}", response_model=SignalSent, status_code=201, tags=["runs"],
          responses={**_NOT_FOUND, **_CONFLICT,
                     200: {"model": SignalSent, "description": "a signal with this key was already sent"}})
def send_signal(run_id: RunId, name: SignalName, tf: TF, request: Request, response: Response,
                body: SendSignal | None = None) -> Any:
    """Send signal ``name`` with JSON ``data`` to a code run: stored, then delivered once, in arrival order, to
    the run's ``ctx.wait_signal(name)`` (now if it waits for it, else when it does). With a ``key`` sent
    before: that signal, status 200, nothing new. 409 for a finished run or a DAG run."""
    data, key = (body.data, body.key) if body is not None else (None, None)
    signal_id, created = tf.signal_keyed(run_id, name, data, key=key, actor=_actor(request))
    if not created:
        response.status_code = 200
    return {"id": signal_id, "run_id": run_id, "name": name, "created": created}


@api.post("/runs/{run_id}/pause", response_model=RunDetail, tags=["runs"], responses={**_NOT_FOUND, **_CONFLICT})
def pause_run(run_id: RunId, tf: TF, request: Request) -> Any:
    """Pause a running run (DAG or code): no new task starts until it is resumed; running tasks finish (409 for a
    run that is not running)."""
    tf.pause(run_id, actor=_actor(request))
    return tf.run(run_id)


@api.post("/runs/{run_id}/resume", response_model=RunDetail, tags=["runs"], responses={**_NOT_FOUND, **_CONFLICT})
def resume_run(run_id: RunId, tf: TF, request: Request) -> Any:
    """Continue a paused run, or a ``blocked`` code run with the code this deployment runs (409 for a run that is
    neither). A blocked run is replayed at once: it is running again, or blocked again if the code still
    diverges."""
    tf.resume(run_id, actor=_actor(request))
    return tf.run(run_id)


# -- schedules (admin: pause, resume, trigger, backfill) -------------------------------------------------------------
ScheduleName = Annotated[str, Path(pattern=r"^[A-Za-z_][A-Za-z0-9_\-.:]{0,99}$", description="schedule name")]


@api.get("/schedules", response_model=list[ScheduleView], tags=["schedules"])
def list_schedules(tf: TF, workflow: Annotated[str | None, Query(pattern=NAME_RE)] = None) -> Any:
    """Every schedule: cron and its meaning, next 3 fire times, paused, the latest fire times and their runs."""
    return tf.schedules(workflow)


@api.get("/schedules/{name}", response_model=ScheduleDetail, tags=["schedules"], responses=_NOT_FOUND)
def show_schedule(name: ScheduleName, tf: TF) -> Any:
    """One schedule with its recent fire times (a skipped one says why) and its backfills."""
    return tf.schedule(name)


@api.post("/schedules/{name}/pause", response_model=ScheduleDetail, tags=["schedules"], dependencies=[auth.ADMIN],
          responses={**_NOT_FOUND, **_CONFLICT})
def pause_schedule(name: ScheduleName, tf: TF, request: Request) -> Any:
    """Stop firing (409 if already paused); runs already started go on."""
    tf.pause_schedule(name, actor=_actor(request))
    return tf.schedule(name)


@api.post("/schedules/{name}/resume", response_model=ScheduleDetail, tags=["schedules"], dependencies=[auth.ADMIN],
          responses={**_NOT_FOUND, **_CONFLICT})
def resume_schedule(name: ScheduleName, tf: TF, request: Request) -> Any:
    """Fire again from now (409 if not paused); the pause's fire times are not caught up."""
    tf.resume_schedule(name, actor=_actor(request))
    return tf.schedule(name)


@api.post("/schedules/{name}/trigger", response_model=Triggered, status_code=201, tags=["schedules"],
          dependencies=[auth.ADMIN], responses={**_NOT_FOUND, **_CONFLICT})
def trigger_schedule(name: ScheduleName, tf: TF, request: Request) -> Any:
    """Start a run of the schedule now (its logical time: now)."""
    return {"schedule": name, "run_id": tf.trigger_schedule(name, actor=_actor(request))}


@api.post("/schedules/{name}/backfill", response_model=BackfillStarted, tags=["schedules"],
          dependencies=[auth.ADMIN], responses=_NOT_FOUND)
def backfill_schedule(name: ScheduleName, body: StartBackfill, tf: TF, request: Request) -> Any:
    """One run per fire time in [from, to], oldest first, at most ``parallel`` at once, submitted by the scheduler
    (durable). Fire times already recorded are left alone: the same backfill again creates nothing new."""
    return tf.backfill(name, body.from_, body.to, parallel=body.parallel, dry_run=body.dry_run,
                       actor=_actor(request))


# -- tasks ------------------------------------------------------------------------------------------
@api.get("/tasks/{task_run_id}/logs", response_model=TaskLogs, tags=["tasks"], responses=_NOT_FOUND)
def task_logs(task_run_id: Annotated[int, Path(ge=1, le=MAX_ID)], tf: TF) -> Any:
    """Each attempt's captured output (capped at TIDEFLOW_LOG_MAX_BYTES) and error."""
    return tf.read(views.task_logs, task_run_id)


TaskRunId = Annotated[int, Path(ge=1, le=MAX_ID, description="task run id")]


@api.post("/tasks/{task_run_id}/force-success", response_model=RunDetail, tags=["tasks"],
          responses={**_NOT_FOUND, **_CONFLICT})
def force_success(task_run_id: TaskRunId, tf: TF, request: Request, body: ForceSuccess | None = None) -> Any:
    """Mark a failed task succeeded, with ``result`` (JSON, default null). A DAG run's task: its downstream
    continues, a failed run is running again. A code run's failed activity step: the run is replayed and
    ``ctx.activity`` returns ``result`` there (positions recorded after it are superseded and replayed anew; 409
    while one of them is live). 409 for a task that is not failed. Returns the task's run."""
    run_id, _ = tf.force_success(task_run_id, result=body.result if body else None,
                                 reason=body.reason if body else "by request", actor=_actor(request))
    return tf.run(run_id)


@api.post("/tasks/{task_run_id}/rerun", response_model=RunDetail, tags=["tasks"],
          responses={**_NOT_FOUND, **_CONFLICT})
def rerun_task(task_run_id: TaskRunId, tf: TF, request: Request) -> Any:
    """Run a task of a finished DAG run again with everything downstream of it, as new attempts; in a finished
    code run, reset it to the step's position: that step and every later one are superseded (kept) and run anew,
    earlier ones replay their recorded results (409 while the run is not finished). Returns the task's run."""
    run_id, _, _ = tf.rerun(task_run_id, actor=_actor(request))
    return tf.run(run_id)


# -- pools ------------------------------------------------------------------------------------------
@api.get("/pools", response_model=list[PoolView], tags=["pools"])
def list_pools(tf: TF) -> Any:
    """Every pool: its slots, the slots in use (running), the tasks waiting for one, free slots."""
    return tf.pools()


@api.put("/pools/{name}", response_model=PoolView, tags=["pools"], dependencies=[auth.ADMIN])
def set_pool(name: Annotated[str, Path(pattern=POOL_RE)], body: SetPool, tf: TF) -> Any:
    """Create or resize a pool (``tideflow pool set NAME SLOTS``); tasks waiting that now fit start."""
    return tf.set_pool(name, body.slots, rate_limit=body.rate_limit)


def _actor(request: Request) -> str:
    """Who did it, for the event history: the token's name."""
    return auth.actor(request)
