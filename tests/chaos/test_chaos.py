"""The CI chaos campaign: each fault alone on a few runs, then all of them mixed, each campaign on its own
PostgreSQL, Redis and Procfile processes (``python -m tests.chaos --runs 1000`` is the full campaign).

Every campaign must keep every invariant (nothing lost, nothing stuck, no double completion, no illegal
overlap, consistent history, nothing in the ledger the database does not know, every run terminal within
the drain bound) and every run must succeed (retries cover the attempts the faults take away). Beside each
mixed run runs a code workflow (``tests.chaos.codeflows``: activities, a gather, a durable sleep, a signal the
campaign sends, a child) whose result must equal the one computed without faults. Each test
also checks that its fault really took effect, so a fault whose injection silently did nothing fails.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.chaos.campaign import CampaignConfig, CampaignResult, run_campaign
from tests.chaos.faults import FAULT_KINDS
from tests.chaos.report import details
from tests.chaos.workload import NOSTART, Workload

pytestmark = pytest.mark.slow

#: faster than a full campaign's intervals, so that a few runs see each fault more than once
CI_INTERVALS: dict[str, tuple[float, float]] = {
    "worker-kill": (1.5, 3.0),
    "master-kill": (1.5, 3.0),
    "redis-flush": (2.0, 4.0),
    "redis-restart": (3.0, 5.0),
    "pg-restart": (3.0, 6.0),
    "pg-terminate": (2.0, 4.0),
    "table-lock": (30.0, 40.0),
    "duplicates": (0.3, 1.0),
    "pause": (2.0, 4.0),
    "procfile-stop": (3.0, 5.0),
}


def ci_config(name: str, faults: tuple[str, ...], runs: int, seed: int) -> CampaignConfig:
    return CampaignConfig(
        name=name, faults=faults, runs=runs, rate=1.0, workers=2, concurrency=2, masters=1, seed=seed,
        intervals=dict(CI_INTERVALS), lock_seconds=8.0, lock_runs=3, crash_before_publish=0.15,
        workload=Workload(slow_seconds=2.5), max_window=runs + 30.0)


def check_invariants(r: CampaignResult) -> None:
    report = "\n".join(details(r))
    for kind in ("lost", "stuck", "terminal", "double-completion", "double-execution", "overlap", "orphan",
                 "history", "ledger", "unended", "cannot-start", "code-result", "timer", "limit",
                 "schedule-duplicate", "schedule-missed"):
        assert r.count(kind) == 0, f"{kind} violations in campaign {r.name}:\n{report}"
    assert not r.checked.violations, report
    assert r.drain_seconds is not None and r.drain_seconds <= r.bound.total, report
    assert len(r.top_runs) >= r.config.runs and all(s.run_id is not None for s in r.started), report
    assert r.outcomes == {"succeeded": len(r.top_runs)}, f"runs did not all succeed: {dict(r.outcomes)}\n{report}"
    # child runs too; the runs whose subworkflow cannot start end failed by design (invariant cannot-start)
    assert all(run.state == "succeeded" for run in r.runs if run.workflow != NOSTART), report
    # a code run beside each mixed run, each with its code child; all succeeded with the expected result
    c = r.code_checks
    assert c["code_runs"] == len(r.top_runs) == c["code_child_runs"] == c["code_results_ok"], (c, report)
    assert c["timers"] == c["code_runs"] and c["timer_late_max"] >= 0, c
    # the scheduled workflow fired (beat's pass) through the fault window, each fire time one run, none missed
    s = r.schedule_checks
    assert s["fire_times_in_window"] >= 3 and s["scheduled_runs"] >= 3, (s, report)
    assert s["scheduled_runs"] == s["fires"].get("started", 0) and s["duplicates"] == s["missed"] == 0, (s, report)


def _killed_workers(e: dict, r: CampaignResult) -> None:
    assert e["killed_worker_pids"] >= 1 and e["killed_busy_worker_pids"] >= 1
    assert e["lost_attempts"] >= 1, "a killed body's attempt must be declared lost by the reconciler"


def _killed_masters(e: dict, r: CampaignResult) -> None:
    assert e["killed_master_pids"] >= 1
    assert e["killed_beat_pids"] >= 1, "the first master kill also kills beat (the scheduler's clock)"
    assert e["crash_before_publish"] >= 1, "no process crashed between a commit and its publish"
    assert e["republished"] >= 1, "the messages of a crashed publish must be re-published by the reconciler"


def _broker_lost(e: dict, r: CampaignResult) -> None:
    assert e["execute_messages_lost"] >= 1, "the broker loss must hit queued execute messages"
    assert e["republished_after_broker_loss"] >= 1, "lost messages must be re-published"


def _pg_restarted(e: dict, r: CampaignResult) -> None:
    assert e["pg_restarts"] >= 1, "the postmaster must have changed"


def _pg_terminated(e: dict, r: CampaignResult) -> None:
    assert e["terminated_backends"] >= 1


def _table_locked(e: dict, r: CampaignResult) -> None:
    assert e["lock_seconds"] >= 0.9 * r.config.lock_seconds
    assert e["runs_blocked_by_lock"] >= 1, "runs started during the lock must have waited for it"
    assert e["blocked_runs_succeeded"] == e["runs_blocked_by_lock"]


def _duplicated(e: dict, r: CampaignResult) -> None:
    assert e["duplicates_sent"] >= 1
    assert e["duplicates_ignored"] >= 1, "duplicate execute messages must be acknowledged and ignored"


def _paused(e: dict, r: CampaignResult) -> None:
    assert e["pauses_lost_lease"] >= 1, "the paused attempt must have been declared lost"
    assert e["paused_results_fenced"] >= 1, "the paused body must end without its result being recorded"
    assert e["lease_lost_logs"] >= 1, "the paused worker must notice it lost its lease"


def _procfile_stopped(e: dict, r: CampaignResult) -> None:
    assert e["procfile_sigkills_mid_body"] >= 1, "the manager's SIGKILL must land while the shell body runs"
    assert e["shell_bodies_reaped_with_children"] >= 1, "a forking shell body must have lost its supervisor"
    assert e["lost_attempts"] >= 1, "the killed body's attempt must be declared lost (and retried)"


EFFECTS: dict[str, Callable[[dict, CampaignResult], None]] = {
    "worker-kill": _killed_workers, "master-kill": _killed_masters, "redis-flush": _broker_lost,
    "redis-restart": _broker_lost, "pg-restart": _pg_restarted, "pg-terminate": _pg_terminated,
    "table-lock": _table_locked, "duplicates": _duplicated, "pause": _paused, "procfile-stop": _procfile_stopped,
}


@pytest.mark.parametrize("fault", FAULT_KINDS)
def test_each_fault_alone_keeps_every_invariant(fault: str, campaign_results: list[CampaignResult]) -> None:
    result = run_campaign(ci_config(fault, (fault,), runs=8, seed=100 + FAULT_KINDS.index(fault)))
    campaign_results.append(result)
    check_invariants(result)
    assert result.fault_counts()[fault] >= 1, f"{fault} was never injected: {result.fault_errors}"
    try:
        EFFECTS[fault](result.evidence, result)
    except AssertionError as exc:
        raise AssertionError(f"{fault} had no visible effect: {exc}\n" + "\n".join(details(result))) from None


def test_all_faults_mixed_keep_every_invariant(campaign_results: list[CampaignResult]) -> None:
    result = run_campaign(ci_config("mixed", FAULT_KINDS, runs=16, seed=200))
    campaign_results.append(result)
    check_invariants(result)
    counts = result.fault_counts()
    assert all(counts[kind] >= 1 for kind in FAULT_KINDS), f"not every fault was injected: {dict(counts)}"
    e = result.evidence
    assert e["lost_attempts"] >= 1 and e["republished"] >= 1 and e["duplicates_ignored"] >= 1, e
    w = result.workload_checks  # the invariant "cannot-start" checked each of these ended failed
    assert w["nostart_runs"] >= 1 and w["nostart_failed"] == w["nostart_runs"], w
    # the code runs' signal came before their wait (kept) for some, while they waited for others; their
    # activities lost attempts to the faults and were retried (bump also fails its first attempt by design)
    c = result.code_checks
    assert c["signals_before_wait"] >= 1 and c["signals_to_waiting_run"] >= 1, c
    assert c["activity_attempts_failed"] >= c["code_runs"], c


def test_a_partitioned_worker_stops_its_body_within_the_bound(campaign_results: list[CampaignResult]) -> None:
    """Extra fault (not in the issue's list): the pool process running a long body loses its database (its
    PostgreSQL backends are frozen: TCP stays open, nothing answers) while the reconciler can still fail its
    attempt over. README: the worker "gives up after LEASE", so the body must stop within the stop bound.
    This found a bug: the lease renewal blocked without a timeout, so the body ran on beside the next attempt
    until the partition healed (fixed in app/services/lease.py: the renewal now has a deadline)."""
    cfg = ci_config("pg-partition", ("pg-partition",), runs=2, seed=300)
    cfg.workload = Workload(slow_seconds=16.0)
    result = run_campaign(cfg)
    campaign_results.append(result)
    assert result.evidence["partitions_lost_lease"] >= 1, "\n".join(details(result))
    check_invariants(result)
