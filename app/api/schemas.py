"""Request bodies and the response shapes of the REST API (published in its OpenAPI document).

Responses are the read models of :mod:`app.services.views` (the CLI's ``--json`` prints the same dicts);
``tests/unit/test_api_schemas.py`` keeps the two in step.
"""

from __future__ import annotations

from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from app.definitions import NAME_RE, RATE_RE

MAX_ID = 2**63 - 1  # BIGINT: larger ids cannot exist, and the database would reject them
#: an idempotency key: any text but NUL, which PostgreSQL's text columns cannot hold (a 422, not a 500)
KEY_RE = r"^[^\x00]+$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StartRun(_Strict):
    workflow: str = Field(pattern=NAME_RE, description="registered workflow name")
    params: dict[str, Any] = Field(default_factory=dict, description="run parameters: declared by the workflow, each "
                                   "of its declared type (the workflow's `parameters`); a wrong one is a 422")
    priority: int | None = Field(None, ge=0, le=9, description="0..9, 9 most urgent; default: the workflow's")
    version: int | None = Field(None, ge=1, le=2**31 - 1, description="workflow version; default: the latest")
    key: str | None = Field(None, min_length=1, max_length=200, pattern=KEY_RE,
                            description="idempotency key: a start with a key an existing run holds returns that run")


class SendSignal(_Strict):
    data: Any = Field(None, description="the signal's data (any JSON): what the run's ctx.wait_signal returns")
    key: str | None = Field(None, min_length=1, max_length=200, pattern=KEY_RE,
                            description="idempotency key: the same key twice is one signal (delivered once)")


class ForceSuccess(_Strict):
    result: Any = Field(None, description="the task's result (any JSON; default null): a code run's ctx.activity "
                                          "returns it at the step's position, a DAG task's downstream reads it")
    reason: str = Field("by request", max_length=500, description="recorded in the run's history")


class SignalSent(_Strict):
    id: int = Field(description="the signal's id (with a key sent before: the first signal's)")
    run_id: int
    name: str
    created: bool = Field(description="false: a signal with this key was already sent, nothing new was stored")


class Error(_Strict):
    error: str = Field(description="machine-readable code, e.g. not_found, invalid_definition, conflict")
    message: str = Field(description="one line for a person")
    details: list[Any] = Field(default_factory=list, description="per-field problems, when there are several")


class Registered(_Strict):
    name: str
    version: int
    created: bool
    warnings: list[str] = Field(default_factory=list, description="what could not be checked in this process "
                                "(a python task's module it cannot import): the workers may still have it")


class ParameterView(_Strict):
    name: str
    type: str = Field(description="string, integer, number, boolean, array, object or any")
    default: Any = Field(description="null for a required parameter")
    required: bool
    description: str
    enum: list[Any] | None = Field(None, description="the allowed values, when the parameter declares them")


class WorkflowSummary(_Strict):
    name: str
    kind: str = Field(description="dag (a registered definition) or code (a @tideflow.workflow function)")
    version: int | None = Field(description="null: a code workflow no run has stored yet")
    id: int | None
    digest: str
    tasks: int
    created_at: str | None
    module: str | None = Field(None, description="code workflows: the function's module")
    function: str | None = Field(None, description="code workflows: the function's qualified name")
    params: list[str] | None = Field(None, description="code workflows: the function's parameters")
    parameters: list[ParameterView] = Field(
        default_factory=list, description="the declared parameters, typed (both kinds): what a start takes")


class WorkflowDetail(WorkflowSummary):
    versions: list[int]
    definition: dict[str, Any]


class GridRun(_Strict):
    id: int
    kind: str = Field(description="dag or code")
    state: str
    version: int = Field(description="the workflow version it ran")
    created_at: str | None
    duration: float | None


class GridCell(_Strict):
    task_run_id: int
    state: str
    attempt: int


class GridRow(_Strict):
    name: str = Field(description="task name (a code run's step: name#position)")
    cells: list[GridCell | None] = Field(description="one per run, in the order of runs; null: that run has no "
                                                     "such task")


class WorkflowGrid(_Strict):
    workflow: str
    runs: list[GridRun] = Field(description="the most recent runs, oldest first (the grid's columns, left to right)")
    tasks: list[GridRow] = Field(description="the grid's rows: the newest run's tasks in order, then tasks only "
                                             "older runs have")


class RunSummary(_Strict):
    id: int
    workflow: str
    kind: str = Field(description="dag or code")
    state: str
    priority: int
    key: str | None = Field(description="the idempotency key it was started with")
    params: dict[str, Any]
    parent_task_run_id: int | None = Field(description="a child run: the task of its parent run that started it")
    parent_run_id: int | None = Field(description="a child run: its parent run's id")
    error: str | None
    created_at: str | None
    finished_at: str | None
    duration: float | None
    schedule: str | None = Field(None, description="the schedule that started it (null: started otherwise)")
    schedule_time: str | None = Field(None, description="its logical time: the fire time it was started for")


class RunPage(_Strict):
    items: list[RunSummary]
    next_before: int | None = Field(description="pass as ?before= for the next (older) page; null at the end")


class AttemptView(_Strict):
    attempt: int
    worker: str | None
    pid: int | None
    outcome: str
    error: str | None
    started_at: str | None
    finished_at: str | None
    duration: float | None


class TaskView(_Strict):
    id: int
    name: str
    type: str
    state: str
    attempt: int
    depends_on: list[str]
    layer: int = Field(description="graph column: longest distance from a root task")
    row: int = Field(description="graph row within its column")
    failures: int
    queue: str
    priority: int
    worker: str | None
    child_run_id: int | None
    seq: int | None = Field(description="a code run's step: its position in the history")
    due_at: str | None = Field(description="a timer: when it fires; a signal wait: when it times out")
    result: Any
    error: str | None
    started_at: str | None
    finished_at: str | None
    duration: float | None
    attempts: list[AttemptView]
    trigger_rule: str | None = Field(description="a DAG task's trigger rule (all_success, all_done, all_failed, "
                                     "one_success, one_failed, none_failed); None for a code run's step")
    when: str | None = Field(description="a DAG task's condition: false skips it")
    skip_reason: str | None = Field(description="a skipped task: why (e.g. \"when: params.region == 'eu' was false\", "
                                    "\"switch 'route' chose 'b'\", \"trigger rule all_success: upstream 'x' failed\")")
    pool: str | None = Field(description="the pool whose slot its attempts take")
    waiting_for: str | None = Field(description="a submitted task a limit holds back: why, e.g. 'pool db: 4/4 in "
                                                "use'")
    superseded_at: str | None = Field(description="a code run's step a reset (task rerun, force-success) "
                                                  "superseded: when (kept; no longer in the history replay reads)")


class StepView(_Strict):
    seq: int = Field(description="its position in the code run's history")
    kind: str = Field(description="activity, timer, signal, subworkflow or marker (ctx.now/uuid4/random, patches)")
    name: str = Field(description="the activity, the signal, the child workflow, or the marker")
    state: str
    task_run_id: int
    attempt: int = Field(description="an activity: its current attempt (0: not submitted yet)")
    attempts: list[AttemptView]
    due_at: str | None = Field(description="a timer: when it fires; a signal wait: when it times out")
    child_run_id: int | None
    result: Any
    error: str | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    waiting_for: str | None = Field(description="an activity a limit holds back: why, e.g. 'pool db: 4/4 in use'")
    superseded_at: str | None = Field(description="a step a reset superseded (superseded_steps): when")


class Waiting(_Strict):
    kind: str = Field(description="the kind of the step it waits for: activity, timer, signal or subworkflow")
    text: str = Field(description="the wait in words, e.g. 'waiting for signal approve, no timeout'; several "
                                  "waits (a gather) joined by '; '")
    seq: int | None
    name: str = Field(description="the activity, signal or child workflow")
    task_run_id: int
    more: int = Field(description="how many other steps it also waits for")
    until: str | None = Field(description="a timer: when it fires")
    signal: str | None = Field(description="a signal wait: the signal's name")
    timeout_at: str | None = Field(description="a signal wait: when it times out (null: no timeout)")
    child_run_id: int | None = Field(description="a child: its run (null: not started yet)")
    attempt: int | None = Field(description="an activity: the attempt it waits for")


class Blocked(_Strict):
    position: int | None = Field(description="where the code diverged from the history (null: another cause)")
    history: str | None = Field(description="what the history holds at that position")
    asked: str | None = Field(description="what the code asked for there")
    message: str | None = Field(description="why it is blocked and what to do")


class ChildRun(_Strict):
    id: int
    workflow: str
    kind: str = Field(description="dag or code")
    state: str


class RunDetail(RunSummary):
    workflow_version: int | None
    waiting_for: str | None = Field(description="a queued run: why it has not started, e.g. 'max_active_runs of "
                                                "etl: 2/2 running'")
    steps: list[StepView] = Field(description="a code run's steps in position order (empty for a DAG run)")
    superseded_steps: list[StepView] = Field(
        default_factory=list, description="a code run's steps superseded by resets (task rerun, force-success of an "
        "earlier step): kept as they were, oldest reset first; the step now at each position is in steps")
    waiting: Waiting | None = Field(description="a running code run: what it waits for now")
    blocked: Blocked | None = Field(description="a blocked code run: its divergence")
    result: Any = Field(description="a code run's return value")
    state_values: dict[str, Any] = Field(description="a code run's published state (ctx.set_state)")
    cancel_requested: bool
    continued_run_id: int | None = Field(description="ctx.continue_as_new: the run that continues this one")
    children: list[ChildRun] = Field(description="the runs its tasks started (subworkflows, code children), oldest "
                                                 "first")
    tasks: list[TaskView]


class EventView(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: int
    at: str | None
    task: str | None
    attempt: int | None
    from_: str | None = Field(alias="from")
    to: str
    actor: str
    reason: str


class AttemptLog(_Strict):
    attempt: int
    outcome: str
    worker: str | None
    error: str | None
    log: str


class TaskLogs(_Strict):
    task_run_id: int
    run_id: int
    name: str
    state: str
    attempts: list[AttemptLog]


class Retried(_Strict):
    id: int
    state: str
    reset: int = Field(description="tasks reset to pending")


class Health(_Strict):
    status: str = Field(description="ok, or degraded when a dependency is down")
    database: bool
    broker: bool


# -- schedules ----------------------------------------------------------------------------------------------------

class FireView(_Strict):
    fire_time: str | None
    outcome: str = Field(description="started, skipped (reason says why), buffered (overlap: buffer_one) or pending "
                                     "(a backfill's, waiting for a slot)")
    run_id: int | None
    run_state: str | None = None
    reason: str
    actor: str
    backfill: int | None = Field(description="the backfill it belongs to")


class BackfillView(_Strict):
    id: int
    from_: str | None = Field(alias="from")
    to: str | None
    parallel: int
    state: str = Field(description="running or done")
    actor: str
    pending: int
    live: int
    done: int
    skipped: int

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ScheduleView(_Strict):
    name: str
    workflow: str
    cron: str
    timezone: str
    description: str = Field(description="the cron expression in words")
    next: list[str] = Field(description="the next 3 fire times (UTC, ISO 8601); none while paused")
    paused: bool
    paused_by: str | None = Field(description="who paused it last (the token's name, cli, ...)")
    paused_at: str | None
    active: bool
    catchup: str
    catchup_window: float
    overlap: str
    jitter: float
    params: dict[str, Any]
    start: str | None
    end: str | None
    cursor: str | None = Field(description="the last fire time the scheduler dealt with")
    last: list[FireView] = Field(description="the latest fire times, newest first, with their runs")


class ScheduleDetail(ScheduleView):
    backfills: list[BackfillView]


class Triggered(_Strict):
    schedule: str
    run_id: int


class StartBackfill(_Strict):
    from_: AwareDatetime = Field(alias="from", description="first fire time included (ISO 8601 with an offset)")
    to: AwareDatetime = Field(description="last fire time included")
    parallel: int = Field(1, ge=1, le=1000, description="at most this many of its runs at once")
    dry_run: bool = Field(False, description="only list the fire times")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class BackfillStarted(_Strict):
    schedule: str
    fire_times: list[str] = Field(description="every fire time in the range, oldest first")
    new: list[str] = Field(description="those it starts runs for (the others are recorded already)")
    existing: int
    parallel: int
    dry_run: bool
    backfill: int | None = Field(description="the backfill's id (null for a dry run)")
    created: bool = Field(description="false: the same backfill existed (nothing new)")


class PoolView(_Strict):
    name: str
    slots: int
    running: int = Field(description="slots in use: its tasks running now")
    waiting: int = Field(description="its tasks submitted, waiting for a slot (or a worker)")
    free: int
    rate_limit: str | None = Field(description="at most N of its tasks start per second/minute/hour (N/s, N/m, N/h)")


class SetPool(_Strict):
    slots: int = Field(ge=0, le=1_000_000)
    rate_limit: str | None = Field(None, pattern=RATE_RE)
