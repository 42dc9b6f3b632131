"""Evidence that the faults really happened and really hurt (so a campaign whose injection silently did
nothing fails its test): pids killed, messages lost and re-published, attempts declared lost, paused bodies
stopped, runs blocked by the lock, duplicates ignored, shell bodies whose supervisor was killed mid-body."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tests.chaos import invariants as inv
from tests.chaos.faults import FaultRecord
from tests.chaos.procs import ManagedProcess

CRASH_LOG = "fault injection: SIGKILL"
IGNORED_LOG = "'ignored'"
LEASE_LOST_LOG = "stopping the body: lease lost"
FENCED_LOG = "lost its lease; its result is discarded"


def _log_count(procs: Sequence[ManagedProcess], role: str, text: str) -> int:
    return sum(p.log().count(text) for p in procs if p.role == role)


def collect_evidence(records: Sequence[FaultRecord], snap: inv.Snapshot, checked: inv.Checked,
                     procs: Sequence[ManagedProcess]) -> dict[str, Any]:
    def of(kind: str) -> list[FaultRecord]:
        return [r for r in records if r.kind == kind]

    republished = [e for e in snap.events if "re-published" in e.reason]
    broker_loss = of("redis-flush") + of("redis-restart")
    first_loss = min((r.started for r in broker_loss), default=None)
    crashes = sum(p.log().count(CRASH_LOG) for p in procs)
    execs = {(x.task_run, x.attempt, x.pid): x for x in checked.executions}
    outcome = {(a.task_run_id, a.attempt): a.outcome for a in snap.attempts}
    paused_stopped = paused_fenced = 0
    for r in of("pause"):
        x = execs.get((r.data["task_run"], r.data["attempt"], r.data["pid"]))
        if r.data.get("lost_at") and x is not None:
            paused_stopped += x.status in ("stopped", "killed")
            paused_fenced += x.status != "open" and outcome.get((x.task_run, x.attempt)) != "succeeded"
    supervisor = {(a.task_run_id, a.attempt): a.pid for a in snap.attempts}
    # shell bodies cut off by the death of the process that supervised them (and reaped: see check_orphans)
    reaped = [x for x in checked.executions
              if x.status != "ok" and x.end is not None and (sup := supervisor.get((x.task_run, x.attempt))) not in
              (None, x.pid) and (died := inv.died_after(snap.first_dead, sup, x.start)) is not None
              and died <= x.end + 0.2]
    started = {s.key: s for s in snap.started}
    run_state = {r.id: r.state for r in snap.runs}
    blocked = [started[k] for r in of("table-lock") for k in r.data["keys"]
               if k in started and started[k].returned_at >= r.ended - 0.5]
    return {
        "killed_worker_pids": sum(len(r.data["pids"]) for r in of("worker-kill")),
        "killed_busy_worker_pids": sum(len(r.data.get("busy", [])) for r in of("worker-kill")),
        "killed_master_pids": sum(len(r.data["pids"]) for r in of("master-kill")),
        "killed_beat_pids": sum(len(r.data.get("beat", [])) for r in of("master-kill")),
        "crash_before_publish": crashes,
        "crash_before_publish_by_role": {role: _log_count(procs, role, CRASH_LOG) for role in ("master", "worker")},
        "lost_attempts": sum(a.outcome == "lost" for a in snap.attempts),
        "republished": len(republished),
        "messages_lost_in_broker": sum(r.data["queued"] + r.data["unacked"] for r in broker_loss),
        "execute_messages_lost": sum(r.data["execute"] for r in broker_loss),
        "republished_after_broker_loss": sum(first_loss is not None and e.at > first_loss for e in republished),
        "reconciler_events": sum(e.actor == "reconciler" for e in snap.events),
        "pg_restarts": sum(r.data["before"] != r.data["after"] for r in of("pg-restart")),
        "terminated_backends": sum(r.data["terminated"] for r in of("pg-terminate")),
        "lock_seconds": max((r.data["held"] for r in of("table-lock")), default=0.0),
        "locks_broken_early": sum(r.data["broken"] for r in of("table-lock")),
        "runs_blocked_by_lock": len(blocked),
        "blocked_runs_succeeded": sum(s.run_id is not None and run_state.get(s.run_id) == "succeeded"
                                      for s in blocked),
        "duplicates_sent": sum(len(r.data["execute"]) + len(r.data["advance"]) for r in of("duplicates")),
        "duplicates_ignored": _log_count(procs, "worker", IGNORED_LOG),
        "pauses": len(of("pause")),
        "pauses_lost_lease": sum(bool(r.data.get("lost_at")) for r in of("pause")),
        "paused_bodies_stopped": paused_stopped,
        "paused_results_fenced": paused_fenced,
        "partitions": len(of("pg-partition")),
        "partitions_lost_lease": sum(bool(r.data.get("lost_at")) for r in of("pg-partition")),
        "procfile_stops": len(of("procfile-stop")),
        "procfile_sigkills_mid_body": sum(bool(r.data["sigkilled"]) and r.data["shell_running"]
                                          for r in of("procfile-stop")),
        "shell_bodies_reaped": len(reaped),
        "shell_bodies_reaped_with_children": sum(len(x.children) >= 2 for x in reaped),
        "lease_lost_logs": _log_count(procs, "worker", LEASE_LOST_LOG),
        "fenced_results": _log_count(procs, "worker", FENCED_LOG),
        "start_errors": sum(s.errors for s in snap.started),
        "legal_overlaps": checked.legal_overlaps,
        # limits: the most attempts of each pool open at once (never above its slots: invariant "limit")
        "pool_peaks": inv.pool_peaks(snap.tasks, snap.attempts),
        "pool_slots": dict(snap.pools),
    }
