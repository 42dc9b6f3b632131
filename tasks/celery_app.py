"""The Celery app (the only process-global object). ``celery -A tasks worker|beat|flower`` finds it.

Delivery settings and why (see shared/reference/celery-sqlalchemy-facts.md):
* ``task_acks_late`` + ``worker_prefetch_multiplier=1``: a message is acknowledged after the task body
  returns, and each pool process reserves one message at a time;
* ``task_reject_on_worker_lost``: a message whose pool process died (SIGKILL, OOM) is requeued instead of
  acknowledged. It cannot loop: the redelivered message's claim fails, so it is acknowledged and ignored;
* JSON only; priorities with ``queue_order_strategy='priority'`` (Redis: 0 is taken first);
* Redis ``visibility_timeout`` stays long: recovery does not rely on it but on leases and the reconciler,
  so a redelivery after it is one more harmless duplicate.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from datetime import timedelta
from typing import Any

from celery import Celery, signals
from kombu import Queue
from sqlalchemy.exc import InterfaceError, OperationalError

from app.config import Settings, load_settings

#: a database outage delays a message (Celery retries it with back-off), it never drops it
DB_UNAVAILABLE = (OperationalError, InterfaceError)


def transport_options(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "priority_steps": list(range(10)),
        "sep": ":",
        "queue_order_strategy": "priority",
        "visibility_timeout": 3600,
    }
    if settings.broker_key_prefix:
        options["global_keyprefix"] = settings.broker_key_prefix
    return options


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or load_settings()
    celery = Celery("tideflow", include=["tasks.execute", "tasks.master"])
    celery.conf.update(
        broker_url=settings.broker_url,
        broker_transport_options=transport_options(settings),
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.default_queue,
        task_default_priority=4,
        task_queues=[Queue(settings.default_queue), Queue(settings.master_queue)],
        task_routes={
            "tideflow.advance": {"queue": settings.master_queue},
            "tideflow.reconcile": {"queue": settings.master_queue},
        },
        # Task events cost the worker several extra publishes per task (a third of its CPU in
        # bench/throughput.py); they stay off until Flower asks for them: Flower broadcasts
        # ``enable_events`` to the workers periodically while it runs (its ``--enable_events`` option,
        # default on; mher/flower flower/events.py).
        task_send_sent_event=False,
        worker_send_task_events=False,
        worker_hijack_root_logger=True,
        beat_schedule_filename=settings.beat_schedule_file,
        beat_schedule={
            "tideflow-reconcile": {
                "task": "tideflow.reconcile",
                "schedule": timedelta(seconds=settings.reconcile_interval_seconds),
                "options": {"expires": max(settings.reconcile_interval_seconds * 2, 1.0)},
            }
        },
        timezone="UTC",
        enable_utc=True,
    )
    if settings.worker_concurrency:
        celery.conf.worker_concurrency = settings.worker_concurrency
    celery.conf.tideflow_settings = settings
    return celery


app = create_app()


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
def _log_beat_exit(sender: Any = None, **_kwargs: Any) -> None:
    """Celery beat logs nothing when SIGTERM stops it (it saves its schedule and raises SystemExit,
    celery/apps/beat.py ``install_sync_handler``); say so, for operators and tests/acceptance/test_procfile.py.
    An exit handler only runs on a normal interpreter exit: a killed beat logs nothing."""
    atexit.register(logging.getLogger("celery.beat").info, "beat: schedule saved, exiting")


def runtime() -> Any:
    """The per-process :class:`~app.runtime.Runtime` (created lazily, again after a fork)."""
    from app.runtime import Runtime
    from tasks.dispatcher import CeleryDispatcher

    cached = getattr(app, "_tideflow_runtime", None)
    if cached is None or cached[0] != os.getpid():
        rt = Runtime.create(app.conf.tideflow_settings, CeleryDispatcher(app))
        app._tideflow_runtime = (os.getpid(), rt)  # type: ignore[attr-defined]
        return rt
    return cached[1]
