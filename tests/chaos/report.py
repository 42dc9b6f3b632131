"""The summary: one row per campaign (rich table on a terminal, plain text otherwise, or Markdown / JSON),
the bounds in effect, and the violations found."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from app.config import Settings
from tests.chaos import invariants as inv
from tests.chaos.campaign import CampaignResult
from tests.chaos.workload import Workload

COLUMNS = ["campaign", "runs", "ok/failed", "code ok/runs", "tasks", "faults", "lost", "stuck", "double", "overlap",
           "orphan", "history", "ledger", "code result", "limit",
           "sched runs/dup/missed", "recover p50/p99/max s (ref)", "drain s (bound)",
           "violations", "wall s"]


def _s(value: float | None) -> str:
    if value is None:
        return "-"
    return "inf" if math.isinf(value) else f"{value:.1f}"


def row(r: CampaignResult) -> dict[str, str]:
    rec = r.recovery
    faults = r.fault_counts()
    return {
        "campaign": r.name,
        "runs": str(len(r.top_runs)),
        "ok/failed": f"{r.outcomes['succeeded']}/{len(r.top_runs) - r.outcomes['succeeded']}",
        "code ok/runs": f"{sum(x.state == 'succeeded' for x in r.code_runs)}/{len(r.code_runs)}",
        "tasks": str(len(r.tasks)),
        "faults": str(sum(faults.values())),
        "lost": str(r.count("lost")),
        "stuck": str(r.count("stuck") + r.count("terminal")),
        "double": str(r.count("double-completion") + r.count("double-execution")),
        "overlap": f"{r.count('overlap')} ({r.checked.legal_overlaps} legal)",
        "orphan": str(r.count("orphan")),
        "history": str(r.count("history")),
        "ledger": str(r.count("ledger") + r.count("unended")),
        "code result": str(r.count("code-result") + r.count("timer")),
        "limit": str(r.count("limit")),
        "sched runs/dup/missed": f"{r.schedule_checks['scheduled_runs']}/{r.count('schedule-duplicate')}/"
                                 f"{r.count('schedule-missed')}",
        "recover p50/p99/max s (ref)": "/".join(_s(inv.percentile(rec, q)) for q in (50, 99, 100))
        + f" ({recovery_reference(r):.0f})",
        "drain s (bound)": f"{_s(r.drain_seconds)} ({r.bound.total:.0f})",
        "violations": str(len(r.checked.violations)),
        "wall s": f"{r.wall_seconds:.0f}",
    }


def recovery_bound(s: Settings, workload: Workload) -> float:
    return (s.lease_seconds + s.reconcile_interval_seconds + s.heartbeat_interval + s.stop_grace_seconds
            + workload.slow_seconds)


def recovery_reference(r: CampaignResult) -> float:
    """What a fault's recovery compares with: the nominal recovery plus the longest fault's own duration."""
    return recovery_bound(r.settings, r.config.workload) + max((f.ended - f.started for f in r.faults), default=0.0)


def bounds_lines(settings: Settings, workload: Workload) -> list[str]:
    s = settings
    stop = inv.Timing(s.lease_seconds, s.heartbeat_interval, s.stop_grace_seconds)
    return [
        f"settings: lease {s.lease_seconds:g}s, heartbeat {s.heartbeat_interval:g}s, orphan timeout "
        f"{s.orphan_timeout_seconds:g}s (back-off cap {s.orphan_max_backoff_seconds:g}s), advance timeout "
        f"{s.advance_timeout_seconds:g}s, reconcile every {s.reconcile_interval_seconds:g}s, stop grace "
        f"{s.stop_grace_seconds:g}s",
        f"README bounds: lost message re-published within {s.orphan_timeout_seconds + s.reconcile_interval_seconds:g}s"
        f" of its publish (doubling per re-publish); dead worker's attempt retried within "
        f"{s.lease_seconds + s.reconcile_interval_seconds:g}s of its last heartbeat; lost advance within "
        f"{s.advance_timeout_seconds + s.reconcile_interval_seconds:g}s; a failed-over body stops within "
        f"{s.heartbeat_interval + s.stop_grace_seconds:g}s",
        f"checked: an overlapping earlier attempt must be lost/cancelled and end within {stop.stop_bound:g}s "
        "(lease + heartbeat + stop grace + 0.5 s sampling) of losing its lease or waking up; a shell body (all "
        f"its processes) dead within {stop.reap:g}s of the death of the process that supervised it; every run terminal "
        "within the campaign's drain bound after the last fault (recovery + one run's critical path + backlog)",
        "recovery (per fault, from its injection until every task live then has a later event; not asserted) "
        f"compares with lease + reconcile + heartbeat + stop grace + the longest body = "
        f"{recovery_bound(s, workload):g}s plus the fault's own duration (ref column: the longest one), any "
        "re-publish back-off and queue backlog",
    ]


def plain_table(results: Sequence[CampaignResult]) -> str:
    rows = [row(r) for r in results]
    widths = {c: max(len(c), *(len(x[c]) for x in rows)) for c in COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS), "  ".join("-" * widths[c] for c in COLUMNS)]
    lines += ["  ".join(x[c].ljust(widths[c]) for c in COLUMNS) for x in rows]
    return "\n".join(lines)


def markdown(results: Sequence[CampaignResult]) -> str:
    rows = [row(r) for r in results]
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(x[c] for c in COLUMNS) + " |" for x in rows]
    if results:
        out += ["", *[f"- {line}" for line in bounds_lines(results[0].settings, results[0].config.workload)]]
    for r in results:
        out += ["", f"**{r.name}**: faults {dict(r.fault_counts())}; drain bound {r.bound}; evidence {r.evidence}; "
                f"workload {r.workload_checks}; code workflows {r.code_checks}; schedules {r.schedule_checks}"]
        out += [f"- {v}" for v in r.checked.violations[:50]]
    return "\n".join(out) + "\n"


def as_json(results: Sequence[CampaignResult]) -> str:
    def one(r: CampaignResult) -> dict[str, Any]:
        return {"summary": row(r), "faults": [vars(f) for f in r.faults], "fault_errors": r.fault_errors,
                "violations": [vars(v) for v in r.checked.violations], "evidence": r.evidence,
                "outcomes": dict(r.outcomes), "workload": r.workload_checks, "code": r.code_checks,
                "schedules": r.schedule_checks,
                "recovery": r.recovery,
                "drain_seconds": r.drain_seconds,
                "bound": vars(r.bound) | {"total": r.bound.total}, "restarts": r.restarts,
                "workdir": str(r.workdir) if not r.ok or r.config.keep_workdir else None}
    return json.dumps([one(r) for r in results], indent=2, default=str)


def details(r: CampaignResult, limit: int = 30) -> list[str]:
    lines = [f"{r.name}: faults {dict(r.fault_counts())}, restarts {len(r.restarts)}, outcomes "
             f"{dict(r.outcomes)}, drain bound {r.bound}", f"  evidence: {r.evidence}",
             f"  workload: {r.workload_checks}", f"  code workflows: {r.code_checks}",
             f"  schedules: {r.schedule_checks}"]
    lines += [f"  fault error: {e}" for e in r.fault_errors[:10]]
    lines += [f"  VIOLATION {v}" for v in r.checked.violations[:limit]]
    if len(r.checked.violations) > limit:
        lines.append(f"  ... and {len(r.checked.violations) - limit} more")
    if r.workdir.exists():
        lines.append(f"  logs, ledger and beat schedule kept in {r.workdir}")
    return lines


def print_summary(results: Sequence[CampaignResult], rich: bool = True) -> None:
    if not results:
        return
    try:
        if not rich:
            raise ImportError
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(plain_table(results))
    else:
        table = Table(title="Tideflow chaos campaigns")
        for c in COLUMNS:
            table.add_column(c, justify="left" if c == "campaign" else "right")
        for x in (row(r) for r in results):
            table.add_row(*(x[c] for c in COLUMNS))
        Console(width=200).print(table)
    for line in bounds_lines(results[0].settings, results[0].config.workload):
        print(line)
    for r in results:
        print("\n".join(details(r)))
