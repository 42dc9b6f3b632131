"""The broker side of Tideflow: the Celery app's configuration (:func:`create_app`) and the real
:class:`app.dispatch.Dispatcher` (:class:`CeleryDispatcher`). The worker processes' Celery app instance and the
thin task modules live in ``tasks/`` (``celery -A tasks worker|beat|flower``).

Delivery settings and why (see shared/reference/celery-sqlalchemy-facts.md):
* ``task_acks_late`` + ``worker_prefetch_multiplier=1``: a message is acknowledged after the task body
  returns, and each pool process reserves one message at a time;
* ``task_reject_on_worker_lost``: a message whose pool process died (SIGKILL, OOM) is requeued instead of
  acknowledged. It cannot loop: the redelivered message's claim fails, so it is acknowledged and ignored;
* JSON only; priorities with ``queue_order_strategy='priority'`` (Redis: 0 is taken first); on RabbitMQ every queue
  is declared with ``x-max-priority`` (``task_queue_max_priority``, the queues a worker creates for a task's own
  ``queue`` too; 9 is taken first). RabbitMQ refuses to redeclare an existing queue with other arguments
  (PRECONDITION_FAILED): README "Deploying" says what an upgrade does about queues declared without it;
* Redis ``visibility_timeout`` stays long: recovery does not rely on it but on leases and the reconciler,
  so a redelivery after it is one more harmless duplicate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from celery import Celery
from kombu import Connection, Queue
from kombu.exceptions import ChannelError, KombuError
from kombu.transport.virtual import Channel as VirtualChannel

from app.config import Settings, load_settings
from app.dispatch import ExecuteMessage
from app.faults import crash_point
from app.scheduling import celery_priority

log = logging.getLogger(__name__)

#: connect / socket timeout (seconds) of the health check's and the queue depths' broker connections
BROKER_TIMEOUT = 2.0
#: RabbitMQ: the queues' ``x-max-priority`` (Tideflow priorities 0..9 are the message priorities as they are)
AMQP_MAX_PRIORITY = 9


def is_amqp(broker_url: str) -> bool:
    """Is the broker RabbitMQ (an AMQP URL), where priorities need queue arguments and count upwards?"""
    return broker_url.split("://", 1)[0].split("+")[0] in {"amqp", "amqps", "pyamqp", "librabbitmq"}


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
    """A Celery app configured for Tideflow: the worker processes' one (``tasks.celery_app.app``), or a
    publisher's (:meth:`app.client.Tideflow.from_env`). Task modules are named, not imported."""
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
        # a task that raised (tideflow.execute's AttemptFailed: the attempt's failure is already committed) is
        # acknowledged, never redelivered (Celery's default, written out because tasks/execute.py relies on it)
        task_acks_on_failure_or_timeout=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.default_queue,
        task_default_priority=4,
        task_queues=[Queue(settings.default_queue), Queue(settings.master_queue)],
        task_routes={
            "tideflow.advance": {"queue": settings.master_queue},
            "tideflow.reconcile": {"queue": settings.master_queue},
            "tideflow.schedule": {"queue": settings.master_queue},
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
            },
            # cron schedules (app/services/scheduler.py): safe with several beats (one run per fire time)
            "tideflow-schedule": {
                "task": "tideflow.schedule",
                "schedule": timedelta(seconds=settings.schedule_interval_seconds),
                "options": {"expires": max(settings.schedule_interval_seconds * 2, 1.0)},
            },
        },
        timezone="UTC",
        enable_utc=True,
    )
    if is_amqp(settings.broker_url):
        # every queue (those above, and any a task's ``queue`` creates) is declared with x-max-priority; the
        # default priority stays in the middle, as 4 (of 0 first .. 9) is on Redis
        celery.conf.task_queue_max_priority = AMQP_MAX_PRIORITY
        celery.conf.task_default_priority = 5
    if settings.worker_concurrency:
        celery.conf.worker_concurrency = settings.worker_concurrency
    celery.conf.tideflow_settings = settings
    return celery


class CeleryDispatcher:
    """Publishes by task name with ``send_task`` (no imports of task modules), each execute message on its
    task's queue with its priority and a Flower-readable name."""

    def __init__(self, celery: Celery):
        self.celery = celery
        self.settings: Settings = celery.conf.tideflow_settings
        self._crash = self.settings.fault_crash_before_publish
        self._amqp = is_amqp(self.settings.broker_url)
        #: the last publish that failed because the broker could not be reached (one line), else None. Such a
        #: failure is logged in one line and not raised: the commit happened, and the reconciler publishes the
        #: unclaimed tasks again (``TIDEFLOW_ORPHAN_TIMEOUT_SECONDS``) once the broker is back.
        self.last_publish_error: str | None = None
        with self.celery.connection_for_write() as conn:  # not connected: only its transport's error classes
            self._broker_errors: tuple[type[BaseException], ...] = (
                KombuError, OSError, *conn.connection_errors, *conn.channel_errors)

    @contextmanager
    def _publishing(self, what: str) -> Iterator[None]:
        try:
            yield
        except self._broker_errors as exc:
            self.last_publish_error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            log.warning("broker unreachable, %s not published (the reconciler publishes it again): %s",
                        what, self.last_publish_error)

    def execute(self, messages: Sequence[ExecuteMessage]) -> None:
        if not messages:
            return
        crash_point(self._crash, "after commit, before publishing execute messages")
        with self._publishing(f"{len(messages)} execute message(s)"), self.celery.producer_or_acquire() as producer:
            for m in messages:
                self.celery.send_task(
                    "tideflow.execute", args=[m.task_run_id, m.attempt, time.time()], queue=m.queue,
                    priority=celery_priority(m.priority, amqp=self._amqp), countdown=m.countdown or None,
                    shadow=f"tideflow.execute[{m.label}]" if m.label else None, producer=producer,
                )

    def advance(self, run_ids: Sequence[int], labels: Mapping[int, str] | None = None) -> None:
        if not run_ids:
            return
        crash_point(self._crash, "after commit, before publishing advance messages")
        labels = labels or {}
        with self._publishing(f"{len(run_ids)} advance message(s)"), self.celery.producer_or_acquire() as producer:
            for run_id in run_ids:
                # the name Flower and the worker's log show: the run's workflow and id (the args stay [run_id])
                name = f"{labels[run_id]} #{run_id}" if labels.get(run_id) else f"run #{run_id}"
                self.celery.send_task("tideflow.advance", args=[run_id], queue=self.settings.master_queue,
                                      priority=celery_priority(9, amqp=self._amqp),
                                      shadow=f"tideflow.advance[{name}]", producer=producer)

    def ping(self, timeout: float = BROKER_TIMEOUT) -> bool:
        """Can we reach the broker right now? (For health checks; never raises.)"""
        try:
            with self.celery.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=timeout)
            return True
        except Exception:  # noqa: BLE001 - any failure to connect means "down"
            return False

    def queue_depths(self, queues: Collection[str], timeout: float = BROKER_TIMEOUT) -> dict[str, int | None]:
        """Messages waiting in each queue (Redis: the lengths of its priority sub-queues, summed; messages a
        worker has reserved are not waiting); every depth None if the broker cannot be read. Never raises."""
        try:
            return dict(self._read_depths(queues, timeout))
        except Exception as exc:  # noqa: BLE001 - whatever the broker or its client raises, /metrics answers
            log.warning("broker unavailable (%s: %s); queue depths unknown", type(exc).__name__, exc)
            return dict.fromkeys(queues)

    def _read_depths(self, queues: Collection[str], timeout: float) -> dict[str, int]:
        # a connection of its own, with the app's transport options (same key prefix and priorities) and short
        # timeouts: a scrape must not hang on an unreachable broker
        options = {**transport_options(self.settings), "socket_connect_timeout": timeout, "socket_timeout": timeout}
        with Connection(self.settings.broker_url, transport_options=options, connect_timeout=timeout) as conn:
            conn.ensure_connection(max_retries=0)
            channel = conn.channel()
            # AMQP: a passive declare, so nothing is created. Redis (a virtual transport): declaring only touches
            # the channel's memory, and a passive one would ask EXISTS, which kombu's global_keyprefix client does
            # not prefix (with a key prefix, every queue would look missing).
            passive = not isinstance(channel, VirtualChannel)
            depths: dict[str, int] = {}
            for queue in sorted(queues):
                try:
                    depths[queue] = int(channel.queue_declare(queue=queue, passive=passive).message_count)
                except ChannelError:  # AMQP: no such queue, so nothing waiting
                    depths[queue] = 0
                    if not getattr(channel, "is_open", True):  # AMQP closes the channel on a failed passive declare
                        channel = conn.channel()
            return depths
