"""Pure timing rules (no I/O), so the bounds in README.md can be read off and unit-tested here; and the cron
schedules' pure functions (which fire times are due, and which of them run or are skipped, and why)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.config import Settings


def republish_delay(publish_count: int, settings: Settings) -> float:
    """Seconds after the ``publish_count``-th publish of one attempt before the reconciler publishes it
    again if still unclaimed: orphan timeout, doubling per re-publish, capped. A long queue backlog thus
    costs at most ~log2(backlog / orphan_timeout) + backlog / cap extra messages per task."""
    exp = max(publish_count - 1, 0)
    return float(min(settings.orphan_timeout_seconds * (2 ** min(exp, 30)), settings.orphan_max_backoff_seconds))


def max_publishes(backlog_seconds: float, settings: Settings) -> int:
    """Upper bound on publishes of one unclaimed attempt while it waits ``backlog_seconds`` in a queue
    (one reconciler interval of slack per re-publish)."""
    n, t = 1, 0.0
    while True:
        t += republish_delay(n, settings) + settings.reconcile_interval_seconds
        if t > backlog_seconds:
            return n + 1  # the one that may be in flight at the end of the window
        n += 1


def missing_row_backoff(retries: int, settings: Settings) -> float:
    """Countdown before re-checking a message whose task row was not visible (doubling, capped at 30 s)."""
    return float(min(settings.missing_row_initial_backoff_seconds * (2 ** min(retries, 20)), 30.0))


def celery_priority(priority: int, *, amqp: bool = False) -> int:
    """Tideflow priority 0..9 (9 = most urgent) -> the message's Celery priority: on Redis 0 is taken first, on
    RabbitMQ (``amqp``) the highest (the queues' ``x-max-priority`` is 9, :data:`app.broker.AMQP_MAX_PRIORITY`).
    Celery's "Message Priorities": https://docs.celeryq.dev/en/stable/userguide/routing.html#routing-options-rabbitmq-priorities"""
    clamped = max(0, min(9, priority))
    return clamped if amqp else 9 - clamped


# -- cron schedules (pure: no I/O, no clock; the service app/services/scheduler.py applies them) -------------------
# The cron maths is cronsim's (https://github.com/cuu508/cronsim: Debian cron's semantics, DST included, with
# zoneinfo: a local time skipped by a spring-forward fires at the first valid time after it, a time repeated by a
# fall-back fires once); the human text is cron-descriptor's. Nothing here parses cron itself.



Catchup = Literal["none", "latest", "all"]
Overlap = Literal["allow", "skip", "buffer_one", "cancel_running"]

#: a fire time processed this late is still "on time" under ``catchup: none`` (a scheduler pass is late by up to
#: one beat interval plus the time to publish and run it)
ON_TIME_GRACE_SECONDS = 60.0


class ScheduleSpec(BaseModel):
    """One schedule of a workflow, as declared (DAG YAML ``schedule:``, ``@tideflow.workflow(schedule=...)``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cron: str = Field(min_length=1, max_length=200)
    timezone: str = "UTC"
    params: dict[str, Any] = Field(default_factory=dict)
    catchup: Catchup = "latest"
    catchup_window: float = Field(86400.0, gt=0, le=366 * 86400)
    overlap: Overlap = "allow"
    jitter: float = Field(0.0, ge=0, le=86400)
    start: datetime | None = None
    end: datetime | None = None
    name: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_\-.:]{0,99}$")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        zone(v)
        return v

    @field_validator("start", "end")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("needs a UTC offset (e.g. 2026-01-01T00:00:00Z)")
        return v

    @model_validator(mode="after")
    def _cron(self) -> ScheduleSpec:
        try:
            CronSim(self.cron, datetime(2026, 1, 1, tzinfo=zone(self.timezone)))
        except CronSimError as exc:
            raise ValueError(f"cron {self.cron!r}: {exc}") from None
        if self.start is not None and self.end is not None and self.end < self.start:
            raise ValueError("end is before start")
        return self

    def stored(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {name!r} (an IANA name such as Europe/Berlin)") from None


def parse_schedules(raw: Any, workflow: str) -> list[ScheduleSpec]:
    """A ``schedule:`` value (one mapping, a list of them, or None) as specs, each with its name (default: the
    workflow's; with several, each needs its own). A problem: ``ValueError`` with one line saying what."""
    if raw is None:
        return []
    items = raw if isinstance(raw, list) else [raw]
    specs: list[ScheduleSpec] = []
    for i, item in enumerate(items):
        where = "schedule" if not isinstance(raw, list) else f"schedule[{i}]"
        if isinstance(item, ScheduleSpec):
            spec = item
        elif isinstance(item, dict):
            from pydantic import ValidationError

            try:
                spec = ScheduleSpec.model_validate(item)
            except ValidationError as exc:
                err = exc.errors()[0]
                loc = ".".join(str(p) for p in err["loc"])
                msg = str(err["msg"]).removeprefix("Value error, ")
                raise ValueError(f"{where}{'.' + loc if loc else ''}: {msg}") from None
        else:
            raise ValueError(f"{where}: must be a mapping with at least 'cron'")
        specs.append(spec if spec.name else spec.model_copy(update={"name": workflow}))
    names = [s.name or workflow for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"schedule: name '{dupes[0]}' is used twice (give each schedule its own name)")
    return specs


def describe(cron: str) -> str:
    """The cron expression in words (cron-descriptor), e.g. "At 02:00 AM"."""
    from cron_descriptor import get_description

    try:
        return str(get_description(cron))
    except Exception:  # noqa: BLE001 - the text is a courtesy: the expression itself was validated by cronsim
        return cron


def fire_times(cron: str, timezone: str, after: datetime, *, reverse: bool = False) -> Iterator[datetime]:
    """The fire times strictly after (``reverse``: before) ``after``, in UTC, in order."""
    local = after.astimezone(zone(timezone))
    for t in CronSim(cron, local, reverse=reverse):
        yield t.astimezone(UTC)


def jitter_offset(name: str, fire_time: datetime, jitter: float) -> float:
    """Seconds a fire is delayed by ``jitter``: spread over [0, jitter], the same in every process (a hash of the
    schedule and the fire time, never ``random``), so several schedulers agree on when it is due."""
    if jitter <= 0:
        return 0.0
    h = hashlib.sha256(f"{name}|{fire_time.isoformat()}".encode()).digest()
    return jitter * int.from_bytes(h[:8], "big") / 2**64


@dataclass
class FirePlan:
    """What one scheduler pass does for one schedule: fire these times, record these as skipped (with why), and
    move the schedule's cursor (the last fire time dealt with) to ``cursor``."""

    fire: list[datetime] = field(default_factory=list)
    skip: list[tuple[datetime, str]] = field(default_factory=list)
    cursor: datetime | None = None


def plan_fires(
    spec: ScheduleSpec, name: str, cursor: datetime, now: datetime, *, limit: int = 500,
    grace: float = ON_TIME_GRACE_SECONDS,
) -> FirePlan:
    """The fire times due after ``cursor`` (exclusive) up to ``now``, sorted into fired and skipped by the
    schedule's ``catchup`` and ``catchup_window``, ``start`` and ``end``, and ``jitter`` (a time is due at
    ``time + jitter_offset``). At most ``limit`` times per pass (the cursor stops at the last one; the next pass
    goes on). Overlap is not decided here: it depends on the runs in the database."""
    plan = FirePlan(cursor=cursor)
    begin = cursor
    if spec.start is not None and spec.start - timedelta(microseconds=1) > begin:
        begin = spec.start - timedelta(microseconds=1)
    due: list[datetime] = []
    complete = True
    for t in fire_times(spec.cron, spec.timezone, begin):
        if spec.end is not None and t > spec.end:
            break
        if t + timedelta(seconds=jitter_offset(name, t, spec.jitter)) > now:
            break
        if len(due) >= limit:
            complete = False
            break
        due.append(t)
    if not due:
        return plan
    plan.cursor = due[-1]
    window = timedelta(seconds=spec.catchup_window)
    late = timedelta(seconds=grace)
    newest = due[-1] if complete else None
    for t in due:
        behind = now - t
        if behind > window and behind > late:
            plan.skip.append((t, f"missed by {_ago(behind)}, outside catchup_window ({_ago(window)})"))
        elif behind <= late or spec.catchup == "all":
            plan.fire.append(t)
        elif spec.catchup == "latest":
            if t == newest:
                plan.fire.append(t)
            else:
                plan.skip.append((t, f"missed by {_ago(behind)}; catchup: latest runs only the most recent"))
        else:
            plan.skip.append((t, f"missed by {_ago(behind)}; catchup: none"))
    return plan


def _ago(d: timedelta) -> str:
    s = int(d.total_seconds())
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def backfill_times(spec: ScheduleSpec, start: datetime, end: datetime, *, limit: int = 100_000) -> list[datetime]:
    """Every fire time in [start, end] (both included), oldest first: a backfill's runs (``start``/``end`` of the
    schedule itself do not bound a backfill: the range is the operator's)."""
    out: list[datetime] = []
    for t in fire_times(spec.cron, spec.timezone, start - timedelta(microseconds=1)):
        if t > end:
            break
        out.append(t)
        if len(out) > limit:
            raise ValueError(f"the range holds more than {limit} fire times")
    return out
