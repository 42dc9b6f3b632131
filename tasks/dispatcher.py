"""The real :class:`app.dispatch.Dispatcher`: publishes by task name with ``send_task`` (no imports of
task modules), each execute message on its task's queue with its priority and a Flower-readable name."""

from __future__ import annotations

import time
from collections.abc import Sequence

from celery import Celery

from app.dispatch import ExecuteMessage
from app.faults import crash_point
from app.scheduling import celery_priority


class CeleryDispatcher:
    def __init__(self, celery: Celery):
        self.celery = celery
        self._crash = celery.conf.tideflow_settings.fault_crash_before_publish

    def execute(self, messages: Sequence[ExecuteMessage]) -> None:
        if not messages:
            return
        crash_point(self._crash, "after commit, before publishing execute messages")
        with self.celery.producer_or_acquire() as producer:
            for m in messages:
                self.celery.send_task(
                    "tideflow.execute", args=[m.task_run_id, m.attempt, time.time()], queue=m.queue,
                    priority=celery_priority(m.priority), countdown=m.countdown or None,
                    shadow=f"tideflow.execute[{m.label}]" if m.label else None, producer=producer,
                )

    def advance(self, run_ids: Sequence[int]) -> None:
        if not run_ids:
            return
        crash_point(self._crash, "after commit, before publishing advance messages")
        settings = self.celery.conf.tideflow_settings
        with self.celery.producer_or_acquire() as producer:
            for run_id in run_ids:
                self.celery.send_task("tideflow.advance", args=[run_id], queue=settings.master_queue,
                                      priority=0, producer=producer)

    def ping(self, timeout: float = 2.0) -> bool:
        """Can we reach the broker right now? (For health checks; never raises.)"""
        try:
            with self.celery.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=timeout)
            return True
        except Exception:  # noqa: BLE001 - any failure to connect means "down"
            return False
