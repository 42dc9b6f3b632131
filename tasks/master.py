"""Master tasks, routed to the master queue: ``tideflow.advance`` and the beat job ``tideflow.reconcile``."""

from __future__ import annotations

from app.services.master import advance_run
from app.services.reconciler import reconcile_once
from tasks.celery_app import DB_UNAVAILABLE, app, runtime


@app.task(name="tideflow.advance", acks_late=True, reject_on_worker_lost=True, max_retries=None,
          autoretry_for=DB_UNAVAILABLE, retry_backoff=True, retry_backoff_max=30, retry_jitter=True)
def advance(run_id: int) -> bool:
    return advance_run(runtime(), int(run_id), actor="master")


# send_events=False: no task events for the beat job even while Flower has them on (celery/worker/request.py
# ``send_event`` and celery/worker/strategy.py check ``task.send_events``), so it does not fill Flower's task
# list every reconcile interval; what a pass did is in the master's log (app/services/reconciler.py).
@app.task(name="tideflow.reconcile", acks_late=True, reject_on_worker_lost=True, send_events=False)
def reconcile() -> str:
    return str(reconcile_once(runtime()))


@app.task(name="tideflow.schedule", acks_late=True, reject_on_worker_lost=True, send_events=False)
def schedule() -> str:
    """The cron scheduler pass (app/services/scheduler.py)."""
    from app.services.scheduler import schedule_once

    return str(schedule_once(runtime()))
