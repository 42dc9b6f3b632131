"""Prometheus metrics for the web process's ``GET /metrics``::

    metrics = Metrics(runtime)             # one per process (it keeps cursors); its own registry
    body, content_type = metrics.render()  # on each scrape

Everything is read at scrape time from the database (:mod:`app.metrics.queries`) and the broker (through the
runtime's dispatcher, :meth:`app.dispatch.Dispatcher.queue_depths`). The hot path only records, in the claim's
own statements, how long the attempt waited for a worker (``task_attempts.wait_seconds``); the worker counts
missing-row retries in the ``counters`` table.

============================================  =========  ==========================================================
metric                                        type       source
============================================  =========  ==========================================================
``tideflow_runs{state}``                      gauge      runs by state (every :class:`RunState`, 0 if none)
``tideflow_tasks{state}``                     gauge      task runs by state (every :class:`TaskState`)
``tideflow_dispatches_total{kind}``           counter    execute messages published, from the events into
                                                         ``submitted``: ``first`` (dependencies met), ``retry`` (a
                                                         new attempt after a failure or lost lease), ``republish``
                                                         (the reconciler, for an unclaimed attempt)
``tideflow_orphan_republishes_total``         counter    events ``submitted -> submitted``
``tideflow_lease_expiries_total``             counter    events out of ``running`` whose attempt ended ``lost``
``tideflow_missing_row_retries_total``        counter    the ``counters`` table
``tideflow_task_start_latency_seconds``       histogram  per attempt: from ready to run (dependencies met, or its
                                                         retry delay over) to the claim by a worker
``tideflow_runs_by_kind{kind,state}``         gauge      runs by kind (dag, code) and state (every pair, 0 if none)
``tideflow_timers_pending``                   gauge      code-run timers (``ctx.sleep`` steps) not fired yet
``tideflow_timers_overdue_seconds``           gauge      how far past its due time the earliest of them is (0 if
                                                         none is due yet)
``tideflow_signals_received_total``           counter    rows of ``signals`` (stored on receipt, never deleted)
``tideflow_signals_delivered_total``          counter    those delivered to a ``wait_signal`` (``task_run_id`` set)
``tideflow_workflow_step_latency_seconds``    histogram  ``{kind="timer"}``: per fired timer, from its due time to
                                                         its firing (``finished_at - due_at`` of the step);
                                                         ``{kind="advance"}``: per replay of a code run that made
                                                         a new durable call, from the latest end of an earlier
                                                         step before it (what it acted on) to the call's step row
                                                         (``created_at``; a resumed blocked run's includes the
                                                         time it was blocked)
``tideflow_queue_depth{queue}``               gauge      messages waiting in the master, the default and every
                                                         queue named by a registered workflow's task
``tideflow_pool_slots{pool}``                 gauge      limits: each pool's slots (``tideflow pool set``)
``tideflow_pool_slots_in_use{pool}``          gauge      its tasks running now (each holds a slot)
``tideflow_pool_waiting_tasks{pool}``         gauge      its tasks submitted, waiting for a slot or a worker
``tideflow_database_up``                      gauge      1 if this scrape read the database
``tideflow_broker_up``                        gauge      1 if this scrape read the queue depths
============================================  =========  ==========================================================

The code-run gauges, the signal counters and the timer histogram are read whole at each scrape (timer steps
and signals are few next to events and attempts); a fired timer's delay is fixed once it fired, so that
histogram only grows.

The other counters and histograms come from rows whose counted values never change (``events``;
``task_attempts``, whose wait is fixed when the row is inserted at claim; a ``task_runs`` row's advance
latency, fixed when the step is inserted), aggregated in SQL over the rows added since the last scrape: a scrape costs
O(new rows) however long the history (the first scrape after start counts all of it, once). Ids are handed out
before commit, so a row can become visible after a higher one: :class:`IdCursor` keeps the ids a scan found
missing and looks them up again until they appear or ``gap_timeout`` passes (a rolled-back transaction's ids
never do). The counters are totals over the database's history, so they survive restarts of this process.

A database outage sets ``tideflow_database_up`` to 0 and keeps the last values read; a broker outage (any depth
the dispatcher cannot tell) sets ``tideflow_broker_up`` to 0 and leaves the queue depths out. Neither makes
:meth:`Metrics.render` raise.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.clock import utcnow
from app.db import repository as repo
from app.metrics import queries
from app.metrics.queries import EventKind
from app.runtime import Runtime
from app.services import limits
from app.states import RunKind, RunState, TaskState

log = logging.getLogger(__name__)

#: upper bounds (seconds) of the start-latency histogram's buckets
LATENCY_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)
#: how long ids a scan found missing are looked for again (the longest transaction we expect to commit)
GAP_TIMEOUT = 600.0
#: at most this many missing-id ranges are kept per table (the oldest are given up first)
MAX_GAPS = 1000

IdRange = tuple[int, int]
#: a range of ids a scan found missing: (first, last, seconds since the row right after it was written)
MissingRange = tuple[int, int, float]
M = TypeVar("M", GaugeMetricFamily, CounterMetricFamily)


# -- the cursor over an append-only table (pure) --------------------------------------------------------


def _subtract(lo: int, hi: int, ids: Sequence[int]) -> Iterator[IdRange]:
    """The parts of ``[lo, hi]`` not in the sorted ``ids``."""
    start = lo
    for i in ids[bisect.bisect_left(ids, lo):bisect.bisect_right(ids, hi)]:
        if i > start:
            yield start, i - 1
        start = i + 1
    if start <= hi:
        yield start, hi


@dataclass(frozen=True)
class IdCursor:
    """How far a scan of an append-only table has counted: every id up to ``position`` is counted except the
    ``gaps`` (ranges of ids that were not visible when the scan passed them, with the monotonic time at which
    they are given up). A new scan counts the ids above ``position`` and the ids in :meth:`pending` that have
    become visible since, and moves the cursor with :meth:`advance`; each id is counted at most once."""

    position: int = 0
    gaps: tuple[tuple[int, int, float], ...] = ()

    def pending(self, now: float) -> list[IdRange]:
        """The missing ranges still worth looking for at ``now``."""
        return [(lo, hi) for lo, hi, until in self.gaps if until > now]

    def advance(
        self, *, upto: int, missing: Iterable[MissingRange], found: Iterable[int], now: float,
        timeout: float = GAP_TIMEOUT,
    ) -> IdCursor:
        """The cursor after a scan (at ``now``) that counted the ids in ``(position, upto]`` except the
        ``missing`` ranges, and the late ``found`` ids among the :meth:`pending` ranges. A missing range is
        looked for until ``timeout`` after its ids were handed out, that is at most ``timeout`` after the row
        that follows it was written (so the old gaps of a long history, found by the first scan, are not kept)."""
        late = sorted(set(found))
        gaps = [(a, b, until) for lo, hi, until in self.gaps if until > now for a, b in _subtract(lo, hi, late)]
        gaps += [(lo, hi, now + timeout - age) for lo, hi, age in missing
                 if self.position < lo <= hi <= upto and age < timeout]
        if len(gaps) > MAX_GAPS:
            keep = set(sorted(gaps, key=lambda g: g[2])[-MAX_GAPS:])
            gaps = [g for g in gaps if g in keep]
        return IdCursor(max(self.position, upto), tuple(gaps))


# -- what the database says -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DbCounts:
    """The numbers read from the database, with the cursors that produced the running totals."""

    runs: Mapping[str, int] = field(default_factory=dict)
    tasks: Mapping[str, int] = field(default_factory=dict)
    events: Mapping[str, int] = field(default_factory=dict)  # totals by EventKind
    missing_row_retries: int = 0
    latency_counts: tuple[int, ...] = (0,) * (len(LATENCY_BUCKETS) + 1)  # per bucket (not cumulative), +Inf last
    latency_sum: float = 0.0
    events_cursor: IdCursor = IdCursor()
    attempts_cursor: IdCursor = IdCursor()
    #: code runs: {(kind, state): runs}; timers not fired yet and how far past due the earliest is (seconds, 0
    #: if none is overdue) when read; signals received and delivered; fired timers' delays (as latency_counts)
    runs_by_kind: Mapping[tuple[str, str], int] = field(default_factory=dict)
    timers_pending: int = 0
    timers_overdue_seconds: float = 0.0
    signals_received: int = 0
    signals_delivered: int = 0
    timer_delay_counts: tuple[int, ...] = (0,) * (len(LATENCY_BUCKETS) + 1)
    timer_delay_sum: float = 0.0
    #: code runs' passes: from the finish a pass acted on to its first new step (queries.advance_latencies_after)
    advance_counts: tuple[int, ...] = (0,) * (len(LATENCY_BUCKETS) + 1)
    advance_sum: float = 0.0
    steps_cursor: IdCursor = IdCursor()
    #: limits: {pool: (slots, running, waiting)} (``app.services.limits.pool_rows``)
    pools: Mapping[str, tuple[int, int, int]] = field(default_factory=dict)

    def dispatches(self) -> dict[str, int]:
        e = self.events
        return {"first": e.get(EventKind.FIRST, 0),
                "retry": e.get(EventKind.RETRY, 0) + e.get(EventKind.LOST_RETRY, 0),
                "republish": e.get(EventKind.REPUBLISH, 0)}

    def lease_expiries(self) -> int:
        return self.events.get(EventKind.LOST_RETRY, 0) + self.events.get(EventKind.LOST_FAILED, 0)


def _add(totals: Mapping[str, int], more: Mapping[str, int]) -> dict[str, int]:
    out = dict(totals)
    for key, n in more.items():
        out[key] = out.get(key, 0) + n
    return out


def _ages(ranges: Iterable[tuple[int, int, datetime]]) -> list[MissingRange]:
    wall = utcnow()
    return [(lo, hi, max((wall - at).total_seconds(), 0.0)) for lo, hi, at in ranges]


def _count_events(s: Session, prev: DbCounts, now: float, timeout: float) -> tuple[dict[str, int], IdCursor]:
    cursor = prev.events_cursor
    pending = cursor.pending(now)
    new, upto = queries.event_kinds_after(s, cursor.position)
    contiguous = sum(new.values()) == upto - cursor.position
    missing = [] if contiguous else _ages(queries.missing_event_ids(s, cursor.position, upto))
    late = queries.event_kinds_in(s, pending)
    for _, kind in late:
        new[kind] = new.get(kind, 0) + 1
    found = [i for i, _ in late]
    return _add(prev.events, new), cursor.advance(upto=upto, missing=missing, found=found, now=now, timeout=timeout)


#: ``queries.*_after``: {bucket index: (count, sum)} of the rows with ``id > after_id`` (bucket -1: a row with no
#: value), the number of rows and the highest id seen
_BucketsAfter = Callable[[Session, int, Sequence[float]], tuple[dict[int, tuple[int, float]], int, int]]


def _count_histogram(
    s: Session, cursor: IdCursor, counts: Sequence[int], total: float, now: float, timeout: float, *,
    after: _BucketsAfter, missing_ids: Callable[[Session, int, int], list[tuple[int, int, datetime]]],
    late_in: Callable[[Session, list[IdRange]], list[tuple[int, float | None]]],
) -> tuple[tuple[int, ...], float, IdCursor]:
    """A histogram over an append-only table whose rows' values are fixed at insert (``counts`` per bucket, and
    ``total``), brought up to date from the rows added since ``cursor``: those above it (``after``) and the late
    ones in its gaps (``late_in``), with the gaps of this scan (``missing_ids``)."""
    pending = cursor.pending(now)
    by_bucket, rows, upto = after(s, cursor.position, LATENCY_BUCKETS)
    missing = [] if rows == upto - cursor.position else _ages(missing_ids(s, cursor.position, upto))
    late = late_in(s, pending)
    out = list(counts)
    for bucket, (n, seconds) in by_bucket.items():
        if bucket >= 0:  # -1: no value (an attempt whose wait was not recorded, a row not a pass's first step)
            out[bucket] += n
            total += seconds
    for _, value in late:
        if value is not None:
            out[bisect.bisect_left(LATENCY_BUCKETS, value)] += 1  # first bound >= value, as in SQL
            total += value
    found = [i for i, _ in late]
    return tuple(out), total, cursor.advance(upto=upto, missing=missing, found=found, now=now, timeout=timeout)


def read_counts(s: Session, prev: DbCounts, now: float, gap_timeout: float = GAP_TIMEOUT) -> DbCounts:
    """``prev`` brought up to date in one read transaction (``now``: monotonic seconds, for the gaps)."""
    queries.snapshot(s)
    events, events_cursor = _count_events(s, prev, now, gap_timeout)
    # start latencies (each attempt's wait is fixed at its claim)
    latency_counts, latency_sum, attempts_cursor = _count_histogram(
        s, prev.attempts_cursor, prev.latency_counts, prev.latency_sum, now, gap_timeout,
        after=queries.attempt_waits_after, missing_ids=queries.missing_attempt_ids, late_in=queries.attempt_waits_in)
    timers, earliest_due = queries.pending_timers(s)
    overdue = max((utcnow() - earliest_due).total_seconds(), 0.0) if earliest_due is not None else 0.0
    received, delivered = queries.signal_totals(s)
    delay_counts, delay_sum = queries.timer_delays(s, LATENCY_BUCKETS)
    # advance latencies (each task row's is fixed when it is inserted)
    advance_counts, advance_sum, steps_cursor = _count_histogram(
        s, prev.steps_cursor, prev.advance_counts, prev.advance_sum, now, gap_timeout,
        after=queries.advance_latencies_after, missing_ids=queries.missing_task_ids,
        late_in=queries.advance_latencies_in)
    return DbCounts(
        runs=repo.count_runs_by_state(s), tasks=repo.count_tasks_by_state(s), events=events,
        missing_row_retries=queries.counter_values(s).get(repo.MISSING_ROW_RETRIES, 0),
        latency_counts=latency_counts, latency_sum=latency_sum, events_cursor=events_cursor,
        attempts_cursor=attempts_cursor, runs_by_kind=queries.runs_by_kind_and_state(s), timers_pending=timers,
        timers_overdue_seconds=overdue, signals_received=received, signals_delivered=delivered,
        timer_delay_counts=tuple(delay_counts), timer_delay_sum=delay_sum, advance_counts=advance_counts,
        advance_sum=advance_sum, steps_cursor=steps_cursor,
        pools={str(p["name"]): (int(p["slots"]), int(p["running"]), int(p["waiting"]))
               for p in limits.pool_rows(s)},
    )


def definition_queues(definition: Mapping[str, Any]) -> set[str]:
    """The queues a stored workflow definition names (tasks without ``queue`` use the default queue)."""
    return {str(t["queue"]) for t in definition.get("tasks", []) if isinstance(t, dict) and t.get("queue")}


# -- the exposition -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    db: DbCounts = DbCounts()
    database_up: bool = False
    depths: Mapping[str, int] | None = None  # None: the broker could not be read


def families(snap: Snapshot) -> Iterator[Metric]:
    """The metric families of a snapshot (pure)."""
    db = snap.db
    yield _labelled(GaugeMetricFamily("tideflow_runs", "Workflow runs by state.", labels=["state"]),
                    [(state, db.runs.get(state, 0)) for state in _states(RunState, db.runs)])
    yield _labelled(GaugeMetricFamily("tideflow_tasks", "Task runs by state.", labels=["state"]),
                    [(state, db.tasks.get(state, 0)) for state in _states(TaskState, db.tasks)])
    yield _labelled(CounterMetricFamily(
        "tideflow_dispatches", "Execute messages published: first (dependencies met), retry (a new attempt after "
        "a failure or a lost lease), republish (the reconciler, for an attempt nobody claimed).", labels=["kind"]),
        db.dispatches().items())
    yield CounterMetricFamily("tideflow_orphan_republishes", "Unclaimed submitted tasks re-published by the "
                              "reconciler.", value=db.events.get(EventKind.REPUBLISH, 0))
    yield CounterMetricFamily("tideflow_lease_expiries", "Attempts declared lost by the reconciler because their "
                              "lease expired (worker died, froze or was cut off).", value=db.lease_expiries())
    yield CounterMetricFamily("tideflow_missing_row_retries", "Execute messages retried because their task row "
                              "was not visible yet.", value=db.missing_row_retries)
    yield HistogramMetricFamily(
        "tideflow_task_start_latency_seconds", "Seconds from an attempt being ready to run (dependencies met, or "
        "its retry delay over) to its claim by a worker.", buckets=_cumulative(db.latency_counts),
        sum_value=db.latency_sum)
    by_kind = GaugeMetricFamily("tideflow_runs_by_kind", "Workflow runs by kind (dag, code) and state.",
                                labels=["kind", "state"])
    kinds = [str(k) for k in RunKind] + sorted({k for k, _ in db.runs_by_kind} - {str(k) for k in RunKind})
    states = _states(RunState, {st: 0 for _, st in db.runs_by_kind})
    for kind in kinds:
        for state in states:
            by_kind.add_metric([kind, state], db.runs_by_kind.get((kind, state), 0))
    yield by_kind
    yield GaugeMetricFamily("tideflow_timers_pending", "Code-run timers (ctx.sleep) not fired yet.",
                            value=db.timers_pending)
    yield GaugeMetricFamily("tideflow_timers_overdue_seconds", "Seconds the most overdue timer not fired yet is "
                            "past its due time (0: none is overdue).", value=db.timers_overdue_seconds)
    yield CounterMetricFamily("tideflow_signals_received", "Signals sent to code runs and stored.",
                              value=db.signals_received)
    yield CounterMetricFamily("tideflow_signals_delivered", "Signals delivered to a wait_signal of their run.",
                              value=db.signals_delivered)
    step = HistogramMetricFamily(
        "tideflow_workflow_step_latency_seconds", "Code runs: kind=timer, seconds from a timer's due time to its "
        "firing (the reconciler); kind=advance, from a step's end (activity, timer, signal, child) to the "
        "workflow's next durable call after it (the replay that acted on it).", labels=["kind"])
    step.add_metric(["timer"], _cumulative(db.timer_delay_counts), sum_value=db.timer_delay_sum)
    step.add_metric(["advance"], _cumulative(db.advance_counts), sum_value=db.advance_sum)
    yield step
    pools = sorted(db.pools.items())
    yield _labelled(GaugeMetricFamily("tideflow_pool_slots", "Slots of each pool (tideflow pool set).",
                                      labels=["pool"]), [(pool, slots) for pool, (slots, _, _) in pools])
    yield _labelled(GaugeMetricFamily("tideflow_pool_slots_in_use", "Slots of each pool in use: its tasks running.",
                                      labels=["pool"]), [(pool, running) for pool, (_, running, _) in pools])
    yield _labelled(GaugeMetricFamily("tideflow_pool_waiting_tasks", "Tasks of each pool submitted, waiting for a "
                                      "slot or a worker.", labels=["pool"]),
                    [(pool, queued) for pool, (_, _, queued) in pools])
    if snap.depths is not None:
        yield _labelled(GaugeMetricFamily("tideflow_queue_depth", "Messages waiting in a broker queue.",
                                          labels=["queue"]), sorted(snap.depths.items()))
    yield GaugeMetricFamily("tideflow_database_up", "1 if the last scrape could read the database.",
                            value=int(snap.database_up))
    yield GaugeMetricFamily("tideflow_broker_up", "1 if the last scrape could read the broker's queues.",
                            value=int(snap.depths is not None))


def _labelled(family: M, samples: Iterable[tuple[str, float]]) -> M:
    """``family`` (one label) with a sample per ``(label value, value)``, in that order."""
    for label, value in samples:
        family.add_metric([label], value)
    return family


def _cumulative(counts: Sequence[int]) -> list[tuple[str, float]]:
    """A histogram's buckets (``le``, cumulative count) from per-bucket counts over :data:`LATENCY_BUCKETS`."""
    cumulative, buckets = 0, []
    for bound, n in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
        cumulative += n
        buckets.append((floatToGoString(bound), float(cumulative)))
    return buckets


def _states(enum: Iterable[str], seen: Mapping[str, int]) -> list[str]:
    known = [str(v) for v in enum]
    return known + sorted(set(seen) - set(known))


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return families(self._metrics.snapshot)


# -- the public object ----------------------------------------------------------------------------------


class Metrics:
    """The ``/metrics`` of one process: ``render()`` reads the database and (through the runtime's dispatcher)
    the broker, then returns the
    exposition. Thread-safe (scrapes are serialised). Its registry is its own, never the global default."""

    def __init__(self, rt: Runtime, *, gap_timeout: float = GAP_TIMEOUT):
        self.rt = rt
        self.gap_timeout = gap_timeout
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        self.snapshot = Snapshot()
        self._workflow_queues: dict[int, frozenset[str]] = {}  # workflow rows never change
        self._lock = threading.Lock()

    def render(self) -> tuple[bytes, str]:
        """Scrape: the exposition text (Prometheus text format 0.0.4) and its content type."""
        with self._lock:
            self.refresh()
            return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def refresh(self) -> Snapshot:
        """Read the database and the broker into :attr:`snapshot` (what ``render`` exposes)."""
        db, database_up = self.snapshot.db, False
        try:
            with self.rt.db.read() as s:
                db = self._read_db(s, db)
            database_up = True
        except SQLAlchemyError as exc:
            log.warning("metrics: database unavailable (%s); reporting the last values read", exc)
        settings = self.rt.settings
        queues = {settings.master_queue, settings.default_queue}.union(*self._workflow_queues.values())
        read = self.rt.dispatcher.queue_depths(queues)  # never raises: an unknown depth is None
        depths = {queue: n for queue, n in read.items() if n is not None}
        self.snapshot = Snapshot(db=db, database_up=database_up, depths=depths if len(depths) == len(read) else None)
        return self.snapshot

    def _read_db(self, s: Session, prev: DbCounts) -> DbCounts:
        counts = read_counts(s, prev, time.monotonic(), self.gap_timeout)
        new = [i for i in queries.workflow_ids(s) if i not in self._workflow_queues]
        for workflow_id, definition in queries.workflow_definitions(s, new).items():
            self._workflow_queues[workflow_id] = frozenset(definition_queues(definition))
        return counts
