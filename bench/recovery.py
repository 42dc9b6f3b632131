"""Recovery time after a fault, against the configured bounds, with raw Celery's behaviour for the same fault.

    .venv/bin/python -m bench.recovery [--profile both|default|fast] [--samples 5] [--default-samples 1]
                                       [--window 60] [--database postgres|sqlite]

Tideflow (one worker, one master and beat, real processes; Redis broker):

* lost message, the run's first publish never reaches a worker, measured from the task's first publish
  (its ``submitted`` event) to its claim (``running`` event); bound ``ORPHAN_TIMEOUT + RECONCILE_INTERVAL``:
  - ``publish dropped``: the commit happened but its publish did not (a process dying between the two):
    the run is started through a dispatcher that drops messages, with the worker up;
  - ``queue deleted``: the worker is stopped, a run is started, its queue's keys are deleted from Redis
    (the message is gone; kombu's bindings are kept), then the worker is started again;
  - ``FLUSH of the prefix``: every key under the deployment's prefix (queues *and* kombu's exchange
    bindings) is deleted while all processes stay up, then a run is started; if it is not claimed within
    the window, the master process is restarted and the time from that restart to the claim is reported;
* worker SIGKILLed mid-task (a python body sleeping, ``retries: 1``), measured from the kill to the next
  attempt's claim; bound ``LEASE + RECONCILE_INTERVAL`` after the last heartbeat:
  - ``worker group killed``: SIGKILL the worker's main process and pool children, start a fresh worker;
  - ``pool child killed``: SIGKILL only the pool process running the body (the main process survives).

Baseline, same run (raw Celery, acks_late, reject_on_worker_lost, prefetch 1, Redis): there is no
re-publish of a lost message at all, and an unacknowledged message is redelivered after the transport's
``visibility_timeout`` (kombu's default, 3600 s, as configured in bench/raw_celery.py). Not waited for: the
script measures what happens within ``--window`` seconds for the same faults (message deleted then worker
started; worker group SIGKILLed then a fresh worker started; pool child SIGKILLed).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import statistics
import time
from collections.abc import Callable
from typing import Any

import redis

from app.client import Tideflow
from app.db import repository as repo
from app.dispatch import RecordingDispatcher
from app.runtime import Runtime
from bench.common import (
    RawCeleryWorker,
    Servers,
    TideflowDeployment,
    database,
    parser,
    purge_prefix,
    report,
    workdir,
)
from tests.support.wait import poll

PROFILES: dict[str, dict[str, str]] = {
    "default": {},  # bench.common.DEFAULT_TIMINGS: the production defaults
    "fast": {
        "TIDEFLOW_LEASE_SECONDS": "3",
        "TIDEFLOW_HEARTBEAT_SECONDS": "1",
        "TIDEFLOW_ORPHAN_TIMEOUT_SECONDS": "2",
        "TIDEFLOW_RECONCILE_INTERVAL_SECONDS": "0.5",
        "TIDEFLOW_ADVANCE_TIMEOUT_SECONDS": "2",
        "TIDEFLOW_STOP_GRACE_SECONDS": "2",
    },
}
VISIBILITY_TIMEOUT = 3600.0  # kombu's Redis default; bench/raw_celery.py does not change it

NOOP = "bench-recovery-noop"
SLEEP = "bench-recovery-sleep"
NOOP_WF: dict[str, Any] = {"name": NOOP, "tasks": [{"name": "only", "type": "python", "function": "bench.bodies:noop"}]}
SLEEP_WF: dict[str, Any] = {"name": SLEEP, "tasks": [
    {"name": "sleeper", "type": "python", "function": "bench.bodies:sleep", "args": {"seconds": 3600}, "retries": 1}]}


def events(tf: Tideflow, run_id: int) -> list[Any]:
    with tf.runtime.db.read() as s:
        return [e for e in repo.run_events(s, run_id) if e.task_name is not None]


def first(evs: list[Any], to: str, *, src: str | None = None, attempt: int | None = None) -> float | None:
    for e in evs:
        if e.to_state == to and (src is None or e.from_state == src) and (attempt is None or e.attempt == attempt):
            return float(e.created_at.timestamp())
    return None


def claimed(tf: Tideflow, run_id: int, attempt: int = 1) -> Callable[[], float | None]:
    return lambda: first(events(tf, run_id), "running", attempt=attempt)


def only_task(tf: Tideflow, run_id: int) -> Any:
    with tf.runtime.db.read() as s:
        (task,) = repo.run_tasks(s, run_id)
        return task


# -- Tideflow faults ---------------------------------------------------------------------------------------


def lost_publish_result(tf: Tideflow, run_id: int, timeout: float) -> dict[str, float]:
    if poll(claimed(tf, run_id), timeout) is None:
        raise TimeoutError(f"run {run_id}: task not claimed {timeout:.0f}s after its first publish")
    evs = events(tf, run_id)
    t0 = first(evs, "submitted", src="pending")
    t_republish = first(evs, "submitted", src="submitted")
    t_claim = first(evs, "running")
    assert t0 is not None and t_claim is not None
    return {"seconds": t_claim - t0, "republished_s": (t_republish - t0) if t_republish else float("nan")}


def publish_dropped(dep: TideflowDeployment, bound: float) -> dict[str, float]:
    dropper = Tideflow(Runtime.create(dep.settings(), RecordingDispatcher()))
    try:
        run_id = dropper.start_run(NOOP)
    finally:
        dropper.close()
    return lost_publish_result(dep.tf, run_id, bound * 3 + 30)


def queue_deleted(dep: TideflowDeployment, bound: float) -> dict[str, float]:
    dep.worker.terminate()
    run_id = dep.tf.start_run(NOOP)
    client = redis.Redis.from_url(dep.broker_url)
    keys = list(client.scan_iter(match=f"{dep.key_prefix}{dep.tf.runtime.settings.default_queue}*"))
    deleted = client.delete(*keys) if keys else 0
    client.close()
    if not deleted:
        raise RuntimeError("queue deleted: no queue key found to delete (was the message published?)")
    ready = dep.start_worker()
    return {**lost_publish_result(dep.tf, run_id, bound * 3 + 30), "worker_ready_s": ready}


def flush_prefix(dep: TideflowDeployment, bound: float, window: float) -> dict[str, Any]:
    """Delete every key under the prefix (queues and kombu's bindings) with all processes up, as FLUSHALL on
    a dedicated Redis would; then a run whose publish is dropped must still be recovered (beat -> master ->
    reconciler -> worker all publish after the flush), and a normal run must still be claimed at once."""
    warm = dep.tf.start_run(NOOP)  # every process has published and declared before the flush
    dep.tf.wait(warm, timeout=60, interval=0.05)
    purge_prefix(dep.broker_url, dep.key_prefix)
    normal = dep.tf.start_run(NOOP)
    t_normal = poll(claimed(dep.tf, normal), window, interval=0.05)
    normal_t0 = first(events(dep.tf, normal), "submitted", src="pending")
    assert normal_t0 is not None
    out: dict[str, Any] = {"new_run_claim_s": (t_normal - normal_t0) if t_normal else float("inf")}
    dropper = Tideflow(Runtime.create(dep.settings(), RecordingDispatcher()))
    try:
        run_id = dropper.start_run(NOOP)
    finally:
        dropper.close()
    t_claim = poll(claimed(dep.tf, run_id), max(window, bound * 3), interval=0.1)
    evs = events(dep.tf, run_id)
    t0 = first(evs, "submitted", src="pending")
    t_republish = first(evs, "submitted", src="submitted")
    assert t0 is not None
    out["republished_s"] = (t_republish - t0) if t_republish else float("inf")
    out["seconds"] = (t_claim - t0) if t_claim else float("inf")
    if t_claim is None:  # report whether restarting the master (it re-declares its queues) brings it back
        dep.master.terminate()
        t_restart = time.time()
        dep.start_master()
        t_claim = poll(claimed(dep.tf, run_id), bound * 3 + 30, interval=0.2)
        out["claimed_after_master_restart_s"] = (t_claim - t_restart) if t_claim else float("inf")
    return out


def wait_running(dep: TideflowDeployment, run_id: int, timeout: float = 60) -> Any:
    task = poll(lambda: (t := only_task(dep.tf, run_id)).state == "running" and t, timeout)
    if not task:
        raise TimeoutError(f"run {run_id}: the sleeping task did not start")
    return task


def kill_result(dep: TideflowDeployment, run_id: int, t_kill: float, bound: float) -> dict[str, float]:
    task = only_task(dep.tf, run_id)  # nobody renews the lease any more: this is the last heartbeat's
    last_heartbeat = task.lease_expires_at.timestamp() - dep.tf.runtime.settings.lease_seconds
    if poll(claimed(dep.tf, run_id, attempt=2), bound * 3 + 30, interval=0.1) is None:
        raise TimeoutError(f"run {run_id}: attempt 2 not claimed {bound * 3 + 30:.0f}s after the kill")
    evs = events(dep.tf, run_id)
    t_lost = first(evs, "submitted", src="running", attempt=2)
    t_retry = first(evs, "running", attempt=2)
    assert t_lost is not None and t_retry is not None
    dep.tf.cancel(run_id)
    return {"seconds": t_retry - t_kill, "lost_declared_s": t_lost - t_kill,
            "heartbeat_to_lost_s": t_lost - last_heartbeat, "kill_after_heartbeat_s": t_kill - last_heartbeat}


def worker_group_killed(dep: TideflowDeployment, bound: float) -> dict[str, float]:
    run_id = dep.tf.start_run(SLEEP)
    wait_running(dep, run_id)
    time.sleep(dep.tf.runtime.settings.heartbeat_interval * 1.5)  # at least one lease renewal has happened
    t_kill = time.time()
    dep.worker.kill()  # SIGKILL main + pool children, waits until all are dead
    ready = dep.start_worker()
    return {**kill_result(dep, run_id, t_kill, bound), "worker_ready_s": ready}


def pool_child_killed(dep: TideflowDeployment, bound: float) -> dict[str, float]:
    run_id = dep.tf.start_run(SLEEP)
    task = wait_running(dep, run_id)
    with dep.tf.runtime.db.read() as s:
        pid = repo.attempts(s, [task.id])[-1].pid
    if pid not in dep.worker.children():
        raise RuntimeError(f"attempt pid {pid} is not a pool process of the worker")
    time.sleep(dep.tf.runtime.settings.heartbeat_interval * 1.5)
    t_kill = time.time()
    os.kill(pid, signal.SIGKILL)
    return kill_result(dep, run_id, t_kill, bound)


FAULTS: dict[str, tuple[str, Callable[..., dict[str, Any]]]] = {
    "publish dropped (commit without publish)": ("orphan", publish_dropped),
    "queue deleted (worker stopped, restarted)": ("orphan", queue_deleted),
    "worker group SIGKILLed (fresh worker started)": ("lease", worker_group_killed),
    "pool child SIGKILLed (worker main survives)": ("lease", pool_child_killed),
}


def run_profile(servers: Servers, db_kind: str, profile: str, samples: int, window: float) -> list[dict[str, Any]]:
    env = PROFILES[profile]
    rows: list[dict[str, Any]] = []
    for fault, (kind, fn) in FAULTS.items():
        with database(servers, db_kind) as db_url, TideflowDeployment(
                db_url, servers.redis_url, workdir=workdir("recovery"), beat=True, env=env) as dep:
            st = dep.tf.runtime.settings
            bound = (st.orphan_timeout_seconds if kind == "orphan" else st.lease_seconds) \
                + st.reconcile_interval_seconds
            dep.tf.register(NOOP_WF)
            dep.tf.register(SLEEP_WF)
            results = []
            try:
                for _ in range(samples):
                    # a sample starts right after the previous one's claim, which follows a reconciler pass:
                    # de-correlate from beat's phase, or every sample lands at the same point of the interval
                    time.sleep(random.uniform(0, st.reconcile_interval_seconds))
                    results.append(fn(dep, bound))
            finally:
                with contextlib.suppress(Exception):
                    dep.worker.kill()  # a sleeping retry would hold up a warm shutdown
        rows.append(summarise(profile, fault, kind, bound, results))
    with database(servers, db_kind) as db_url, TideflowDeployment(
            db_url, servers.redis_url, workdir=workdir("recovery"), beat=True, env=env) as dep:
        st = dep.tf.runtime.settings
        dep.tf.register(NOOP_WF)
        res = flush_prefix(dep, st.orphan_timeout_seconds + st.reconcile_interval_seconds, window)
    rows.append(summarise(profile, "FLUSH of the prefix (processes up), then publish dropped", "orphan",
                          st.orphan_timeout_seconds + st.reconcile_interval_seconds, [res]))
    return rows


def summarise(profile: str, fault: str, kind: str, bound: float, results: list[dict[str, Any]]) -> dict[str, Any]:
    secs = [r["seconds"] for r in results]
    check = "republished_s" if kind == "orphan" else "heartbeat_to_lost_s"  # what README's bound is about
    finite = [s for s in secs if s != float("inf")]
    baseline = ("never re-published (message gone)" if kind == "orphan"
                else f"visibility_timeout {VISIBILITY_TIMEOUT:.0f} s")
    row: dict[str, Any] = {
        "profile": profile, "fault": fault, "samples": len(results),
        "median_s": statistics.median(finite) if finite else float("inf"),
        "max_s": max(secs), "bound_s": bound, "bound": ("ORPHAN+RECONCILE" if kind == "orphan"
                                                         else "LEASE+RECONCILE after last heartbeat"),
        "checked_max_s": max(r[check] for r in results),
        "within_bound": all(r[check] <= bound for r in results),
        "baseline": baseline,
        "ratio": (statistics.median(finite) / VISIBILITY_TIMEOUT) if kind == "lease" and finite else "n/a",
        "detail": {k: [round(r[k], 3) if isinstance(r[k], float) else r[k] for r in results]
                   for k in results[0] if k != "seconds"},
    }
    return row


# -- raw Celery baseline -----------------------------------------------------------------------------------


def raw_starts(raw: RawCeleryWorker, batch: str) -> list[tuple[float, int]]:
    return [tuple(json.loads(v)) for v in raw.counter.lrange(f"{raw.key_prefix}starts:{batch}", 0, -1)]


def raw_baseline(servers: Servers, window: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    wd = workdir("raw-recovery")
    # 1. message deleted from the queue while no worker consumes, then the worker starts
    with RawCeleryWorker(servers.redis_url, servers.redis_url, workdir=wd) as raw:
        raw.proc.terminate()
        raw.raw.noop.apply_async(args=["lost"])
        client = redis.Redis.from_url(servers.redis_url)
        keys = list(client.scan_iter(match=f"{raw.key_prefix}{raw.queue}*"))
        deleted = client.delete(*keys) if keys else 0
        client.close()
        raw.start_worker()
        ran = poll(lambda: raw.done("lost"), window, interval=0.2)
        rows.append({"fault": "queue deleted (worker stopped, restarted)", "keys_deleted": deleted,
                     "outcome": f"ran after {ran}" if ran else f"never ran within {window:.0f} s",
                     "configured": "no re-publish mechanism"})
    # 2. worker group SIGKILLed mid-task, a fresh worker started
    with RawCeleryWorker(servers.redis_url, servers.redis_url, workdir=wd) as raw:
        raw.raw.sleep.apply_async(args=["group", 3600])
        if not poll(lambda: raw_starts(raw, "group"), 30):
            raise TimeoutError("raw sleep task did not start")
        t_kill = time.time()
        raw.proc.kill()
        raw.start_worker()
        again = poll(lambda: len(raw_starts(raw, "group")) > 1, window, interval=0.2)
        unacked = raw.counter.hlen(f"{raw.key_prefix}unacked")
        raw.proc.kill()
        rows.append({"fault": "worker group SIGKILLed (fresh worker started)",
                     "outcome": (f"redelivered {raw_starts(raw, 'group')[1][0] - t_kill:.2f} s after the kill"
                                 if again else f"not redelivered within {window:.0f} s; "
                                               f"{unacked} message(s) left in the unacked hash"),
                     "configured": f"visibility_timeout {VISIBILITY_TIMEOUT:.0f} s"})
    # 3. pool child SIGKILLed mid-task (reject_on_worker_lost requeues it)
    with RawCeleryWorker(servers.redis_url, servers.redis_url, workdir=wd) as raw:
        raw.raw.sleep.apply_async(args=["child", 3600])
        started = poll(lambda: raw_starts(raw, "child"), 30)
        if not started:
            raise TimeoutError("raw sleep task did not start")
        t_kill = time.time()
        os.kill(int(started[0][1]), signal.SIGKILL)
        again = poll(lambda: len(raw_starts(raw, "child")) > 1, window, interval=0.05)
        raw.proc.kill()
        rows.append({"fault": "pool child SIGKILLed (worker main survives)",
                     "outcome": (f"redelivered {raw_starts(raw, 'child')[1][0] - t_kill:.2f} s after the kill"
                                 if again else f"not redelivered within {window:.0f} s"),
                     "configured": "reject_on_worker_lost: requeued at once"})
    return rows


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--profile", choices=["both", "default", "fast"], default="both")
    p.add_argument("--samples", type=int, default=5, help="samples per fault, fast profile")
    p.add_argument("--default-samples", type=int, default=1,
                   help="samples per fault, default profile (each takes up to ~40 s)")
    p.add_argument("--window", type=float, default=60.0,
                   help="seconds to watch for a raw Celery redelivery / a Tideflow claim after a FLUSH")
    p.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    p.add_argument("--skip-baseline", action="store_true")
    args = p.parse_args()

    t_start = time.monotonic()
    servers = Servers.start()
    rows: list[dict[str, Any]] = []
    base_rows: list[dict[str, Any]] = []
    try:
        if not args.skip_baseline:
            base_rows = raw_baseline(servers, args.window)
        for profile in (["fast", "default"] if args.profile == "both" else [args.profile]):
            rows += run_profile(servers, args.database, profile,
                                args.samples if profile == "fast" else args.default_samples, args.window)
    finally:
        servers.close()
    baseline_by_fault = {r["fault"]: r["outcome"] for r in base_rows}
    for r in rows:
        if r["fault"] in baseline_by_fault:
            r["baseline_measured"] = baseline_by_fault[r["fault"]]
    notes = list(servers.notes) + [
        "median_s/max_s: lost message = first publish -> claim; SIGKILL = kill -> next attempt's claim "
        "(events table); checked_max_s: the quantity README's bound is about (next note), worst sample",
        "within_bound (README's bounds): lost message: first publish -> re-publish <= ORPHAN+RECONCILE (the claim "
        "follows within a broker round trip, or the restarted worker's start-up); SIGKILL: last heartbeat -> "
        "attempt declared lost <= LEASE+RECONCILE (the retry is claimed right after)",
        f"baseline (raw Celery, acks_late + reject_on_worker_lost, Redis): a lost message is never re-published; "
        f"an unacknowledged message is redelivered after visibility_timeout = {VISIBILITY_TIMEOUT:.0f} s "
        f"(configured, not waited for); ratio = Tideflow median / visibility_timeout",
    ] + [f"raw Celery, {r['fault']}: {r['outcome']} ({r['configured']})" for r in base_rows]
    report(f"Recovery ({args.database}, Redis broker, beat on)",
           ["profile", "fault", "samples", "median_s", "max_s", "checked_max_s", "bound_s", "within_bound", "baseline",
            "baseline_measured", "ratio"],
           rows, notes=notes, args=args, extra={"baseline": base_rows, "wall_seconds": time.monotonic() - t_start})


if __name__ == "__main__":
    main()
