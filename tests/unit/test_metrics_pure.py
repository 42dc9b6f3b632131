"""The pure parts of app/metrics/__init__.py: the cursor over append-only ids and the exposition of a snapshot."""

from __future__ import annotations

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from app.metrics import (
    LATENCY_BUCKETS,
    MAX_GAPS,
    DbCounts,
    IdCursor,
    Snapshot,
    _subtract,
    definition_queues,
    families,
)
from app.states import RunState, TaskState


def samples(snap: Snapshot) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    class One(Collector):
        def collect(self):  # type: ignore[no-untyped-def]
            return families(snap)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(One())
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


# -- IdCursor -----------------------------------------------------------------------------------------


def test_subtract_splits_a_range_around_found_ids():
    assert list(_subtract(5, 10, [])) == [(5, 10)]
    assert list(_subtract(5, 10, [1, 5, 7, 10, 12])) == [(6, 6), (8, 9)]
    assert list(_subtract(5, 6, [5, 6])) == []


def test_cursor_moves_to_the_highest_id_and_remembers_what_was_missing():
    c = IdCursor().advance(upto=10, missing=[(3, 4, 0.0), (7, 7, 0.0)], found=[], now=100.0, timeout=60)
    assert c.position == 10
    assert c.pending(100.0) == [(3, 4), (7, 7)]
    # an empty scan keeps the position (upto = the old position)
    assert c.advance(upto=10, missing=[], found=[], now=101.0, timeout=60).position == 10


def test_late_ids_leave_the_gaps_and_are_never_looked_for_again():
    c = IdCursor().advance(upto=10, missing=[(3, 6, 0.0)], found=[], now=0.0, timeout=60)
    c = c.advance(upto=12, missing=[(11, 11, 0.0)], found=[4], now=1.0, timeout=60)
    assert c.pending(1.0) == [(3, 3), (5, 6), (11, 11)]
    c = c.advance(upto=12, missing=[], found=[3, 5, 6, 11], now=2.0, timeout=60)
    assert c.gaps == () and c.position == 12


def test_gaps_are_given_up_after_the_timeout():
    c = IdCursor().advance(upto=10, missing=[(3, 3, 0.0)], found=[], now=0.0, timeout=5)
    c = c.advance(upto=20, missing=[(15, 15, 0.0)], found=[], now=3.0, timeout=5)
    assert c.pending(4.9) == [(3, 3), (15, 15)]
    assert c.pending(5.0) == [(15, 15)]  # a rolled-back transaction's id never shows up
    c = c.advance(upto=20, missing=[], found=[], now=5.0, timeout=5)
    assert c.pending(5.0) == [(15, 15)] and len(c.gaps) == 1


def test_a_gap_is_given_up_timeout_seconds_after_the_row_that_follows_it():
    c = IdCursor().advance(upto=30, missing=[(3, 3, 700.0), (10, 10, 590.0), (20, 20, 1.0)], found=[], now=0.0,
                           timeout=600)
    assert c.pending(0.0) == [(10, 10), (20, 20)]  # id 3 was handed out over 600 s ago: its transaction is over
    assert c.pending(10.0) == [(20, 20)]


def test_missing_ranges_outside_the_scanned_window_are_ignored():
    c = IdCursor(position=10).advance(upto=20, missing=[(5, 6, 0.0), (12, 13, 0.0), (19, 25, 0.0)], found=[], now=0.0)
    assert c.pending(0.0) == [(12, 13)]


def test_the_number_of_gaps_is_capped_keeping_the_newest():
    c = IdCursor()
    for i in range(MAX_GAPS + 5):
        c = c.advance(upto=2 * i + 2, missing=[(2 * i + 1, 2 * i + 1, 0.0)], found=[], now=float(i), timeout=10_000)
    assert len(c.gaps) == MAX_GAPS
    assert c.gaps[0][0] == 11 and c.gaps[-1][0] == 2 * (MAX_GAPS + 4) + 1


# -- exposition ----------------------------------------------------------------------------------------


def test_every_state_is_exposed_even_at_zero_and_unknown_ones_too():
    snap = Snapshot(db=DbCounts(runs={"running": 2}, tasks={"succeeded": 5, "weird": 1}), database_up=True,
                    depths={"tideflow.default": 3})
    got = samples(snap)
    for state in RunState:
        assert got[("tideflow_runs", (("state", state.value),))] == (2 if state == "running" else 0)
    for state in TaskState:
        assert got[("tideflow_tasks", (("state", state.value),))] == (5 if state == "succeeded" else 0)
    assert got[("tideflow_tasks", (("state", "weird"),))] == 1
    assert got[("tideflow_queue_depth", (("queue", "tideflow.default"),))] == 3
    assert got[("tideflow_database_up", ())] == 1
    assert got[("tideflow_broker_up", ())] == 1


def test_counters_come_from_event_kinds():
    events = {"first": 7, "retry": 2, "lost_retry": 1, "lost_failed": 3, "republish": 4, "other": 100}
    got = samples(Snapshot(db=DbCounts(events=events, missing_row_retries=9)))
    assert got[("tideflow_dispatches_total", (("kind", "first"),))] == 7
    assert got[("tideflow_dispatches_total", (("kind", "retry"),))] == 3  # a lost attempt's retry is a retry
    assert got[("tideflow_dispatches_total", (("kind", "republish"),))] == 4
    assert got[("tideflow_orphan_republishes_total", ())] == 4
    assert got[("tideflow_lease_expiries_total", ())] == 4
    assert got[("tideflow_missing_row_retries_total", ())] == 9


def test_histogram_buckets_are_cumulative():
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    counts[0], counts[3], counts[-1] = 2, 1, 1
    got = samples(Snapshot(db=DbCounts(latency_counts=tuple(counts), latency_sum=7200.5)))
    name = "tideflow_task_start_latency_seconds"
    assert got[(f"{name}_bucket", (("le", "0.01"),))] == 2
    assert got[(f"{name}_bucket", (("le", "0.05"),))] == 2
    assert got[(f"{name}_bucket", (("le", "0.1"),))] == 3
    assert got[(f"{name}_bucket", (("le", "3600.0"),))] == 3
    assert got[(f"{name}_bucket", (("le", "+Inf"),))] == 4
    assert got[(f"{name}_count", ())] == 4
    assert got[(f"{name}_sum", ())] == 7200.5


def test_no_queue_depths_when_the_broker_was_not_read():
    got = samples(Snapshot(db=DbCounts(), database_up=False, depths=None))
    assert not any(name == "tideflow_queue_depth" for name, _ in got)
    assert got[("tideflow_broker_up", ())] == 0
    assert got[("tideflow_database_up", ())] == 0


def test_definition_queues():
    definition = {"name": "w", "tasks": [{"name": "a", "queue": "gpu"}, {"name": "b"},
                                         {"name": "c", "queue": "gpu"}, {"name": "d", "queue": "io"}]}
    assert definition_queues(definition) == {"gpu", "io"}
    assert definition_queues({}) == set()
