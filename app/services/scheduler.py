"""The cron scheduler: one pass (``schedule_once``) is the beat job ``tideflow.schedule`` (every
``TIDEFLOW_SCHEDULE_INTERVAL_SECONDS``). The pure rules (which fire times are due, which run and which are skipped
under ``catchup``/``catchup_window``/``start``/``end``/``jitter``) are :func:`app.scheduling.plan_fires`; this module
applies them and ``overlap`` in guarded transactions:

- **one run per fire time**, whatever runs the pass (two beats by mistake, a pass killed mid-fire): the fire time's
  ``schedule_fires`` row (unique (schedule, fire time)) is inserted in the transaction that starts the run, and the
  run's ``key`` is ``schedule:NAME:ISO``; a killed pass rolls back, and the next pass does that fire time again;
- each schedule row is locked ``FOR UPDATE SKIP LOCKED`` while its fire times are dealt with, and its ``cursor``
  (the last fire time dealt with) moves in the same transaction;
- a skipped fire time is a ``schedule_fires`` row with ``outcome = skipped`` and why (``tideflow schedule show``);
- ``overlap: buffer_one`` keeps one fire time ``buffered``, started by a later pass once the running run ends;
- a backfill (:func:`create_backfill`) is a ``backfills`` row and ``pending`` fire rows, submitted oldest first by
  the passes, at most ``parallel`` live at once: it goes on when the CLI that asked for it has exited.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from app.clock import utcnow
from app.db import repository as repo
from app.errors import DefinitionError, InvalidRequest, InvalidState, NotFound, TideflowError
from app.runtime import Runtime
from app.scheduling import ScheduleSpec, backfill_times, fire_times, jitter_offset, plan_fires

log = logging.getLogger(__name__)
ACTOR = "scheduler"


@dataclass
class Report:
    started: int = 0
    skipped: int = 0
    buffered: int = 0

    def __str__(self) -> str:
        return f"started {self.started} run(s), skipped {self.skipped} fire time(s), buffered {self.buffered}"


def spec_of(row: Any) -> ScheduleSpec:
    return ScheduleSpec.model_validate(row.spec)


def next_due(spec: ScheduleSpec, name: str, cursor: datetime) -> datetime | None:
    """When the first fire time after ``cursor`` is due (jitter included); None past the schedule's ``end``."""
    begin = cursor
    if spec.start is not None and spec.start - timedelta(microseconds=1) > begin:
        begin = spec.start - timedelta(microseconds=1)
    t = next(fire_times(spec.cron, spec.timezone, begin), None)
    if t is None or (spec.end is not None and t > spec.end):
        return None
    return t + timedelta(seconds=jitter_offset(name, t, spec.jitter))


def run_key(name: str, fire_time: datetime) -> str:
    return f"schedule:{name}:{fire_time.isoformat()}"


# -- syncing the declared schedules ------------------------------------------------------------------------------


def sync(s: Session, workflow_name: str, specs: list[ScheduleSpec], *, now: datetime | None = None) -> None:
    """Make the ``schedules`` rows of ``workflow_name`` what it declares: new ones start at ``now`` (no fire time
    before it runs), changed ones keep their cursor and paused state, undeclared ones become inactive. A name
    another workflow's schedule holds: :class:`TideflowError` (the caller's transaction stores nothing)."""
    now = now or utcnow()
    declared = {sp.name: sp for sp in specs if sp.name}
    for name, sp in declared.items():
        row = repo.schedule(s, name, lock=True)
        stored = sp.stored()
        if row is None:
            repo.insert_schedule(s, name=name, workflow_name=workflow_name, spec=stored, cursor=now,
                                 next_due_at=next_due(sp, name, now))
        elif row.workflow_name != workflow_name and row.active:
            raise DefinitionError([f"schedule '{name}' belongs to workflow '{row.workflow_name}': give this one "
                                   "another name (schedule: {name: ...})"])
        elif row.spec != stored or not row.active or row.workflow_name != workflow_name:
            cursor = row.cursor if row.active else now
            repo.update_schedule(s, name, spec=stored, active=True, workflow_name=workflow_name, cursor=cursor,
                                 next_due_at=next_due(sp, name, cursor))
    for row in repo.schedules(s, workflow_name=workflow_name):
        if row.name not in declared:
            repo.update_schedule(s, row.name, active=False, next_due_at=None)


def sync_code_schedules(rt: Runtime) -> None:
    """The schedules of the code workflows this process registered (``TIDEFLOW_WORKFLOW_MODULES``), synced once per
    process: by its first scheduler pass (the master that runs beat's ``tideflow.schedule``), or ``tideflow
    schedule list``."""
    if rt.schedules_synced:
        return
    from app.code.registry import workflows

    with rt.db.transaction() as s:
        for wdef in workflows():
            if wdef.schedules or repo.schedules(s, workflow_name=wdef.name):
                try:
                    with s.begin_nested():
                        sync(s, wdef.name, list(wdef.schedules))
                except DefinitionError as exc:  # e.g. a name another workflow's schedule holds: not this one
                    log.error("code workflow %s: its schedules were not synced: %s", wdef.name, exc)
    rt.schedules_synced = True


# -- the pass --------------------------------------------------------------------------------------------------


def schedule_once(rt: Runtime, now: datetime | None = None, *, limit: int = 1000) -> Report:
    report = Report()
    sync_code_schedules(rt)
    now = now or utcnow()
    with rt.db.read() as s:
        names = repo.due_schedule_names(s, now, limit)
    for name in names:
        try:
            _fire_schedule(rt, name, now, report)
        except (OperationalError, InterfaceError):
            raise
        except Exception:  # noqa: BLE001 - one bad schedule must not stop the others
            log.exception("schedule %s: pass failed", name)
    _start_buffered(rt, report)
    _advance_backfills(rt, report)
    if report.started or report.skipped or report.buffered:
        log.info("schedule: %s", report)
    return report


def _fire_schedule(rt: Runtime, name: str, now: datetime, report: Report) -> None:
    with rt.db.transaction() as s:
        row = repo.schedule(s, name, lock=True, skip_locked=True)
        if row is None or row.paused or not row.active or row.next_due_at is None or row.next_due_at > now:
            return  # another pass holds it, or did it already
        spec = spec_of(row)
        plan = plan_fires(spec, name, row.cursor, now, grace=rt.settings.schedule_on_time_seconds)
        for t, why in plan.skip:
            report.skipped += repo.insert_fire(s, schedule_name=name, fire_time=t, outcome="skipped",
                                               reason=why, actor=ACTOR)
        for t in plan.fire:
            _fire_with_overlap(s, rt, row, spec, t, report)
        cursor = plan.cursor or row.cursor
        repo.update_schedule(s, name, cursor=cursor, next_due_at=next_due(spec, name, cursor))


def _fire_with_overlap(s: Session, rt: Runtime, row: Any, spec: ScheduleSpec, t: datetime, report: Report) -> None:
    name = row.name
    live = repo.live_schedule_runs(s, name)
    if live and spec.overlap == "skip":
        report.skipped += repo.insert_fire(s, schedule_name=name, fire_time=t, outcome="skipped", actor=ACTOR,
                                           reason=f"overlap: skip (run {live[0].id} is still {live[0].state})")
        return
    if live and spec.overlap == "buffer_one":
        if repo.fires(s, name, limit=1, outcome="buffered"):
            report.skipped += repo.insert_fire(
                s, schedule_name=name, fire_time=t, outcome="skipped", actor=ACTOR,
                reason=f"overlap: buffer_one (run {live[0].id} is still {live[0].state} and a fire time is "
                       "already buffered)")
        else:
            report.buffered += repo.insert_fire(
                s, schedule_name=name, fire_time=t, outcome="buffered", actor=ACTOR,
                reason=f"overlap: buffer_one (starts when run {live[0].id} ends)")
        return
    if live and spec.overlap == "cancel_running":
        from app.services.control import cancel_locked

        for run in live:
            locked = repo.lock_run(s, run.id)
            if locked is not None and locked.state == run.state:
                cancel_locked(s, rt, locked, actor=f"schedule {name}",
                              reason=f"overlap: cancel_running (fire time {t.isoformat()} starts a new run)")
    if start_fire(s, rt, name, row.workflow_name, spec, t, actor=ACTOR) is not None:
        report.started += 1


def start_fire(
    s: Session, rt: Runtime, name: str, workflow_name: str, spec: ScheduleSpec, t: datetime, *, actor: str,
    backfill_id: int | None = None, fire_id: int | None = None, expect: str | None = None,
) -> int | None:
    """Start the run of fire time ``t``, recording it: a new ``started`` fire row (or, with ``fire_id``, its
    ``expect``-ed buffered/pending row becomes ``started``). None when the fire time was recorded already (the
    unique constraint: another scheduler did it). A run that cannot start (its workflow gone, parameters no longer
    fitting) records the fire time as skipped with the error."""
    from app.services.master import advance_locked, create_run

    reason = f"run of fire time {t.isoformat()}" + (f" (backfill {backfill_id})" if backfill_id else "")
    try:
        with s.begin_nested():
            if fire_id is None:
                if not repo.insert_fire(s, schedule_name=name, fire_time=t, outcome="started", reason=reason,
                                        actor=actor, backfill_id=backfill_id):
                    return None
            elif not repo.update_fire(s, fire_id, expect_outcome=expect or "", outcome="started", reason=reason):
                return None
            run = create_run(s, rt, workflow_name, dict(spec.params), actor=f"schedule {name}",
                             key=run_key(name, t))
            repo.set_run_values(s, run.id, schedule_name=name, schedule_time=t)
            run = replace(run, schedule_name=name, schedule_time=t)
            repo.add_event(s, run_id=run.id, from_state=run.state, to_state=run.state, actor=actor,
                           reason=f"scheduled by '{name}' for {t.isoformat()}"
                                  + (f" (backfill {backfill_id})" if backfill_id else ""))
            repo.set_fire_run(s, name, t, run.id)
            advance_locked(s, rt, run, actor=actor, full=True)
            return run.id
    except (OperationalError, InterfaceError):
        raise
    except IntegrityError:
        return None  # the run key is held: this fire time's run exists
    except Exception as exc:  # noqa: BLE001 - a fire time whose run cannot start is recorded as skipped, with why
        why = f"could not start: {exc}" if isinstance(exc, TideflowError) else f"could not start: " \
              f"{type(exc).__name__}: {exc}"
        if fire_id is None:
            repo.insert_fire(s, schedule_name=name, fire_time=t, outcome="skipped", reason=why, actor=actor,
                             backfill_id=backfill_id)
        else:
            repo.update_fire(s, fire_id, expect_outcome=expect or "", outcome="skipped", reason=why)
        log.warning("schedule %s: fire time %s: %s", name, t.isoformat(), why)
        return None


def _start_buffered(rt: Runtime, report: Report) -> None:
    with rt.db.read() as s:
        waiting = repo.waiting_fires(s, "buffered", 1000)
    for f in waiting:
        with rt.db.transaction() as s:
            row = repo.schedule(s, f.schedule_name, lock=True, skip_locked=True)
            if row is None or repo.live_schedule_runs(s, f.schedule_name):
                continue
            if row.paused or not row.active:
                repo.update_fire(s, f.id, expect_outcome="buffered", outcome="skipped",
                                 reason="schedule paused or removed while buffered")
                continue
            if start_fire(s, rt, row.name, row.workflow_name, spec_of(row), f.fire_time, actor=ACTOR,
                          fire_id=f.id, expect="buffered") is not None:
                report.started += 1


def _advance_backfills(rt: Runtime, report: Report) -> None:
    with rt.db.read() as s:
        ids = repo.running_backfill_ids(s)
    for bid in ids:
        with rt.db.transaction() as s:
            b = repo.backfill(s, bid, lock=True)
            if b is None or b.state != "running":
                continue
            sched = repo.schedule(s, b.schedule_name)
            counts = repo.backfill_counts(s, bid)
            free = b.parallel - counts["live"]
            if counts["pending"] and free > 0 and sched is not None:
                spec = spec_of(sched)
                for f in repo.backfill_pending(s, bid, free):
                    if start_fire(s, rt, sched.name, sched.workflow_name, spec, f.fire_time,
                                  actor=f"backfill {bid}", backfill_id=bid, fire_id=f.id,
                                  expect="pending") is not None:
                        report.started += 1
            elif not counts["pending"] and not counts["live"]:
                repo.set_backfill(s, bid, state="done")


# -- operator commands ---------------------------------------------------------------------------------------------


def _require(s: Session, name: str) -> Any:
    row = repo.schedule(s, name, lock=True)
    if row is None or not row.active:
        raise NotFound(f"schedule '{name}' does not exist (tideflow schedule list)")
    return row


def set_paused(rt: Runtime, name: str, paused: bool, *, actor: str) -> None:
    """Pause (no fire time runs) or resume. On resume the schedule starts from now: the fire times of the pause
    are not caught up (Temporal's pause); use a backfill for them."""
    with rt.db.transaction() as s:
        row = _require(s, name)
        if bool(row.paused) == paused:
            raise InvalidState(f"schedule '{name}' is already {'paused' if paused else 'running (not paused)'}")
        now = utcnow()
        if paused:
            repo.update_schedule(s, name, paused=True, paused_by=actor[:200], paused_at=now)
        else:
            repo.update_schedule(s, name, paused=False, cursor=now, next_due_at=next_due(spec_of(row), name, now))
        log.info("schedule %s %s by %s", name, "paused" if paused else "resumed", actor)


def trigger(rt: Runtime, name: str, *, actor: str) -> int:
    """Start a run of the schedule now (its logical time: now), whatever its overlap policy or paused state."""
    with rt.db.transaction() as s:
        row = _require(s, name)
        t = utcnow().replace(microsecond=0)
        while repo.fire(s, name, t) is not None:
            t += timedelta(seconds=1)
        run_id = start_fire(s, rt, name, row.workflow_name, spec_of(row), t, actor=actor)
        if run_id is None:
            fire = repo.fire(s, name, t)
            raise InvalidState(f"schedule '{name}': {fire.reason if fire is not None else 'could not start'}")
        return run_id


def create_backfill(
    rt: Runtime, name: str, start: datetime, end: datetime, *, parallel: int = 1, dry_run: bool = False,
    actor: str,
) -> dict[str, Any]:
    """One run per fire time of ``name`` in [start, end], oldest first, at most ``parallel`` live at once, driven by
    the scheduler passes (durable). Fire times already recorded (run by the schedule, an earlier backfill, or this
    one) are left alone: the same backfill again creates nothing new."""
    if start.tzinfo is None or end.tzinfo is None:
        raise InvalidRequest("from and to need a UTC offset (e.g. 2026-01-01T00:00:00Z)")
    if end < start:
        raise InvalidRequest("the backfill's end (to) is before its start (from)")
    if not 1 <= parallel <= 1000:
        raise InvalidRequest("parallel must be between 1 and 1000")
    with rt.db.read() if dry_run else rt.db.transaction() as s:
        row = _require(s, name)
        try:
            times = backfill_times(spec_of(row), start, end)
        except (ValueError, OverflowError) as exc:
            raise InvalidRequest(f"from/to: {exc}") from None
        existing = {t for t in times if repo.fire(s, name, t) is not None}
        new = [t for t in times if t not in existing]
        out: dict[str, Any] = {"schedule": name, "fire_times": [t.isoformat() for t in times],
                               "new": [t.isoformat() for t in new], "existing": len(existing),
                               "parallel": parallel, "dry_run": dry_run, "backfill": None, "created": False}
        if dry_run:
            return out
        bid, created = repo.insert_backfill(s, schedule_name=name, start=start, end=end, parallel=parallel,
                                            actor=actor)
        for t in new:
            repo.insert_fire(s, schedule_name=name, fire_time=t, outcome="pending", actor=actor, backfill_id=bid,
                             reason=f"backfill {bid}: waiting for a slot (parallel {parallel})")
        if new and not created:
            repo.set_backfill(s, bid, state="running")
        out.update(backfill=bid, created=created)
        return out
