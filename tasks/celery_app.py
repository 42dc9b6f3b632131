"""The Celery app instance of the worker processes (the only process-global object), and the hooks that must run
in them. ``celery -A tasks worker|beat|flower`` finds it. Its configuration, and why: :mod:`app.broker`."""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from typing import TYPE_CHECKING, Any

from celery import signals
from sqlalchemy.exc import InterfaceError, OperationalError, ProgrammingError

from app.broker import CeleryDispatcher, create_app

if TYPE_CHECKING:
    from app.runtime import Runtime

#: a database outage delays a message (Celery retries it with back-off), it never drops it
DB_UNAVAILABLE = (OperationalError, InterfaceError)

app = create_app()


def _import_workflow_modules() -> None:
    """Workers and beat put ``TIDEFLOW_PYTHONPATH`` on ``sys.path`` and import the users' workflow modules at start:
    a module that does not import stops the process here, with the module's name, instead of failing each task it
    would have run."""
    import sys

    from app.code.registry import ConfigurationError, load_modules
    from app.config import load_settings

    settings = load_settings()
    if settings.workflow_modules or settings.pythonpath:
        try:
            load_modules(settings.workflow_modules, settings.pythonpath)  # TIDEFLOW_PYTHONPATH first
        except ConfigurationError as exc:
            print(f"error: {exc}", file=sys.stderr)  # one line, not the import's traceback
            raise SystemExit(1) from None


_import_workflow_modules()


# -- the beat job's routine lines stay out of the INFO log ---------------------------------------------------
#: tasks whose routine per-message lines Celery logs at INFO are logged at DEBUG instead: beat's "Scheduler:
#: Sending due task" (celery/beat.py ``apply_entry``), the worker's "Task ... received" (celery/worker/strategy.py)
#: and "Task ... succeeded in" (celery/app/trace.py, ``LOG_SUCCESS``). The reconciler runs every
#: TIDEFLOW_RECONCILE_INTERVAL_SECONDS and logs at INFO itself, with what it did, only when it acted
#: (app/services/reconciler.py); ``--loglevel DEBUG`` shows every pass again. Its failures stay errors.
QUIET_TASKS = frozenset({"tideflow.reconcile", "tideflow.schedule"})


class _RoutineTaskLines(logging.Filter):
    """Demotes Celery's INFO lines about a :data:`QUIET_TASKS` message to DEBUG (dropped unless the logger logs
    DEBUG). Celery passes the task's name in ``extra={"data": ...}`` (trace and strategy) or as beat's second
    argument."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        data = getattr(record, "data", None)
        name = data.get("name") if isinstance(data, dict) else None
        if name is None and isinstance(record.args, tuple) and len(record.args) == 2 \
                and str(record.msg).startswith("Scheduler: Sending due task"):
            name = record.args[1]
        if name not in QUIET_TASKS:
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return True


for _name in ("celery.beat", "celery.worker.strategy", "celery.app.trace"):
    logging.getLogger(_name).addFilter(_RoutineTaskLines())


# -- SIGTERM is for the main process -------------------------------------------------------------------
# Process managers that signal a whole process group (honcho and foreman: os.killpg) hit Celery's pool
# processes too, and a pool process exits at once on SIGTERM
# (billiard/common.py, reset_signals -> _shutdown_cleanup): the body it is running is cut off, and its attempt
# is lost until its lease lapses (then retried, or failed when it has no retries left). The main process does
# the right thing with its own SIGTERM (warm shutdown: running bodies finish, then every pool process is sent
# the stop sentinel, by a cold shutdown too: celery/concurrency/asynpool.py, _stop_task_handler), and a pool
# process never outlives it (celery/concurrency/prefork.py, process_initializer: PR_SET_PDEATHSIG SIGKILL).
# So pool processes ignore SIGTERM. (What this gives up: billiard's SIGTERM-based pool shrinking and
# ``revoke(terminate=True)``, which Tideflow uses neither of; cancel and timeouts have their own mechanism.)
_pool_process = False


@signals.worker_process_init.connect
def _pool_process_ignores_sigterm(**_kwargs: Any) -> None:
    # SIG_IGN, because billiard's reset_signals runs right after this hook and replaces any *handler* but
    # keeps an ignored signal (billiard/common.py, _should_override_term_signal).
    global _pool_process
    _pool_process = True
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _ignore_signal(_signum: int, _frame: object) -> None:
    """A do-nothing handler: unlike SIG_IGN it is not inherited through exec by the processes a body starts."""


@signals.task_prerun.connect
def _sigterm_handler_for_bodies(**_kwargs: Any) -> None:
    # before the first body runs: the shell commands a body starts must get the default SIGTERM behaviour
    if _pool_process and threading.current_thread() is threading.main_thread() \
            and signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        signal.signal(signal.SIGTERM, _ignore_signal)


@signals.beat_init.connect
def _log_beat_exit(**_kwargs: Any) -> None:
    """Celery beat logs nothing when SIGTERM stops it (it saves its schedule and raises SystemExit,
    celery/apps/beat.py ``install_sync_handler``); say so, for operators and tests/acceptance/test_procfile.py.
    An exit handler only runs on a normal interpreter exit: a killed beat logs nothing."""
    atexit.register(logging.getLogger("celery.beat").info, "beat: schedule saved, exiting")


@signals.beat_init.connect
def _beat_stops_between_ticks(sender: Any = None, **_kwargs: Any) -> None:
    graceful_beat_stop(sender)


def graceful_beat_stop(service: Any) -> None:
    """SIGTERM/SIGINT stop beat between two ticks, never inside one. Celery's own handler
    (celery/apps/beat.py ``install_sync_handler``) closes the schedule and raises SystemExit wherever beat is:
    in the middle of publishing a due task it cuts the publish (a Redis read) and the tick then touches the
    closed schedule (``ValueError: invalid operation on closed shelf``, a traceback at every such stop). Here a
    signal during a tick is kept until the tick returns; between ticks (beat sleeping) it stops at once. Either way
    ``Service.start`` catches the SystemExit and saves the schedule (celery/beat.py)."""
    scheduler = service.scheduler
    tick = scheduler.tick
    state = {"ticking": False, "stop": False}

    def tick_then_maybe_stop(*args: Any, **kwargs: Any) -> Any:
        state["ticking"] = True
        try:
            return tick(*args, **kwargs)
        finally:
            state["ticking"] = False
            if state["stop"]:
                raise SystemExit()

    def stop(_signum: int, _frame: object) -> None:
        if state["ticking"]:
            state["stop"] = True
        else:
            raise SystemExit()

    scheduler.tick = tick_then_maybe_stop
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


# -- a database nobody ran `tideflow db upgrade` on ----------------------------------------------------------
_schema_log = logging.getLogger("tideflow.schema")


@signals.worker_ready.connect
@signals.beat_init.connect
def _check_schema(**_kwargs: Any) -> None:
    """At start, one clear log line when the database's schema is missing or behind ("... run `tideflow db
    upgrade`"): the tasks would fail with raw SQL errors until it is done. A connection of its own, closed before
    any pool process forks."""
    from app.db.engine import Database
    from app.db.migrate import schema_problem

    settings = app.conf.tideflow_settings
    db = Database(settings.database_url, pool_size=1, settings=settings)
    try:
        problem = schema_problem(db.engine)
    except Exception as exc:  # noqa: BLE001 - a database that is down is reported by the tasks (they retry)
        _schema_log.warning("tideflow: cannot check the database schema now (%s)", type(exc).__name__)
        return
    finally:
        db.dispose()
    if problem:
        _schema_log.error("tideflow: %s (every task fails until then)", problem)


@signals.task_failure.connect
@signals.task_retry.connect
def _explain_database_error(exception: BaseException | None = None, reason: BaseException | None = None,
                            **_kwargs: Any) -> None:
    """A task that failed (or is retried: a warning) on a raw SQL error with a known cause logs that cause in one
    line (:meth:`app.db.engine.Database.explain`)."""
    exc = exception if exception is not None else reason
    if isinstance(exc, DB_UNAVAILABLE + (ProgrammingError,)):
        said = runtime().db.explain(exc)
        if said:
            _schema_log.log(logging.ERROR if exception is not None else logging.WARNING, "tideflow: %s", said)


#: this worker's Celery node name (``-n worker@%h``, expanded), set when the worker starts, before it forks its pool
#: processes: part of their identity in the history (:func:`app.runtime.worker_identity`)
_node: str | None = None


@signals.celeryd_init.connect
def _remember_node_name(sender: str | None = None, **_kwargs: Any) -> None:
    global _node
    _node = sender


def runtime() -> Runtime:
    """The per-process :class:`~app.runtime.Runtime` (created lazily, again after a fork)."""
    from app.runtime import Runtime

    cached = getattr(app, "_tideflow_runtime", None)
    if cached is None or cached[0] != os.getpid():
        rt = Runtime.create(app.conf.tideflow_settings, CeleryDispatcher(app), node=_node)
        app._tideflow_runtime = (os.getpid(), rt)  # type: ignore[attr-defined]
        return rt
    return cached[1]
