"""The campaign's invariants: pure functions over a :class:`Snapshot` of the database (runs, tasks, attempts,
events) and the side-effect ledger, each returning the :class:`Violation` s it found. No I/O here, so every
check can be fed a hand-made history (``tests/chaos/test_invariants.py``).

Times are POSIX seconds (``time.time()``; the database's timestamps converted).
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.states import RUN_TRANSITIONS, TASK_TRANSITIONS, RunState, TaskState

RUN_TERMINAL = {"succeeded", "failed", "cancelled"}
#: pid -> when it was first seen dead: one time, or one per process that had the pid
Deaths = dict[int, float] | dict[int, list[float]]
TASK_LIVE = {"pending", "submitted", "running"}
#: attempt outcomes written when an attempt is taken away from a worker that may still be running it
STOPPED_OUTCOMES = {"lost", "cancelled"}
#: task kinds whose body a worker executes (attempts, ledger lines); the others (a subworkflow's child run, a code
#: run's timer, signal wait and marker) have no attempts and never run a body
EXECUTED_KINDS = {"python", "shell", "activity"}
#: the chaos code workflows (``tests.chaos.codeflows``)
CODE = "chaos-code"
CODE_CHILD = "chaos-code-child"


@dataclass(frozen=True)
class RunRow:
    id: int
    workflow: str
    state: str
    parent_task_run_id: int | None = None
    key: str | None = None
    created_at: float = 0.0
    finished_at: float | None = None
    kind: str = "dag"  # dag | code
    params: dict[str, Any] | None = None
    result: Any = None  # a code run's return value
    schedule_name: str | None = None  # schedules: the schedule that started it and its fire time
    schedule_time: float | None = None


@dataclass(frozen=True)
class TaskRow:
    id: int
    run_id: int
    name: str
    state: str
    attempt: int
    type: str = "python"
    child_run_id: int | None = None
    publish_count: int = 0
    seq: int | None = None  # a code run's step: its position (a step row is born with an event from nothing)
    due_at: float | None = None  # a timer's (or a signal wait's timeout)
    pool: str | None = None  # limits: the pool whose slot its attempts take


@dataclass(frozen=True)
class AttemptRow:
    task_run_id: int
    attempt: int
    outcome: str
    pid: int | None = None
    started_at: float = 0.0
    finished_at: float | None = None


@dataclass(frozen=True)
class EventRow:
    id: int
    run_id: int
    to_state: str
    from_state: str | None = None
    task_run_id: int | None = None
    attempt: int | None = None
    at: float = 0.0
    actor: str = ""
    reason: str = ""


@dataclass(frozen=True)
class FireRow:
    """A ``schedule_fires`` row: one fire time of one schedule and what came of it."""

    schedule_name: str
    fire_time: float
    outcome: str  # started | skipped | buffered | pending
    run_id: int | None = None
    reason: str = ""


@dataclass(frozen=True)
class ScheduleWindow:
    """A schedule the campaign declared, and the window in which every one of its fire times must have a fire row:
    the cron's times after ``since`` (its registration) up to ``until`` (the end of the fault window; the campaign
    waits for beat to catch up to it before pausing the schedule)."""

    name: str
    cron: str
    timezone: str
    since: float
    until: float


@dataclass(frozen=True)
class StartedRun:
    """One ``start_run`` call of the campaign: ``run_id`` is None if it never returned an id (and no run with
    its ``key`` was found: the start failed, visibly, for the caller)."""

    key: str
    run_id: int | None
    called_at: float = 0.0
    returned_at: float = 0.0
    errors: int = 0


@dataclass(frozen=True)
class Execution:
    """One body execution, from the ledger. ``end`` comes from its ``end`` line, else from the pid watch (the
    first time its process was seen dead: status ``killed``); None if neither (status ``open``). A body that
    forked ``children`` (its ``proc`` lines) ends when the last of its processes has: a child still alive makes
    it ``open``."""

    task_run: int
    attempt: int
    pid: int
    run: int
    task: str
    start: float
    end: float | None
    status: str  # ok | error | stopped | killed | open
    children: tuple[int, ...] = ()


@dataclass(frozen=True)
class Timing:
    """The settings the stop bound is computed from, plus ``slack`` for sampling granularity. ``reap``: how long
    a body running in processes of its own (shell) may outlive the process that supervised it; its reaper
    kills it on the spot (SIGTERM: the chaos bodies exit at once, so the reaper's grace never comes into play),
    and this covers the signals' delivery and the pid watch's sampling (every 0.1 s)."""

    lease: float
    heartbeat: float
    stop_grace: float
    slack: float = 0.5
    reap: float = 1.0

    @property
    def stop_bound(self) -> float:
        """How long after losing its lease (or waking up) a body may still run."""
        return self.lease + self.heartbeat + self.stop_grace + self.slack


@dataclass(frozen=True)
class Violation:
    kind: str
    detail: str
    run_id: int | None = None
    task_run_id: int | None = None

    def __str__(self) -> str:
        where = f"run {self.run_id}" if self.run_id is not None else ""
        if self.task_run_id is not None:
            where += f"{' ' if where else ''}task run {self.task_run_id}"
        return f"[{self.kind}] {where}: {self.detail}" if where else f"[{self.kind}] {self.detail}"


@dataclass
class Snapshot:
    runs: list[RunRow]
    tasks: list[TaskRow]
    attempts: list[AttemptRow]
    events: list[EventRow]
    ledger: list[dict[str, Any]]
    started: list[StartedRun] = field(default_factory=list)
    #: pid -> first seen dead (a list: every process that had the pid, as pids are reused in a long campaign)
    first_dead: Deaths = field(default_factory=dict)
    resumed: dict[int, float] = field(default_factory=dict)  # pid -> last SIGCONT after a pause
    pools: dict[str, int] = field(default_factory=dict)  # limits: each pool's slots
    fires: list[FireRow] = field(default_factory=list)  # schedules: the schedule_fires rows
    schedules: list[ScheduleWindow] = field(default_factory=list)


# -- ledger -> executions -------------------------------------------------------------------------------


def died_after(first_dead: Deaths, pid: int, t: float) -> float | None:
    """When the process with ``pid`` that was alive at ``t`` was first seen dead: the first death recorded at or
    after ``t`` (an earlier one was another process that had the same pid), or None."""
    seen = first_dead.get(pid)
    if seen is None:
        return None
    times = seen if isinstance(seen, list) else [seen]
    return next((d for d in sorted(times) if d >= t - 0.2), None)


def executions(ledger: Iterable[dict[str, Any]], first_dead: Deaths) -> list[Execution]:
    starts: dict[tuple[int, int, int], dict[str, Any]] = {}
    ends: dict[tuple[int, int, int], dict[str, Any]] = {}
    children: dict[tuple[int, int, int], list[int]] = defaultdict(list)
    for line in ledger:
        key = (int(line["task_run"]), int(line["attempt"]), int(line["pid"]))
        if line["ev"] == "proc":
            children[key].append(int(line["child"]))
            continue
        target = starts if line["ev"] == "start" else ends
        target.setdefault(key, line)  # the first one (an end line may be written twice, see workload)
    out = []
    for key, s in starts.items():
        e = ends.get(key)
        start = float(s["t"])
        end: float | None
        if e is not None:
            end, status = float(e["t"]), str(e.get("status", "ok"))
        elif (died := died_after(first_dead, key[2], start)) is not None:
            end, status = died, "killed"
        else:
            end, status = None, "open"
        kids = tuple(children.get(key, ()))
        if end is not None and kids:
            kid_deaths = [died_after(first_dead, k, start) for k in kids]
            if all(d is not None for d in kid_deaths):
                end = max([end, *(d for d in kid_deaths if d is not None)])
            else:
                end, status = None, "open"
        out.append(Execution(key[0], key[1], key[2], int(s["run"]), str(s["task"]), float(s["t"]), end, status,
                             kids))
    return sorted(out, key=lambda x: (x.task_run, x.start))


# -- the checks -------------------------------------------------------------------------------------------


def check_terminal(runs: Sequence[RunRow]) -> list[Violation]:
    return [Violation("terminal", f"{r.workflow} run is still {r.state}", r.id) for r in runs
            if r.state not in RUN_TERMINAL]


def check_stuck(tasks: Sequence[TaskRow], attempts: Sequence[AttemptRow]) -> list[Violation]:
    out = [Violation("stuck", f"task {t.name} left {t.state} (attempt {t.attempt})", t.run_id, t.id)
           for t in tasks if t.state in TASK_LIVE]
    out += [Violation("stuck", f"attempt {a.attempt} left running (pid {a.pid})", None, a.task_run_id)
            for a in attempts if a.outcome == "running"]
    return out


def check_completions(tasks: Sequence[TaskRow], attempts: Sequence[AttemptRow],
                      events: Sequence[EventRow]) -> list[Violation]:
    """A succeeded task has exactly one succeeded attempt (if a worker executes its kind: python, shell, activity)
    and one ``-> succeeded`` event; others none. A timer, a signal wait, a marker and a subworkflow have no
    attempts."""
    ok_attempts: dict[int, int] = defaultdict(int)
    for a in attempts:
        ok_attempts[a.task_run_id] += a.outcome == "succeeded"
    ok_events: dict[int, int] = defaultdict(int)
    for e in events:
        if e.task_run_id is not None and e.to_state == "succeeded":
            ok_events[e.task_run_id] += 1
    out = []
    for t in tasks:
        want = 1 if t.state == "succeeded" else 0
        want_attempts = want if t.type in EXECUTED_KINDS else 0
        if ok_attempts[t.id] != want_attempts or ok_events[t.id] != want:
            out.append(Violation("double-completion", f"task {t.name} is {t.state} with {ok_attempts[t.id]} "
                                 f"succeeded attempt(s) and {ok_events[t.id]} succeeded event(s)", t.run_id, t.id))
    return out


def check_overlaps(execs: Sequence[Execution], attempts: Sequence[AttemptRow], timing: Timing,
                   resumed: dict[int, float] | None = None) -> tuple[int, list[Violation]]:
    """Two executions of one task may overlap only if the earlier attempt was taken away (outcome lost or
    cancelled) and its body ended within ``timing.stop_bound`` of that (or of its process waking up from a
    pause). The same attempt may never run twice. Returns (legal overlaps, violations)."""
    resumed = resumed or {}
    by_attempt = {(a.task_run_id, a.attempt): a for a in attempts}
    by_task: dict[int, list[Execution]] = defaultdict(list)
    for x in execs:
        by_task[x.task_run].append(x)
    legal, out = 0, []
    for task_run, xs in by_task.items():
        xs.sort(key=lambda x: x.start)
        per_attempt: dict[int, int] = defaultdict(int)
        for x in xs:
            per_attempt[x.attempt] += 1
        for attempt, n in per_attempt.items():
            if n > 1:
                out.append(Violation("double-execution", f"attempt {attempt} of {xs[0].task} ran {n} times",
                                     xs[0].run, task_run))
        for i, early in enumerate(xs):
            for late in xs[i + 1:]:
                if early.attempt == late.attempt or (early.end is not None and early.end <= late.start):
                    continue
                a = by_attempt.get((task_run, early.attempt))
                since = max(a.finished_at or math.inf, resumed.get(early.pid, 0.0)) if a else math.inf
                if (a is not None and a.outcome in STOPPED_OUTCOMES and early.end is not None
                        and early.end <= since + timing.stop_bound):
                    legal += 1
                    continue
                end = f"ended {early.end - late.start:+.2f}s after" if early.end is not None else "never ended after"
                out.append(Violation(
                    "overlap", f"{early.task}: attempt {early.attempt} (pid {early.pid}, outcome "
                    f"{a.outcome if a else 'none'}, {early.status}) {end} attempt {late.attempt} started",
                    early.run, task_run))
    return legal, out


def _chain(events: Sequence[EventRow], first: str | None, allowed: dict[Any, frozenset[Any]], final: str,
           what: str, run_id: int, task_run_id: int | None, attempt: int | None,
           notes: bool = False) -> list[Violation]:
    """``notes``: an event that leaves the state as it is (a run's "signal received", "cancel requested") is a
    note, not a transition."""
    out, state, last_attempt = [], first, 0
    for e in events:
        if e.from_state != state:
            out.append(Violation("history", f"{what}: event {e.id} goes {e.from_state} -> {e.to_state}, but the "
                                 f"previous state was {state}", run_id, task_run_id))
        elif notes and e.from_state == e.to_state:
            pass
        elif e.from_state is not None and e.to_state not in {str(s) for s in allowed.get(e.from_state, ())}:
            out.append(Violation("history", f"{what}: event {e.id} {e.from_state} -> {e.to_state} is not an allowed "
                                 "transition", run_id, task_run_id))
        if e.attempt is not None:
            if e.attempt < last_attempt:
                out.append(Violation("history", f"{what}: event {e.id} attempt {e.attempt} after attempt "
                                     f"{last_attempt}", run_id, task_run_id))
            last_attempt = e.attempt
        state = e.to_state
    if state != final:
        out.append(Violation("history", f"{what}: history ends {state} but the row is {final}", run_id, task_run_id))
    if attempt is not None and events and last_attempt != attempt:
        out.append(Violation("history", f"{what}: history ends at attempt {last_attempt} but the row is at "
                             f"attempt {attempt}", run_id, task_run_id))
    return out


def check_history(runs: Sequence[RunRow], tasks: Sequence[TaskRow], events: Sequence[EventRow],
                  attempts: Sequence[AttemptRow] = ()) -> list[Violation]:
    """Each task's and run's events link up (from = previous to), use allowed transitions, never go back in
    attempts and end in the row's state; a run's final state agrees with its tasks and child runs. A DAG task's
    row is born pending without an event; a code run's step row is born with one (from nothing)."""
    task_events: dict[int, list[EventRow]] = defaultdict(list)
    run_events: dict[int, list[EventRow]] = defaultdict(list)
    for e in sorted(events, key=lambda e: e.id):
        (task_events[e.task_run_id] if e.task_run_id is not None else run_events[e.run_id]).append(e)
    task_allowed = {str(k): v for k, v in TASK_TRANSITIONS.items()}
    run_allowed = {str(k): v for k, v in RUN_TRANSITIONS.items()}
    out: list[Violation] = []
    for t in tasks:
        out += _chain(task_events[t.id], None if t.seq is not None else str(TaskState.PENDING), task_allowed,
                      t.state, f"task {t.name}", t.run_id, t.id, t.attempt)
    runs_by_id = {r.id: r for r in runs}
    tasks_by_run: dict[int, list[TaskRow]] = defaultdict(list)
    for t in tasks:
        tasks_by_run[t.run_id].append(t)
    for r in runs:
        out += _chain(run_events[r.id], None, run_allowed, r.state, "run", r.id, None, None, notes=True)
        if r.state == str(RunState.SUCCEEDED):
            # (a code run that returns stops what it started and did not wait for: those steps end cancelled)
            ok_states = {"succeeded", "cancelled"} if r.kind == "code" else {"succeeded"}
            for t in tasks_by_run[r.id]:
                if t.state not in ok_states:
                    out.append(Violation("history", f"run succeeded but task {t.name} is {t.state}", r.id, t.id))
        # (a code run fails when its function raises, which needs no failed step)
        if r.state == str(RunState.FAILED) and r.kind != "code" \
                and not any(t.state == "failed" for t in tasks_by_run[r.id]):
            out.append(Violation("history", "run failed but none of its tasks failed", r.id))
    for t in tasks:
        if t.type != "subworkflow" or t.child_run_id is None:
            continue
        child = runs_by_id.get(t.child_run_id)
        ok = {"succeeded": {"succeeded"}, "failed": {"failed", "cancelled"}, "running": {"running"},
              "cancelled": {"cancelled", "running", "failed", "succeeded"}}.get(t.state, RUN_TERMINAL)
        if child is None or child.state not in ok or child.parent_task_run_id != t.id:
            out.append(Violation("history", f"subworkflow task {t.name} is {t.state} but its child run "
                                 f"{t.child_run_id} is {child.state if child else 'missing'}", t.run_id, t.id))
    state_of = {t.id: t for t in tasks}
    for a in attempts:
        owner = state_of.get(a.task_run_id)
        if a.outcome == "succeeded" and owner is not None and (owner.state != "succeeded"
                                                              or owner.attempt != a.attempt):
            out.append(Violation("history", f"attempt {a.attempt} succeeded but the task is {owner.state} at "
                                 f"attempt {owner.attempt}", owner.run_id, owner.id))
    return out


def check_ledger_in_db(execs: Sequence[Execution], tasks: Sequence[TaskRow],
                       attempts: Sequence[AttemptRow]) -> list[Violation]:
    """Nothing ran that the database does not know: every execution is a claimed attempt of a known task."""
    by_id = {t.id: t for t in tasks}
    claimed = {(a.task_run_id, a.attempt) for a in attempts}
    out = []
    for x in execs:
        t = by_id.get(x.task_run)
        if t is None or t.run_id != x.run or t.name != x.task:
            out.append(Violation("ledger", f"execution of {x.task} (run {x.run}, pid {x.pid}) has no such task row",
                                 x.run, x.task_run))
        elif (x.task_run, x.attempt) not in claimed:
            out.append(Violation("ledger", f"{x.task} attempt {x.attempt} ran (pid {x.pid}) without an attempt row",
                                 x.run, x.task_run))
    return out


def check_lost(started: Sequence[StartedRun], runs: Sequence[RunRow], tasks: Sequence[TaskRow],
               attempts: Sequence[AttemptRow], execs: Sequence[Execution]) -> list[Violation]:
    """A run whose start returned an id exists; a succeeded python task's succeeded attempt really ran to
    the end (its body's ``end ok`` line is in the ledger)."""
    run_ids = {r.id for r in runs}
    out = [Violation("lost", f"start_run returned run {s.run_id} (key {s.key}) but it is not in the database",
                     s.run_id) for s in started if s.run_id is not None and s.run_id not in run_ids]
    completed = {(x.task_run, x.attempt) for x in execs if x.status == "ok"}
    by_id = {t.id: t for t in tasks}
    for a in attempts:
        t = by_id.get(a.task_run_id)
        if a.outcome == "succeeded" and t is not None and t.type in EXECUTED_KINDS \
                and (a.task_run_id, a.attempt) not in completed:
            out.append(Violation("lost", f"{t.name} attempt {a.attempt} succeeded without a completed body "
                                 "execution in the ledger", t.run_id, t.id))
    return out


def check_orphans(execs: Sequence[Execution], attempts: Sequence[AttemptRow], first_dead: Deaths,
                  timing: Timing) -> list[Violation]:
    """A body that runs in processes of its own (a shell command, the ledger's pid is not the attempt's) never
    outlives the process that supervised it (the attempt's pid: the pool process) by more than ``timing.reap``,
    whatever killed that process: otherwise it would run on unsupervised, and beside the attempt's retry."""
    supervisor = {(a.task_run_id, a.attempt): a.pid for a in attempts}
    out = []
    for x in execs:
        sup = supervisor.get((x.task_run, x.attempt))
        died = died_after(first_dead, sup, x.start) if sup is not None and sup != x.pid else None
        if died is None:
            continue
        if x.end is None or x.end > died + timing.reap:
            late = f"{x.end - died:.2f}s" if x.end is not None else "ever"
            out.append(Violation("orphan", f"{x.task} attempt {x.attempt} (pid {x.pid}, children {list(x.children)}) "
                                 f"ran on {late} after its supervisor (pid {sup}) died", x.run, x.task_run))
    return out


def check_cannot_start(runs: Sequence[RunRow], tasks: Sequence[TaskRow]) -> list[Violation]:
    """A run whose subworkflow task cannot start (``chaos-nostart``) ends failed: that task failed, its
    downstream task skipped, its independent branch succeeded (nothing left running or pending)."""
    want = {"nochild": "failed", "after": "skipped", "side": "succeeded", "start": "succeeded"}
    by_run: dict[int, dict[str, str]] = defaultdict(dict)
    for t in tasks:
        by_run[t.run_id][t.name] = t.state
    out = []
    for r in runs:
        if r.workflow != "chaos-nostart":
            continue
        got = by_run.get(r.id, {})
        if r.state != "failed" or got != want:
            out.append(Violation("cannot-start", f"run is {r.state} with tasks {got}, expected failed with {want}",
                                 r.id))
    return out


def expected_code_child(n: int, salt: int) -> int:
    """``chaos-code-child``'s result without faults: ``scale(n + salt, 11)``."""
    return (n + salt) * 11 + 11


def expected_code_result(n: int) -> dict[str, Any]:
    """``chaos-code``'s result without faults, computed here from ``n`` alone (not by running the workflow):
    ``scale(x, k) = x * k + k``, ``bump(x) = x + 100``, the signal the campaign sends (salt ``n % 7 + 1``)."""
    base = 2 * n + 2
    gathered = [base * k + k for k in (3, 5, 7)] + [base + 100]
    salt = n % 7 + 1
    child = expected_code_child(n, salt)
    return {"n": n, "base": base, "gathered": gathered, "patched": True,
            "approval": {"salt": salt, "by": f"chaos-{n}"}, "child": child, "total": sum(gathered) + child + 1}


def check_code_results(runs: Sequence[RunRow]) -> list[Violation]:
    """Every chaos code run (and code child run) succeeded with the result it has without faults: replay after
    crashes, lost and duplicate messages, retried activities, a timer and a signal changed nothing."""
    out = []
    for r in runs:
        if r.workflow not in (CODE, CODE_CHILD):
            continue
        p = r.params or {}
        try:
            want: Any = (expected_code_result(int(p["n"])) if r.workflow == CODE
                         else expected_code_child(int(p["n"]), int(p["salt"])))
        except (KeyError, TypeError, ValueError):
            out.append(Violation("code-result", f"{r.workflow} run has unexpected params {p}", r.id))
            continue
        if r.state != "succeeded" or r.result != want:
            out.append(Violation("code-result", f"{r.workflow} run is {r.state} with result {r.result!r}, expected "
                                 f"succeeded with {want!r}", r.id))
    return out


def check_timers(tasks: Sequence[TaskRow], events: Sequence[EventRow], slack: float = 0.01) -> list[Violation]:
    """A code run's timer never fires before its due time (its ``-> succeeded`` event is at or after ``due_at``;
    ``slack`` for the database's timestamp rounding). How late it fires is reported, not asserted (a fault may
    hold the reconciler up)."""
    fired = {e.task_run_id: e.at for e in events if e.task_run_id is not None and e.to_state == "succeeded"}
    out = []
    for t in tasks:
        if t.type != "timer" or t.due_at is None or t.id not in fired:
            continue
        if fired[t.id] < t.due_at - slack:
            out.append(Violation("timer", f"timer {t.name} fired {t.due_at - fired[t.id]:.3f}s before it was due",
                                 t.run_id, t.id))
    return out


def timer_lateness(tasks: Sequence[TaskRow], events: Sequence[EventRow]) -> list[float]:
    """Seconds from each fired timer's due time to its ``-> succeeded`` event."""
    fired = {e.task_run_id: e.at for e in events if e.task_run_id is not None and e.to_state == "succeeded"}
    return [fired[t.id] - t.due_at for t in tasks if t.type == "timer" and t.due_at is not None and t.id in fired]


def pool_peaks(tasks: Sequence[TaskRow], attempts: Sequence[AttemptRow]) -> dict[str, int]:
    """Per pool, the most attempts of its tasks open at one instant, from the attempts ledger (each attempt's
    ``[started_at, finished_at)``; an attempt never ended is open to the end)."""
    pool_of = {t.id: t.pool for t in tasks if t.pool is not None}
    points: dict[str, list[tuple[float, int]]] = {}
    for a in attempts:
        pool = pool_of.get(a.task_run_id)
        if pool is not None:
            points.setdefault(pool, []).append((a.started_at, 1))
            if a.finished_at is not None:
                points[pool].append((a.finished_at, -1))
    peaks = {}
    for pool, pts in points.items():
        current = peak = 0
        for _, step in sorted(pts):  # at one instant an end (-1) sorts before a start: [start, end)
            current += step
            peak = max(peak, current)
        peaks[pool] = peak
    return peaks


def check_limits(tasks: Sequence[TaskRow], attempts: Sequence[AttemptRow], pools: dict[str, int]) -> list[Violation]:
    """A pool's slots are never exceeded: at no instant more of its tasks' attempts open than it has slots."""
    return [Violation("limit", f"pool {pool}: {peak} attempts open at once, {pools.get(pool, 0)} slots")
            for pool, peak in sorted(pool_peaks(tasks, attempts).items()) if peak > pools.get(pool, 0)]


def check_schedule_duplicates(runs: Sequence[RunRow], fires: Sequence[FireRow]) -> list[Violation]:
    """Each (schedule, fire time) has at most one run (the runs table) and at most one fire row; a ``started`` fire
    row names its run, that run carries the same schedule and fire time, and every scheduled run has its row."""
    out: list[Violation] = []
    by_time: dict[tuple[str, float], list[RunRow]] = defaultdict(list)
    for r in runs:
        if r.schedule_name is not None and r.schedule_time is not None:
            by_time[(r.schedule_name, round(r.schedule_time, 3))].append(r)
    for (name, t), rs in sorted(by_time.items()):
        if len(rs) > 1:
            out.append(Violation("schedule-duplicate", f"schedule {name} fire time {t}: {len(rs)} runs "
                                 f"{sorted(r.id for r in rs)}", rs[1].id))
    rows: dict[tuple[str, float], list[FireRow]] = defaultdict(list)
    for f in fires:
        rows[(f.schedule_name, round(f.fire_time, 3))].append(f)
    for (name, t), fs in sorted(rows.items()):
        if len(fs) > 1:
            out.append(Violation("schedule-duplicate", f"schedule {name} fire time {t}: {len(fs)} fire rows "
                                 f"{[f.outcome for f in fs]}"))
    runs_by_id = {r.id: r for r in runs}
    fired = {f.run_id for f in fires if f.outcome == "started"}
    for f in fires:
        if f.outcome != "started":
            continue
        run = runs_by_id.get(f.run_id) if f.run_id is not None else None
        if run is None or run.schedule_name != f.schedule_name or run.schedule_time is None \
                or round(run.schedule_time, 3) != round(f.fire_time, 3):
            out.append(Violation("schedule-duplicate", f"schedule {f.schedule_name} fire time {f.fire_time}: started "
                                 f"but its run {f.run_id} is {'missing' if run is None else 'another fire time'}",
                                 f.run_id))
    for r in runs:
        if r.schedule_name is not None and r.id not in fired:
            out.append(Violation("schedule-duplicate", f"scheduled run of {r.schedule_name} at {r.schedule_time} has "
                                 "no started fire row", r.id))
    return out


def expected_fire_times(window: ScheduleWindow) -> list[float]:
    """The cron's fire times after ``since`` up to ``until`` (POSIX seconds)."""
    from datetime import UTC, datetime

    from app.scheduling import fire_times

    out = []
    for t in fire_times(window.cron, window.timezone, datetime.fromtimestamp(window.since, UTC)):
        if t.timestamp() > window.until:
            break
        out.append(t.timestamp())
    return out


def check_schedule_missed(fires: Sequence[FireRow], schedules: Sequence[ScheduleWindow]) -> list[Violation]:
    """No fire time missed: every fire time of the window has a fire row that ended started or skipped (a skip
    with its reason), none left buffered or pending; and a row for every time between the first and the last one
    recorded (``catchup: all`` within its window fires the times of an outage late, never drops them)."""
    out: list[Violation] = []
    for w in schedules:
        have = {round(f.fire_time, 3): f for f in fires if f.schedule_name == w.name}
        expected = [round(t, 3) for t in expected_fire_times(w)]
        if have:
            first, last = min(have), max(have)
            between = ScheduleWindow(w.name, w.cron, w.timezone, first - 0.001, last)
            expected = sorted({*expected, *(round(t, 3) for t in expected_fire_times(between))})
        missing = [t for t in expected if t not in have]
        if missing:
            out.append(Violation("schedule-missed", f"schedule {w.name}: {len(missing)} of {len(expected)} fire times "
                                 f"have no fire row, first {missing[0]}"))
        for t, f in sorted(have.items()):
            if f.outcome not in ("started", "skipped"):
                out.append(Violation("schedule-missed", f"schedule {w.name} fire time {t} left {f.outcome}"))
            elif f.outcome == "skipped" and not f.reason:
                out.append(Violation("schedule-missed", f"schedule {w.name} fire time {t} skipped without a reason"))
    return out


def check_unended(execs: Sequence[Execution]) -> list[Violation]:
    return [Violation("unended", f"{x.task} attempt {x.attempt} (pid {x.pid}) is still running", x.run, x.task_run)
            for x in execs if x.status == "open"]


@dataclass
class Checked:
    violations: list[Violation]
    executions: list[Execution]
    legal_overlaps: int

    def of(self, kind: str) -> list[Violation]:
        return [v for v in self.violations if v.kind == kind]


def check_all(snap: Snapshot, timing: Timing) -> Checked:
    execs = executions(snap.ledger, snap.first_dead)
    legal, overlaps = check_overlaps(execs, snap.attempts, timing, snap.resumed)
    violations = (check_terminal(snap.runs) + check_stuck(snap.tasks, snap.attempts)
                  + check_completions(snap.tasks, snap.attempts, snap.events) + overlaps
                  + check_history(snap.runs, snap.tasks, snap.events, snap.attempts)
                  + check_ledger_in_db(execs, snap.tasks, snap.attempts)
                  + check_lost(snap.started, snap.runs, snap.tasks, snap.attempts, execs) + check_unended(execs)
                  + check_cannot_start(snap.runs, snap.tasks) + check_code_results(snap.runs)
                  + check_timers(snap.tasks, snap.events)
                  + check_orphans(execs, snap.attempts, snap.first_dead, timing)
                  + check_limits(snap.tasks, snap.attempts, snap.pools)
                  + check_schedule_duplicates(snap.runs, snap.fires)
                  + check_schedule_missed(snap.fires, snap.schedules))
    return Checked(violations, execs, legal)


# -- time to recover ------------------------------------------------------------------------------------


def recovery_times(faults: Sequence[tuple[float, float, bool]], tasks: Sequence[TaskRow],
                   events: Sequence[EventRow]) -> list[float]:
    """For each fault ``(started, ended, blocks_commits)``: the tasks submitted or running when it was
    injected (waits excepted: a subworkflow's child run, a code run's timer or signal wait), and for each its
    first later event. The fault's recovery time is the latest of those, measured from the injection (0 if
    nothing was live; ``inf`` if a task never moved again). An event's time is taken before the statement that
    may block, so for a fault during which nothing can commit (``blocks_commits``: table lock, database down)
    an event counts at the fault's end at the earliest."""
    kinds = {t.id: t.type for t in tasks}  # waits (child runs, timers, signals) are not recovery
    times: dict[int, list[float]] = defaultdict(list)
    states: dict[int, list[str]] = defaultdict(list)
    for e in sorted(events, key=lambda e: (e.at, e.id)):
        if e.task_run_id is not None and kinds.get(e.task_run_id, "python") in EXECUTED_KINDS:
            times[e.task_run_id].append(e.at)
            states[e.task_run_id].append(e.to_state)
    out = []
    for started, ended, blocks_commits in faults:
        worst = 0.0
        for tid, ts in times.items():
            i = bisect.bisect_right(ts, started)
            if i == 0 or states[tid][i - 1] not in ("submitted", "running"):
                continue
            progress = (max(ts[i], ended) if blocks_commits else ts[i]) if i < len(ts) else math.inf
            worst = max(worst, progress - started)
        out.append(worst)
    return out


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]
