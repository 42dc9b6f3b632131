"""The reconciler: the beat job that makes "nothing is lost" and "nothing is stuck" hold when messages,
workers or masters are lost. One pass (``reconcile_once``; also ``tideflow reconcile``):

1. orphans: submitted tasks not claimed by their ``next_publish_at`` are published again, with
   exponential back-off per attempt (``app.scheduling.republish_delay``) so a queue backlog does not
   multiply messages; a pool with a free slot gets its next waiting tasks re-published
   (``app.services.limits.fill_free_slots``);
2. expired leases: a running task whose lease lapsed is a lost attempt (worker died, or was partitioned
   away): retried on its lost-attempt budget, or failed (``app.services.attempts.fail``). The old attempt
   can no longer finish (its token is fenced);
3. due timers: a code run's timer or signal timeout whose time came is fired (``app.code.runs.fire_due``), within
   one reconcile interval of its due time, also when every process was down over it;
4. unhandled completions: runs holding a finished task (or finished child run) the master has not acted on
   within ``advance_timeout`` are advanced here, even while other branches run.

Rows are locked with ``FOR UPDATE SKIP LOCKED`` (PostgreSQL) and every change is a guarded transition, so
two reconcilers (or a reconciler and a master) can run at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from app.clock import after, utcnow
from app.code.runs import fire_due
from app.db import repository as repo
from app.dispatch import publish_after_commit
from app.runtime import Runtime
from app.services import attempts, limits
from app.services.master import advance_run
from app.states import AttemptOutcome, TaskState

log = logging.getLogger(__name__)
ACTOR = "reconciler"


@dataclass
class Report:
    republished: int = 0
    lost_attempts: int = 0
    fired_timers: int = 0
    advanced_runs: int = 0

    def __str__(self) -> str:
        return (f"republished {self.republished} orphaned task(s), recovered {self.lost_attempts} lost attempt(s), "
                f"fired {self.fired_timers} timer(s), advanced {self.advanced_runs} run(s)")


def reconcile_once(rt: Runtime) -> Report:
    report = Report()
    report.republished = _republish_orphans(rt)
    report.lost_attempts = _expire_leases(rt)
    report.fired_timers = fire_due(rt, ACTOR)
    report.advanced_runs = _advance_unhandled(rt) + limits.promote_all(rt, actor=ACTOR)
    if report.republished or report.lost_attempts or report.fired_timers or report.advanced_runs:
        log.info("reconcile: %s", report)
    else:
        log.debug("reconcile: nothing to do")
    return report


def _republish_orphans(rt: Runtime) -> int:
    now = utcnow()
    with rt.db.transaction() as s:
        messages = [m for task in repo.due_orphans(s, now, rt.settings.reconcile_batch_size)
                    if (m := attempts.republish(s, rt, task, actor=ACTOR, now=now)) is not None]
        publish_after_commit(s, rt.dispatcher, execute=messages)
        # pools with a free slot and a task waiting for it unpublished for orphan_timeout (app/services/limits.py)
        return len(messages) + limits.fill_free_slots(s, rt, now)


def _expire_leases(rt: Runtime) -> int:
    """Running attempts whose lease lapsed are lost: retried on the task's lost-attempt budget, or failed."""
    now = utcnow()
    count = 0
    with rt.db.transaction() as s:
        advance: dict[int, str] = {}  # run id -> its workflow's name (the advance message's label)
        messages = []
        for task in repo.expired_leases(s, now, rt.settings.reconcile_batch_size):
            reason = f"lease expired at {task.lease_expires_at:%H:%M:%S} (worker {task.worker} stopped renewing it)"
            to, message = attempts.fail(s, rt, task, reason, outcome=AttemptOutcome.LOST, actor=ACTOR,
                                        fence=task.lease_token, now=now)
            if to is None:
                continue
            count += 1
            if message is not None:
                messages.append(message)
            if to == TaskState.FAILED:
                advance[task.run_id] = task.workflow_name or ""
        publish_after_commit(s, rt.dispatcher, execute=messages, advance=sorted(advance), advance_labels=advance)
    return count


def _advance_unhandled(rt: Runtime) -> int:
    older_than = after(-rt.settings.advance_timeout_seconds)
    with rt.db.read() as s:
        run_ids = repo.runs_with_unhandled_tasks(s, older_than, rt.settings.reconcile_batch_size)
    done = 0
    for run_id in run_ids:
        try:
            done += advance_run(rt, run_id, actor=ACTOR, skip_locked=True)
        except Exception:  # noqa: BLE001 - one bad run must not block the others
            log.exception("reconcile: advancing run %s failed", run_id)
    return done
