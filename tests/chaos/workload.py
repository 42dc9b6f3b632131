"""The mixed workflow a campaign runs, and the task bodies. Every body execution appends a ``start`` line
and (unless its process dies first) an ``end`` line to a JSON-lines ledger (``TIDEFLOW_CHAOS_LEDGER``):
``{"ev", "run", "task_run", "task", "attempt", "pid", "t" (time.time()), "status" (end only)}``. The shell
body (:func:`shell_command`, ``pid`` = its shell) also forks children, and each of them appends a ``proc``
line with its own pid as ``child``: an execution ends when the last of its processes has.

Workers import this module by name (``tests.chaos.workload:step``), so it must stay cheap to import.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LEDGER_ENV = "TIDEFLOW_CHAOS_LEDGER"
MIXED = "chaos-mixed"
CHILD = "chaos-child"
#: a run whose subworkflow task cannot start (its child's parameter is a placeholder with no value): it must end
#: ``failed`` (``after`` skipped, the independent ``side`` succeeded), never stay running
NOSTART = "chaos-nostart"
#: the MIXED task with ``retries: 0``: a worker killed under it must not fail it (lost attempts have their own
#: budget), it succeeds on a later attempt
FRAGILE = "fragile"
#: a DAG with a seconds-level cron schedule, fired by beat's ``tideflow.schedule`` job under every fault
#: (invariants ``schedule-duplicate`` and ``schedule-missed``)
SCHEDULED = "chaos-scheduled"
_MODULE = "tests.chaos.workload"


# -- the ledger ---------------------------------------------------------------------------------------


def _append(record: dict[str, Any]) -> None:
    path = os.environ.get(LEDGER_ENV)
    if not path:
        return
    data = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    # one write() on an O_APPEND descriptor: lines of concurrent processes never interleave
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _line(context: Any, ev: str, **extra: Any) -> dict[str, Any]:
    return {"ev": ev, "run": context.run_id, "task_run": context.task_run_id, "task": context.task_name,
            "attempt": context.attempt, "pid": os.getpid(), "t": time.time(), **extra}


@contextmanager
def execution(context: Any) -> Iterator[None]:
    """Ledger lines around one body execution; the end line says how it ended (ok, error, stopped)."""
    _append(_line(context, "start"))
    status = "error"
    try:
        yield
        status = "ok"
    except BaseException as exc:
        status = "stopped" if type(exc).__name__ == "TaskStopped" else "error"
        raise
    finally:
        end = _line(context, "end", status=status)
        for _ in range(3):  # the lease keeper's stop signal may land inside this write: write it again
            try:
                _append(end)
                break
            except BaseException as exc:  # noqa: BLE001 - TaskStopped raised by the stop signal handler
                if type(exc).__name__ != "TaskStopped":
                    raise


def read_ledger(path: str | Path) -> list[dict[str, Any]]:
    """Every complete line of the ledger (a line still being written is skipped)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    out = []
    for raw in text.split("\n")[:-1]:
        if raw.strip():
            out.append(json.loads(raw))
    return out


# -- task bodies ----------------------------------------------------------------------------------------


def work(seconds: float, slice_seconds: float = 0.05) -> None:
    """``seconds`` of "work" in short sleeps: like CPU work, it makes no progress while the process is stopped
    (SIGSTOP), so a paused body still has work left when it wakes up. Interruptible by the stop signal."""
    for _ in range(max(0, round(seconds / slice_seconds))):
        time.sleep(slice_seconds)


def step(context: Any, seconds: float = 0.0) -> dict[str, Any]:
    """Work ``seconds``; return who ran it."""
    with execution(context):
        work(seconds)
    return {"task": context.task_name, "attempt": context.attempt, "pid": os.getpid()}


def flaky(context: Any, seconds: float = 0.0) -> dict[str, Any]:
    """Fails its first attempt, then succeeds."""
    with execution(context):
        work(seconds)
        if context.attempt == 1:
            raise RuntimeError("planned failure on attempt 1")
    return {"task": context.task_name, "attempt": context.attempt, "pid": os.getpid()}


#: the shell body (``SECONDS`` is substituted); ``$M`` is the shell's pid, ``$$`` in a child its own
_SHELL_BODY = r"""L="${TIDEFLOW_CHAOS_LEDGER:-/dev/null}"; M=$$; export L M
rec() { printf '{"ev":"%s","run":%s,"task_run":%s,"task":"%s","attempt":%s,"pid":%s,"t":%s%s}\n' "$1" \
  "$TIDEFLOW_RUN_ID" "$TIDEFLOW_TASK_RUN_ID" "$TIDEFLOW_TASK" "$TIDEFLOW_ATTEMPT" "$M" "$(date +%s.%N)" "$2" >> "$L"; }
rec start ''
child='printf "{\"ev\":\"proc\",\"run\":%s,\"task_run\":%s,\"task\":\"%s\",\"attempt\":%s,\"pid\":%s,\
\"child\":%s,\"t\":%s}\n" "$TIDEFLOW_RUN_ID" "$TIDEFLOW_TASK_RUN_ID" "$TIDEFLOW_TASK" "$TIDEFLOW_ATTEMPT" \
  "$M" $$ "$(date +%s.%N)" >> "$L"
exec sleep SECONDS'
sh -c "$child" &
(setsid sh -c "$child" &)
sleep SECONDS
wait
rec end ',"status":"ok"'
echo ok"""


def shell_command(seconds: float) -> str:
    """The shell body: ``seconds`` of sleep in the shell and in two background children, one of which leaves
    the shell's process group and session (double fork + setsid), as a body's helpers may. The shell waits for
    the first; the escaped one ends about when the shell does (or is terminated by the reaper then). Ledger
    lines as the python bodies write them (one ``printf`` to an ``O_APPEND`` descriptor: one write)."""
    return _SHELL_BODY.replace("SECONDS", f"{seconds:g}")


# -- the workflows ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """chaos-mixed: ``start`` -> fan-out (``fan0..``, ``slow``, ``flaky``, ``shell``, ``sub`` = chaos-child,
    ``fragile``) -> ``join`` (fan-in) -> ``tail``; chaos-child: ``c1`` -> ``c2``; chaos-nostart (every tenth run):
    ``start`` -> ``nochild`` (a subworkflow that cannot start) -> ``after``, and ``side``. Tasks get ``retries`` for
    failures of the body and ``max_lost_attempts`` lost attempts (worker killed, lease lost) as their own budget;
    ``fragile`` has ``retries: 0``. ``shell`` (:func:`shell_command`) forks children."""

    slow_seconds: float = 3.0
    shell_seconds: float = 3.5
    fan_out: int = 3
    retries: int = 5
    #: the faults aim at busy workers (procfile-stop at ones running the shell body), so one task can lose
    #: several attempts in a row; a real deployment's default is 3
    max_lost_attempts: int = 8
    retry_delay: float = 0.2
    quick_seconds: float = 0.05
    fragile_seconds: float = 0.5
    #: start a ``chaos-code`` run (``tests.chaos.codeflows``) beside each mixed run, and send its ``approve``
    #: signal right away (before its wait), while it sleeps, or while it waits (by its parameter ``n % 3``)
    code: bool = True
    #: limits: the fan-out tasks take a slot of this pool (``pool_slots`` slots, set by the campaign), so the
    #: runs' fan-outs contend for it under every fault (invariant ``limit``: never more running than slots)
    pool: str = "chaos-pool"
    pool_slots: int = 2
    #: schedules: chaos-scheduled (two short tasks) fires every ``schedule_seconds`` (a seconds-level cron, as in
    #: tests/integration/test_schedules_cluster.py), ``catchup: all`` within ``schedule_catchup_window`` so a
    #: beat or database outage is caught up; 0: no scheduled workflow
    schedule_seconds: int = 2
    schedule_catchup_window: float = 3600.0

    @property
    def schedule_cron(self) -> str:
        return f"*/{self.schedule_seconds} * * * * *"

    def _task(self, name: str, fn: str = "step", seconds: float | None = None, deps: list[str] | None = None,
              ) -> dict[str, Any]:
        return {"name": name, "type": "python", "function": f"{_MODULE}:{fn}",
                "args": {"seconds": self.quick_seconds if seconds is None else seconds},
                "depends_on": deps or [], "retries": self.retries, "retry_delay": self.retry_delay,
                "retry_backoff": 1.5, "max_lost_attempts": self.max_lost_attempts}

    def definitions(self) -> list[dict[str, Any]]:
        """Child first (a subworkflow must be registered before its parent)."""
        child = {"name": CHILD, "params": {"parent": 0}, "tasks": [  # parent: a run id (an integer)
            self._task("c1"), self._task("c2", deps=["c1"])]}
        fans = [f"fan{i}" for i in range(self.fan_out)]
        mixed = {"name": MIXED, "params": {"key": ""}, "on_failure": "stop", "tasks": [
            self._task("start"),
            *[{**self._task(f, seconds=0.1, deps=["start"]), "pool": self.pool} for f in fans],
            self._task("slow", seconds=self.slow_seconds, deps=["start"]),
            self._task("flaky", fn="flaky", deps=["start"]),
            {"name": "shell", "type": "shell", "command": shell_command(self.shell_seconds), "depends_on": ["start"],
             "retries": self.retries, "retry_delay": self.retry_delay, "retry_backoff": 1.5,
             "max_lost_attempts": self.max_lost_attempts},
            {"name": "sub", "type": "subworkflow", "workflow": CHILD, "params": {"parent": "{{ run.id }}"},
             "depends_on": ["start"]},
            {**self._task(FRAGILE, seconds=self.fragile_seconds, deps=["start"]), "retries": 0},
            self._task("join", deps=[*fans, "slow", "flaky", "shell", "sub", FRAGILE]),
            self._task("tail", deps=["join"]),
        ]}
        nostart = {"name": NOSTART, "params": {"key": ""}, "on_failure": "continue", "tasks": [
            self._task("start"),
            {"name": "nochild", "type": "subworkflow", "workflow": CHILD,
             "params": {"parent": "{{ upstream.start.missing }}"}, "depends_on": ["start"]},
            self._task("after", deps=["nochild"]),
            self._task("side", deps=["start"]),
        ]}
        out = [child, mixed, nostart]
        if self.schedule_seconds:
            out.append({"name": SCHEDULED, "schedule": {
                "cron": self.schedule_cron, "catchup": "all", "catchup_window": self.schedule_catchup_window,
                "overlap": "allow"}, "tasks": [self._task("s1"), self._task("s2", deps=["s1"])]})
        return out

    @property
    def tasks_per_run(self) -> int:
        return sum(len(d["tasks"]) for d in self.definitions() if d["name"] not in (NOSTART, SCHEDULED))

    def task_seconds(self) -> dict[str, float]:
        """How long each task's body takes (subworkflow tasks have none)."""
        out = {t["name"]: t["args"]["seconds"] for d in self.definitions() for t in d["tasks"]
               if "args" in t and d["name"] not in (NOSTART, SCHEDULED)}
        return {**out, "shell": self.shell_seconds}

    @property
    def body_seconds(self) -> float:
        """Body time of one run (all its tasks, one attempt each, plus flaky's second attempt)."""
        return sum(self.task_seconds().values()) + self.quick_seconds

    def critical_path(self, step_overhead: float) -> float:
        """Seconds one run needs on an idle cluster: the longest chain of bodies, ``step_overhead`` per hop
        (dispatch, claim, advance), flaky's planned failure and retry delay."""
        fan_branch = max(0.1, self.slow_seconds, self.shell_seconds, self.fragile_seconds,
                         2 * self.quick_seconds + step_overhead,
                         2 * self.quick_seconds + self.retry_delay + step_overhead)
        return 3 * self.quick_seconds + fan_branch + 4 * step_overhead
