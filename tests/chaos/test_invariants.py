"""The checker itself can fail: hand-made histories that break each invariant are reported, and a clean
one is not. Pure (no servers)."""

from __future__ import annotations

import contextlib
import math
import threading
from typing import Any

import pytest

from app.executors.base import ExecutionContext
from app.executors.logbuffer import LogBuffer
from tests.chaos import codeflows
from tests.chaos import invariants as inv

TIMING = inv.Timing(lease=3.0, heartbeat=0.5, stop_grace=2.0, slack=0.5)  # stop bound 6 s


def ev(i: int, task: int | None, frm: str | None, to: str, attempt: int | None = None, at: float = 0.0,
       run: int = 1) -> inv.EventRow:
    return inv.EventRow(i, run, to, frm, task, attempt, at)


def start(task_run: int, attempt: int, pid: int, t: float, task: str = "a", run: int = 1) -> dict:
    return {"ev": "start", "run": run, "task_run": task_run, "task": task, "attempt": attempt, "pid": pid, "t": t}


def end(task_run: int, attempt: int, pid: int, t: float, status: str = "ok", task: str = "a", run: int = 1) -> dict:
    return {**start(task_run, attempt, pid, t, task, run), "ev": "end", "status": status}


def clean() -> inv.Snapshot:
    """Run 1, task 10 ``a``: attempt 1 lost (worker killed at t=2), attempt 2 succeeded."""
    return inv.Snapshot(
        runs=[inv.RunRow(1, "wf", "succeeded", key="k1")],
        tasks=[inv.TaskRow(10, 1, "a", "succeeded", 2)],
        attempts=[inv.AttemptRow(10, 1, "lost", 100, 1.0, 5.0), inv.AttemptRow(10, 2, "succeeded", 101, 5.5, 7.0)],
        events=[ev(1, None, None, "running"), ev(2, 10, "pending", "submitted", 1, 0.5),
                ev(3, 10, "submitted", "running", 1, 1.0), ev(4, 10, "running", "submitted", 2, 5.0),
                ev(5, 10, "submitted", "running", 2, 5.5), ev(6, 10, "running", "succeeded", 2, 7.0),
                ev(7, None, "running", "succeeded", None, 7.1)],
        ledger=[start(10, 1, 100, 1.0), start(10, 2, 101, 5.5), end(10, 2, 101, 6.9)],
        started=[inv.StartedRun("k1", 1)],
        first_dead={100: 2.1},
    )


def kinds(snap: inv.Snapshot) -> list[str]:
    return sorted(v.kind for v in inv.check_all(snap, TIMING).violations)


def test_a_clean_history_has_no_violations() -> None:
    checked = inv.check_all(clean(), TIMING)
    assert checked.violations == []
    assert [x.status for x in checked.executions] == ["killed", "ok"]  # attempt 1 ended when its pid died


def test_two_successful_completions_are_reported() -> None:
    snap = clean()
    snap.attempts[0] = inv.AttemptRow(10, 1, "succeeded", 100, 1.0, 5.0)
    snap.events.append(ev(8, 10, "running", "succeeded", 2, 7.2))
    found = kinds(snap)
    assert "double-completion" in found
    assert "history" in found  # the second "running -> succeeded" does not follow "succeeded"


def test_overlap_is_legal_only_for_a_lost_attempt_that_stops_in_time() -> None:
    snap = clean()
    # attempt 1 still running when attempt 2 started, and ended within the stop bound of losing its lease
    snap.ledger.append(end(10, 1, 100, 6.0, "stopped"))
    checked = inv.check_all(snap, TIMING)
    assert checked.violations == [] and checked.legal_overlaps == 1
    # ... but a lost attempt whose body runs on for long after losing its lease is an illegal overlap
    snap.ledger[-1] = end(10, 1, 100, 5.0 + TIMING.stop_bound + 1)
    assert kinds(snap) == ["overlap"]
    # ... and an attempt that was not taken away (failed normally) may never overlap its successor
    snap.attempts[0] = inv.AttemptRow(10, 1, "failed", 100, 1.0, 5.0)
    snap.ledger[-1] = end(10, 1, 100, 6.0, "error")
    assert kinds(snap) == ["overlap"]


def test_a_pause_extends_the_stop_bound_from_when_the_process_woke_up() -> None:
    snap = clean()
    snap.ledger.append(end(10, 1, 100, 12.0, "stopped"))  # lease lost at 5, body ended at 12 (> 5 + 6)
    assert kinds(snap) == ["overlap"]
    snap.resumed = {100: 9.0}  # SIGCONT at 9: stopped 3 s after waking up
    assert kinds(snap) == []


def test_the_same_attempt_running_twice_is_reported() -> None:
    snap = clean()
    snap.ledger += [start(10, 2, 102, 6.0), end(10, 2, 102, 6.5)]
    assert "double-execution" in kinds(snap)


def test_broken_history_chains_and_final_states_are_reported() -> None:
    snap = clean()
    snap.events[4] = ev(5, 10, "pending", "running", 2, 5.5)  # does not follow "submitted"
    assert kinds(snap) == ["history"]
    snap = clean()
    snap.tasks[0] = inv.TaskRow(10, 1, "a", "failed", 2)  # row disagrees with its history (and run)
    assert "history" in kinds(snap)
    snap = clean()
    snap.events.append(ev(8, 10, "succeeded", "running", 2, 8.0))  # succeeded is final
    snap.tasks[0] = inv.TaskRow(10, 1, "a", "running", 2)
    found = kinds(snap)
    assert "history" in found and "stuck" in found


def test_a_run_whose_events_end_in_another_state_is_reported() -> None:
    snap = clean()
    snap.events.pop()  # the run's "-> succeeded" event is missing
    assert kinds(snap) == ["history"]


def test_ledger_entries_the_database_does_not_know_are_reported() -> None:
    snap = clean()
    snap.ledger += [start(10, 3, 103, 8.0), end(10, 3, 103, 8.1)]  # attempt 3 has no attempt row
    snap.ledger += [start(99, 1, 104, 8.0, task="ghost"), end(99, 1, 104, 8.1, task="ghost")]  # no such task
    violations = [v for v in inv.check_all(snap, TIMING).violations if v.kind == "ledger"]
    assert {v.task_run_id for v in violations} == {10, 99}


def test_success_without_a_completed_execution_and_missing_runs_are_lost() -> None:
    snap = clean()
    snap.ledger = [line for line in snap.ledger if line["attempt"] != 2]
    assert kinds(snap) == ["lost"]
    snap = clean()
    snap.started.append(inv.StartedRun("k2", 2))  # start_run returned 2, but there is no run 2
    assert kinds(snap) == ["lost"]


def test_live_tasks_running_attempts_and_unended_bodies_are_reported() -> None:
    snap = clean()
    snap.runs[0] = inv.RunRow(1, "wf", "running")
    snap.events.pop()
    snap.tasks.append(inv.TaskRow(11, 1, "b", "submitted", 1))
    snap.events.append(ev(9, 11, "pending", "submitted", 1, 7.0))
    snap.attempts.append(inv.AttemptRow(11, 1, "running", 105, 7.5))
    snap.ledger.append(start(11, 1, 105, 7.5, task="b"))
    found = kinds(snap)
    assert found.count("stuck") == 2 and "terminal" in found and "unended" in found


def test_recovery_time_is_measured_from_the_injection() -> None:
    tasks = [inv.TaskRow(10, 1, "a", "succeeded", 2), inv.TaskRow(11, 1, "b", "submitted", 1)]
    events = [ev(1, 10, "pending", "submitted", 1, 1.0), ev(2, 10, "submitted", "running", 1, 2.0),
              ev(3, 10, "running", "succeeded", 1, 9.0), ev(4, 11, "pending", "submitted", 1, 1.0)]
    # fault at 3: task 10 (running) moves at 9 -> 6 s; task 11 never moves again -> inf
    assert inv.recovery_times([(3.0, 3.0, False)], tasks[:1], events[:3]) == [6.0]
    assert inv.recovery_times([(3.0, 3.0, False)], tasks, events) == [math.inf]
    assert inv.recovery_times([(0.5, 0.5, False)], tasks[:1], events[:3]) == [0.0]  # nothing was live yet
    # during a lock nothing commits: an event stamped during it counts at the lock's end
    assert inv.recovery_times([(3.0, 12.0, True)], tasks[:1], events[:3]) == [9.0]
    assert inv.recovery_times([(3.0, 12.0, False)], tasks[:1], events[:3]) == [6.0]
    assert inv.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0 and inv.percentile([], 99) is None


def shell_history(child_deaths: dict[int, float], supervisor_died: float = 2.0) -> inv.Snapshot:
    """Task 10 is a shell task: attempt 1's pool process (pid 100) died at ``supervisor_died``; its shell (pid
    200) was killed at 2.05 and had forked children 201 and 202 (dying at ``child_deaths``); attempt 2 (pool
    process 101, shell 300) started at 5.5."""
    snap = clean()
    snap.tasks[0] = inv.TaskRow(10, 1, "a", "succeeded", 2, type="shell")
    snap.ledger = [start(10, 1, 200, 1.0), proc(10, 1, 200, 201, 1.01), proc(10, 1, 200, 202, 1.02),
                   start(10, 2, 300, 5.5), end(10, 2, 300, 6.9)]
    snap.first_dead = {100: supervisor_died, 200: 2.05, **child_deaths}
    return snap


def proc(task_run: int, attempt: int, pid: int, child: int, t: float) -> dict:
    return {**start(task_run, attempt, pid, t), "ev": "proc", "child": child}


def test_a_shell_body_ends_when_its_last_process_does() -> None:
    snap = shell_history({201: 2.1, 202: 2.2})
    checked = inv.check_all(snap, TIMING)
    assert checked.violations == []
    first = checked.executions[0]
    assert (first.status, first.end, first.children) == ("killed", 2.2, (201, 202))


def test_a_shell_body_child_still_alive_keeps_the_execution_open() -> None:
    snap = shell_history({201: 2.1})  # 202 never seen dead
    assert inv.executions(snap.ledger, snap.first_dead)[0].status == "open"
    assert kinds(snap) == ["orphan", "overlap", "unended"]  # it runs on beside attempt 2, too


def test_a_shell_body_that_outlives_its_supervisor_is_an_orphan() -> None:
    # the escaped child ran on for 2.5 s after the pool process died: before the attempt was even declared lost
    # (at 5.0), so no overlap, but an orphan all the same (this is what happened before the reaper)
    snap = shell_history({201: 2.1, 202: 2.0 + TIMING.reap + 1.5})
    assert kinds(snap) == ["orphan"]
    # ... also when it ran beside the retry only within the stop bound (legal for a body stopping after it lost
    # its lease, not for one whose supervisor is dead)
    snap = shell_history({201: 2.1, 202: 6.0})
    checked = inv.check_all(snap, TIMING)
    assert [v.kind for v in checked.violations] == ["orphan"] and checked.legal_overlaps == 1
    # ... and beyond the stop bound it is an overlap too
    snap = shell_history({201: 2.1, 202: 5.0 + TIMING.stop_bound + 1})
    assert kinds(snap) == ["orphan", "overlap"]


def test_a_python_body_is_its_supervisor() -> None:
    snap = clean()  # ledger pid == attempt pid: there is nothing that could outlive the pool process
    snap.first_dead[101] = 6.0  # attempt 2's pool process died after its body ended
    assert inv.check_orphans(inv.executions(snap.ledger, snap.first_dead), snap.attempts, snap.first_dead,
                             TIMING) == []


def test_a_run_whose_subworkflow_cannot_start_must_end_failed() -> None:
    runs = [inv.RunRow(1, "chaos-nostart", "failed"), inv.RunRow(2, "chaos-nostart", "running")]
    ok = {"start": "succeeded", "nochild": "failed", "after": "skipped", "side": "succeeded"}
    tasks = [inv.TaskRow(10 + i, 1, name, state, 1) for i, (name, state) in enumerate(ok.items())]
    tasks += [inv.TaskRow(20 + i, 2, name, state, 1) for i, (name, state) in enumerate(
        {**ok, "nochild": "failed", "after": "pending"}.items())]
    violations = inv.check_cannot_start(runs, tasks)
    assert [(v.kind, v.run_id) for v in violations] == [("cannot-start", 2)]


def test_a_reused_pid_is_not_the_supervisor_that_died_long_before() -> None:
    """A long campaign wraps the pid space: the pool process of attempt 2 (pid 101) may have the pid of a process
    killed minutes earlier. Its death must not be taken for the death of attempt 2's supervisor (the 1000-run
    campaign reported 25 such false orphans), while a death after the body started still counts."""
    snap = shell_history({201: 2.1, 202: 2.2})
    snap.first_dead = {**snap.first_dead, 101: [0.5]}  # an earlier process with pid 101 died at 0.5
    assert kinds(snap) == []
    snap.first_dead = {**snap.first_dead, 101: [0.5, 6.9 - TIMING.reap - 0.5]}  # attempt 2's own pool process
    assert kinds(snap) == ["orphan"]  # died while its shell (pid 300) ran on until 6.9


# -- code runs (tests.chaos.codeflows) ------------------------------------------------------------------------


def code_run(result: object = None, n: int = 4) -> inv.Snapshot:
    """Code run 2 (``chaos-code``), its steps born with an event from nothing: an activity (20, attempt 1 lost,
    attempt 2 succeeded), a timer (21, due at 5, fired at 5.3), a signal kept before the wait (22, born
    delivered), a patch marker (23), a signal note on the run, and a code child run 3 (subworkflow step 24) with one
    activity (30). Neither the timer, the signal, the marker nor the child step has an attempt."""
    want = inv.expected_code_result(n)
    salt = want["approval"]["salt"]
    runs = [inv.RunRow(2, inv.CODE, "succeeded", key="k-code", kind="code", params={"n": n},
                       result=want if result is None else result),
            inv.RunRow(3, inv.CODE_CHILD, "succeeded", 24, kind="code", params={"n": n, "salt": salt},
                       result=want["child"])]
    tasks = [inv.TaskRow(20, 2, "scale#0", "succeeded", 2, "activity", seq=0),
             inv.TaskRow(21, 2, "sleep#1", "succeeded", 0, "timer", seq=1, due_at=5.0),
             inv.TaskRow(22, 2, "approve#2", "succeeded", 0, "signal", seq=2),
             inv.TaskRow(23, 2, "patch:chaos-v1#3", "succeeded", 0, "marker", seq=3),
             inv.TaskRow(24, 2, "chaos-code-child#4", "succeeded", 0, "subworkflow", 3, seq=4),
             inv.TaskRow(30, 3, "scale#0", "succeeded", 1, "activity", seq=0)]
    attempts = [inv.AttemptRow(20, 1, "lost", 200, 1.0, 3.0), inv.AttemptRow(20, 2, "succeeded", 201, 3.2, 3.5),
                inv.AttemptRow(30, 1, "succeeded", 202, 6.1, 6.3)]
    events = [ev(1, None, None, "running", run=2),
              ev(2, None, "running", "running", at=0.1, run=2),  # signal received, kept until the wait
              ev(3, 20, None, "pending", 0, 0.2, run=2), ev(4, 20, "pending", "submitted", 1, 0.2, run=2),
              ev(5, 20, "submitted", "running", 1, 1.0, run=2), ev(6, 20, "running", "submitted", 2, 3.0, run=2),
              ev(7, 20, "submitted", "running", 2, 3.2, run=2), ev(8, 20, "running", "succeeded", 2, 3.5, run=2),
              ev(9, 21, None, "running", 0, 3.6, run=2), ev(10, 21, "running", "succeeded", None, 5.3, run=2),
              ev(11, 22, None, "succeeded", 0, 5.4, run=2), ev(12, 23, None, "succeeded", 0, 5.4, run=2),
              ev(13, 24, None, "pending", 0, 5.4, run=2), ev(14, 24, "pending", "running", None, 5.5, run=2),
              ev(15, None, None, "running", at=5.5, run=3), ev(16, 30, None, "pending", 0, 5.6, run=3),
              ev(17, 30, "pending", "submitted", 1, 5.6, run=3), ev(18, 30, "submitted", "running", 1, 6.1, run=3),
              ev(19, 30, "running", "succeeded", 1, 6.3, run=3), ev(20, None, "running", "succeeded", at=6.4, run=3),
              ev(21, 24, "running", "succeeded", None, 6.5, run=2), ev(22, None, "running", "succeeded", at=6.6, run=2)]
    ledger = [start(20, 1, 200, 1.0, "scale#0", 2), start(20, 2, 201, 3.2, "scale#0", 2),
              end(20, 2, 201, 3.4, "ok", "scale#0", 2), start(30, 1, 202, 6.1, "scale#0", 3),
              end(30, 1, 202, 6.2, "ok", "scale#0", 3)]
    return inv.Snapshot(runs, tasks, attempts, events, ledger, [inv.StartedRun("k-code", 2)], {200: 2.0})


def test_a_clean_code_run_has_no_violations() -> None:
    """Timers, signals, markers and child steps have no attempts and are born with an event: no invariant
    misfires on them; the run's result is the one computed without faults."""
    checked = inv.check_all(code_run(), TIMING)
    assert checked.violations == []
    assert inv.recovery_times([(4.0, 4.1, False)], code_run().tasks, code_run().events) == [0.0]  # a timer waits


def test_a_code_run_with_another_result_is_reported() -> None:
    wrong = {**inv.expected_code_result(4), "total": 0}
    found = inv.check_all(code_run(wrong), TIMING).violations
    assert [(v.kind, v.run_id) for v in found] == [("code-result", 2)]
    snap = code_run()
    snap.runs[1] = inv.RunRow(3, inv.CODE_CHILD, "succeeded", 24, kind="code", params={"n": 4, "salt": 5}, result=1)
    assert kinds(snap) == ["code-result"]


def test_a_code_run_that_did_not_succeed_is_reported() -> None:
    snap = code_run()
    snap.runs[0] = inv.RunRow(2, inv.CODE, "blocked", kind="code", params={"n": 4})
    snap.events.append(ev(23, None, "succeeded", "blocked", at=7.0, run=2))
    found = kinds(snap)
    assert "code-result" in found and "terminal" in found


def _as_worker(fn: Any, args: Any, ctx: ExecutionContext) -> Any:
    """Call an activity as the worker's executor does: ``ctx`` a local of the calling frame."""
    return fn(*args)


class _Direct:
    """A context that runs ``chaos-code`` straight through: activities called in this process (with the worker's
    execution context on the calling frame, where they look for it), the sleep skipped, the signal the campaign
    sends, the child run inline."""

    def __init__(self, n: int, attempts: int = 2):
        self.n, self.attempts = n, attempts

    def start_activity(self, fn: Any, *args: Any) -> Any:
        for attempt in range(1, self.attempts + 1):  # bump fails its first attempt: retried
            ctx = ExecutionContext(1, 1, "x#0", attempt, "chaos-code", 5, {}, {}, threading.Event(), LogBuffer(1024))
            with contextlib.suppress(RuntimeError):
                return _as_worker(fn, args, ctx)
        raise AssertionError("no attempt succeeded")

    activity = start_activity

    def gather(self, *values: Any) -> list[Any]:
        return list(values)

    def sleep(self, seconds: float) -> None:
        assert seconds > 0

    def patched(self, patch_id: str) -> bool:
        return True

    def set_state(self, key: str, value: Any) -> None:
        pass

    def wait_signal(self, name: str) -> Any:
        return codeflows.signal_data(self.n)

    def child(self, name: str, **params: Any) -> Any:
        assert name == codeflows.CODE_CHILD
        return codeflows.chaos_code_child(self, **params)


def test_the_expected_code_result_is_what_the_workflow_returns(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checker's own formula agrees with the workflow run straight through, without faults."""
    monkeypatch.setattr(codeflows, "work", lambda seconds: None)
    for n in (0, 4, 9, 123):
        assert codeflows.chaos_code(_Direct(n), n=n) == inv.expected_code_result(n)


def test_a_timer_that_fired_early_is_reported() -> None:
    snap = code_run()
    snap.tasks[1] = inv.TaskRow(21, 2, "sleep#1", "succeeded", 0, "timer", seq=1, due_at=5.5)
    assert kinds(snap) == ["timer"]
    assert inv.timer_lateness(code_run().tasks, code_run().events) == [pytest.approx(0.3)]


def test_an_attempt_on_a_timer_or_a_code_step_without_its_birth_event_is_reported() -> None:
    snap = code_run()
    snap.attempts.append(inv.AttemptRow(21, 1, "succeeded", 203, 4.0, 4.1))
    assert "double-completion" in kinds(snap)
    snap = code_run()
    snap.events = [e for e in snap.events if e.id != 9]  # the timer's row appeared without an event
    assert "history" in kinds(snap)


def test_a_succeeded_code_run_may_hold_cancelled_steps_but_no_live_ones() -> None:
    """A code run that returns without waiting for a step it started stops it (cancelled): not a history error;
    a step still running is."""
    snap = code_run()
    snap.tasks.append(inv.TaskRow(25, 2, "scale#5", "cancelled", 0, "activity", seq=5))
    snap.events.append(ev(23, 25, None, "cancelled", 0, 6.6, run=2))
    assert kinds(snap) == []
    snap.tasks[-1] = inv.TaskRow(25, 2, "scale#5", "running", 0, "activity", seq=5)
    snap.events[-1] = ev(23, 25, None, "running", 0, 6.6, run=2)
    assert "history" in kinds(snap) and "stuck" in kinds(snap)


def test_a_pool_whose_slots_were_exceeded_is_reported() -> None:
    tasks = [inv.TaskRow(i, 1, f"p{i}", "succeeded", 1, pool="db") for i in (1, 2, 3)]
    # [1, 3) and [3, 5) touch (one ends as the other starts) and [2, 4) overlaps both: 2 at once at most
    attempts = [inv.AttemptRow(1, 1, "succeeded", 1, 1.0, 3.0), inv.AttemptRow(2, 1, "succeeded", 2, 2.0, 4.0),
                inv.AttemptRow(3, 1, "succeeded", 3, 3.0, 5.0)]
    assert inv.pool_peaks(tasks, attempts) == {"db": 2}
    assert inv.check_limits(tasks, attempts, {"db": 2}) == []
    (violation,) = inv.check_limits(tasks, attempts, {"db": 1})
    assert violation.kind == "limit" and "2 attempts open at once, 1 slots" in violation.detail
    # an attempt never ended (its worker died and nobody declared it lost) holds its slot to the end
    attempts.append(inv.AttemptRow(1, 2, "running", 4, 4.5, None))
    assert inv.pool_peaks(tasks, attempts) == {"db": 2}


# -- schedules: a fire time starts one run, none is missed ----------------------------------------------------

EVERY2 = inv.ScheduleWindow("s", "*/2 * * * * *", "UTC", since=1_000.5, until=1_008.0)  # fire times 1002..1008


def scheduled(ids_times: list[tuple[int, float]]) -> tuple[list[inv.RunRow], list[inv.FireRow]]:
    runs = [inv.RunRow(i, "wf", "succeeded", schedule_name="s", schedule_time=t) for i, t in ids_times]
    return runs, [inv.FireRow("s", t, "started", i) for i, t in ids_times]


def test_a_clean_schedule_history_has_no_violations() -> None:
    assert inv.expected_fire_times(EVERY2) == [1002.0, 1004.0, 1006.0, 1008.0]
    runs, fires = scheduled([(1, 1002.0), (2, 1004.0), (3, 1006.0)])
    fires.append(inv.FireRow("s", 1008.0, "skipped", None, "missed by 2h, outside catchup_window (1h)"))
    assert inv.check_schedule_duplicates(runs, fires) == []
    assert inv.check_schedule_missed(fires, [EVERY2]) == []
    snap = clean()
    snap.runs += runs
    snap.fires, snap.schedules = fires, [EVERY2]
    assert [v for v in inv.check_all(snap, TIMING).violations if v.kind.startswith("schedule")] == []


def test_two_runs_for_one_fire_time_are_reported() -> None:
    runs, fires = scheduled([(1, 1002.0), (2, 1004.0)])
    runs.append(inv.RunRow(3, "wf", "succeeded", schedule_name="s", schedule_time=1004.0))  # no fire row of its own
    found = inv.check_schedule_duplicates(runs, fires)
    assert {v.kind for v in found} == {"schedule-duplicate"}
    assert any("2 runs [2, 3]" in v.detail for v in found) and any(v.run_id == 3 and "no started fire row" in v.detail
                                                                    for v in found)
    # two fire rows for one time (the unique constraint gone), and a started row whose run is another time's
    _, fires = scheduled([(1, 1002.0), (2, 1004.0)])
    fires += [inv.FireRow("s", 1002.0, "skipped", None, "why"), inv.FireRow("s", 1006.0, "started", 1)]
    details = [v.detail for v in inv.check_schedule_duplicates(runs[:2], fires)]
    assert any("2 fire rows" in d for d in details) and any("run 1 is another fire time" in d for d in details)


def test_a_missed_fire_time_is_reported() -> None:
    _, fires = scheduled([(1, 1002.0), (3, 1006.0), (4, 1008.0)])  # 1004 has no row
    (v,) = inv.check_schedule_missed(fires, [EVERY2])
    assert v.kind == "schedule-missed" and "1 of 4 fire times" in v.detail and "1004.0" in v.detail
    # the window's last fire times never dealt with (beat never caught up after an outage)
    _, fires = scheduled([(1, 1002.0), (2, 1004.0)])
    (v,) = inv.check_schedule_missed(fires, [EVERY2])
    assert "2 of 4" in v.detail and "1006.0" in v.detail
    # a gap between recorded fire times outside the window counts too
    _, fires = scheduled([(1, 1002.0), (2, 1004.0), (3, 1006.0), (4, 1008.0), (6, 1012.0)])
    (v,) = inv.check_schedule_missed(fires, [EVERY2])
    assert "1010.0" in v.detail


def test_a_fire_time_left_buffered_or_skipped_without_why_is_reported() -> None:
    _, fires = scheduled([(1, 1002.0), (2, 1004.0)])
    fires += [inv.FireRow("s", 1006.0, "buffered", None, "overlap"), inv.FireRow("s", 1008.0, "skipped", None, "")]
    details = sorted(v.detail for v in inv.check_schedule_missed(fires, [EVERY2]))
    assert details == ["schedule s fire time 1006.0 left buffered",
                       "schedule s fire time 1008.0 skipped without a reason"]


def test_a_scheduled_run_left_running_is_reported() -> None:
    runs = [inv.RunRow(1, "wf", "running", schedule_name="s", schedule_time=1002.0)]
    (v,) = inv.check_terminal(runs)
    assert v.kind == "terminal" and v.run_id == 1
