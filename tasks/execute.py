"""``tideflow.execute``: load ids, call the worker service, map the outcome to Celery."""

from __future__ import annotations

import logging
import time

from billiard.process import current_process  # type: ignore[import-untyped]
from celery import Task

from app.scheduling import missing_row_backoff
from app.services import worker
from tasks.celery_app import DB_UNAVAILABLE, app, runtime

log = logging.getLogger(__name__)

#: the longest error text an AttemptFailed carries (it goes into the task-failed event Flower shows)
ERROR_EXCERPT = 500


class AttemptFailed(Exception):
    """Raised by ``tideflow.execute`` once the attempt's failure is committed (and its retry, if any, published),
    so Celery and Flower report the message as FAILURE, as a plain Celery task whose body raised would be.
    Listed in the task's ``throws`` (Celery: "expected errors": the state is FAILURE, the worker logs one INFO
    line "raised expected" and no traceback: celery/app/trace.py ``get_log_policy``). It changes nothing else:
    it is not in ``autoretry_for`` (no Celery retry) and the message is acknowledged, not requeued
    (``task_acks_on_failure_or_timeout``, app/broker.py; celery/worker/request.py ``on_failure``); Tideflow's
    own retry is the new attempt the worker service already recorded."""


@app.task(name="tideflow.execute", bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None,
          autoretry_for=DB_UNAVAILABLE, retry_backoff=True, retry_backoff_max=30, retry_jitter=True,
          throws=(AttemptFailed,))
def execute(self: Task, task_run_id: int, attempt: int, published_at: float | None = None) -> str:
    rt = runtime()
    in_pool_child = current_process().name != "MainProcess"
    result = worker.execute(rt, int(task_run_id), int(attempt), hard_kill=in_pool_child)
    if result.outcome == worker.Outcome.MISSING_ROW:
        # Never drop a message for a missing row before the deadline: the row may be in a slow transaction.
        age = time.time() - (published_at or time.time())
        if age < rt.settings.missing_row_deadline_seconds:
            countdown = missing_row_backoff(self.request.retries, rt.settings)
            log.warning("task run %s not visible yet (%.1fs after publish): retrying in %.1fs",
                        task_run_id, age, countdown)
            worker.count_missing_row_retry(rt)
            raise self.retry(countdown=countdown, args=[task_run_id, attempt, published_at])
        log.error("task run %s still not visible %.0fs after publish: giving up on this message "
                  "(its transaction must have rolled back)", task_run_id, age)
    elif result.outcome == worker.Outcome.TOO_EARLY:
        raise self.retry(countdown=result.delay, args=[task_run_id, attempt, published_at])
    elif result.outcome in (worker.Outcome.IGNORED, worker.Outcome.WAITING):
        log.info("%s", result.detail)
    elif result.outcome in (worker.Outcome.FAILED, worker.Outcome.RETRYING):
        # the message's own attempt (the first of an eager chain: those after it had no message) failed; its
        # outcome is committed, so raising now only sets the Celery state (see AttemptFailed)
        retrying = " (a new attempt is scheduled)" if result.outcome == worker.Outcome.RETRYING else ""
        raise AttemptFailed(f"task run {task_run_id} attempt {attempt} failed{retrying}: "
                            f"{result.detail[:ERROR_EXCERPT]}")
    return str(result.outcome)
