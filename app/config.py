"""All configuration, as one typed object read from ``TIDEFLOW_*`` environment variables.

Every timeout that bounds "stuck" time lives here; README.md states the bounds they produce.
"""

from __future__ import annotations

from functools import cached_property

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MASTER_QUEUE = "tideflow.master"
DEFAULT_QUEUE = "tideflow.default"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TIDEFLOW_", extra="ignore", frozen=True)

    database_url: str = "sqlite:///tideflow.sqlite3"
    #: PostgreSQL: how long opening a connection may take (libpq ``connect_timeout``; whole seconds, at least 2).
    database_connect_timeout_seconds: float = Field(10.0, gt=0)
    #: PostgreSQL: how long one SQL statement may run, waiting for a lock included (``statement_timeout``; 0: no
    #: limit). A hung or locked database fails the request (503), the CLI command (one line) or the task's
    #: transaction (retried with back-off) instead of hanging it; a lock held for half a minute (a slow insert,
    #: tests/integration/test_delivery.py's seed scenario) is still waited out. ``tideflow db upgrade`` is not
    #: limited. Set at connect (the ``options`` startup parameter): behind PgBouncer, which refuses unknown startup
    #: parameters, set 0 here and ``ALTER ROLE ... SET statement_timeout`` instead (or list ``options`` in its
    #: ``ignore_startup_parameters``).
    database_statement_timeout_seconds: float = Field(60.0, ge=0)
    #: SQLite: how long a transaction waits for another process's write lock (``busy_timeout``).
    database_busy_timeout_seconds: float = Field(60.0, ge=0)
    broker_url: str = "redis://127.0.0.1:6379/0"
    #: kombu Redis ``global_keyprefix``: lets several deployments (or tests) share one Redis.
    broker_key_prefix: str = ""

    master_queue: str = MASTER_QUEUE
    default_queue: str = DEFAULT_QUEUE

    # -- the bounds ---------------------------------------------------------------------------
    #: a running task's lease; a task whose lease lapses is a lost attempt.
    lease_seconds: float = Field(30.0, gt=0)
    #: how often a running task renews its lease (and notices cancel / lease loss).
    heartbeat_seconds: float | None = Field(None, gt=0)
    #: a submitted task not claimed this long after its last publish is published again.
    orphan_timeout_seconds: float = Field(20.0, gt=0)
    #: cap of the exponential back-off between re-publishes of one unclaimed task.
    orphan_max_backoff_seconds: float = Field(300.0, gt=0)
    #: a finished task (or child run) the master has not acted on this long is advanced by the reconciler.
    advance_timeout_seconds: float = Field(15.0, gt=0)
    #: how often beat runs the reconciler.
    reconcile_interval_seconds: float = Field(5.0, gt=0)
    #: how often beat runs the cron scheduler pass (``tideflow.schedule``): a fire time starts its run within this
    #: (plus the time to publish and run the pass) of when it is due.
    schedule_interval_seconds: float = Field(5.0, gt=0)
    #: a fire time the scheduler deals with at most this late is on time; later, it was missed (``catchup``)
    schedule_on_time_seconds: float = Field(60.0, gt=0)
    #: how many rows of each kind one reconciler pass handles.
    reconcile_batch_size: int = Field(500, gt=0)
    #: a message whose task row is not visible is retried until this long after it was published.
    missing_row_deadline_seconds: float = Field(600.0, gt=0)
    #: first back-off of a missing-row retry (doubles, capped at 30 s).
    missing_row_initial_backoff_seconds: float = Field(0.5, gt=0)
    #: how long a task body gets to stop after losing its lease or timing out, before its process is killed.
    stop_grace_seconds: float = Field(5.0, gt=0)
    #: lost attempts (lease lapsed: worker killed, OOM, host lost, partition) a task may have before it fails;
    #: a task's own ``max_lost_attempts`` overrides it (snapshotted when its run starts). Separate from
    #: ``retries``, which count failures of the body.
    max_lost_attempts: int = Field(3, ge=1, le=100)
    #: a worker that finishes a task advances the run itself, in the same transaction, when the run's lock is
    #: free; off: every advance goes through the master queue (slower; for tests of that path and debugging).
    inline_advance: bool = True
    #: eager execution (Temporal's "eager activity execution"): a worker whose inline advance submits the run's
    #: next task on the same queue claims it in that transaction and runs it right after, without a message
    #: (activities of code runs and a DAG chain's next task alike). Needs ``inline_advance``. Off by default
    #: until the chaos campaign and the outage tests run with it (1.4-1.8x on chains: docs/benchmarks.md).
    eager_activities: bool = False
    #: ... at most this many eager executions follow one message (then the next task is published, so one
    #: Celery task never holds its pool slot for ever and queued work, of higher priority too, gets its turn) ...
    eager_max_chain: int = Field(16, ge=0)
    #: ... and none is started once the message's work has taken this long.
    eager_max_seconds: float = Field(2.0, ge=0)

    #: code workflows: the modules every process imports (comma separated) to register its workflows and activities
    workflow_modules: str = ""
    #: where users' code lives: directories (separated by ``os.pathsep``, ``:``, like ``PYTHONPATH``) that every
    #: process (CLI, web, workers, beat) puts first on ``sys.path`` at start, before importing
    #: ``TIDEFLOW_WORKFLOW_MODULES``; the modules of code workflows and of ``python`` tasks are found there
    #: (or install them as a package). Relative directories are taken from the process's working directory.
    pythonpath: str = ""
    #: a code run's history past this many steps is warned about (in its history and the log) ...
    history_warn_steps: int = Field(10_000, gt=0)
    #: ... and past this many the run fails: long loops use ``ctx.continue_as_new``
    history_max_steps: int = Field(50_000, gt=0)

    #: ``tideflow run start --wait`` says "no worker has claimed a task ... for N s: is a worker running on queue
    #: X?" once tasks have waited this long with none claimed.
    wait_unclaimed_warning_seconds: float = Field(30.0, gt=0)

    #: captured stdout/stderr kept per attempt.
    log_max_bytes: int = Field(64 * 1024, gt=0)
    #: module prefixes a ``python`` task may name (comma separated); empty means any importable module.
    python_modules: str = ""

    worker_concurrency: int | None = None
    #: celery beat's schedule file (Celery's ``beat_schedule_filename``; it only remembers when the reconciler
    #: last ran, so losing it is harmless). Relative paths are relative to beat's working directory.
    beat_schedule_file: str = "celerybeat-schedule"

    # -- the web process (REST API, UI, /metrics) ------------------------------------------------
    #: bearer token(s) the API accepts (comma separated, for rotation). Required unless ``api_auth`` is off.
    api_token: SecretStr | None = None
    #: ``TIDEFLOW_API_AUTH=off`` turns authentication off, for local use only; the default is on.
    api_auth: bool = True
    #: signs the UI's session cookies; unset: derived from ``api_token`` (so changing those ends the sessions).
    #: Set it when every token is a named one (``tideflow token add``), and the same in every web process.
    secret_key: SecretStr | None = None
    #: a UI session ends this long after signing in (or at once when its token is removed)
    session_max_age_seconds: int = Field(12 * 3600, gt=0)
    #: failed sign-ins (login form or a wrong bearer token) one client address may make per window, per process
    login_max_failures: int = Field(10, gt=0)
    login_window_seconds: float = Field(300.0, gt=0)
    web_host: str = "127.0.0.1"
    web_port: int = Field(8000, gt=0, lt=65536)

    #: fault injection for the chaos campaign (tests/chaos): probability that a process SIGKILLs itself
    #: after a commit and before publishing its messages. Always 0 in production.
    fault_crash_before_publish: float = Field(0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        hb = self.heartbeat_seconds
        if hb is not None and hb >= self.lease_seconds:
            raise ValueError("TIDEFLOW_HEARTBEAT_SECONDS must be smaller than TIDEFLOW_LEASE_SECONDS")
        return self

    @cached_property
    def api_tokens(self) -> tuple[str, ...]:
        raw = self.api_token.get_secret_value() if self.api_token is not None else ""
        return tuple(t.strip() for t in raw.split(",") if t.strip())

    @cached_property
    def heartbeat_interval(self) -> float:
        return self.heartbeat_seconds if self.heartbeat_seconds is not None else self.lease_seconds / 3

    @cached_property
    def allowed_python_modules(self) -> tuple[str, ...]:
        return tuple(m.strip() for m in self.python_modules.split(",") if m.strip())


def load_settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]
