"""Python task bodies for integration tests. Each execution appends to a ledger file
(``TIDEFLOW_TEST_LEDGER``), one line per event, so tests can count real body executions."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


def _ledger(context: Any, event: str, **extra: Any) -> None:
    path = os.environ.get("TIDEFLOW_TEST_LEDGER")
    if not path:
        return
    line = {"event": event, "run": context.run_id, "task": context.task_name, "task_run": context.task_run_id,
            "attempt": context.attempt, "pid": os.getpid(), "t": time.time(), **extra}
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")
        f.flush()


def read_ledger(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def record(context: Any, value: Any = None) -> Any:
    _ledger(context, "exec")
    return value if value is not None else context.task_name


def sleep(context: Any, seconds: float = 30.0) -> str:
    _ledger(context, "start")
    time.sleep(seconds)
    _ledger(context, "end")
    return "slept"


def print_then_wait(context: Any, text: str, gate: str, timeout: float = 60.0) -> str:
    """Print ``text``, then wait (up to ``timeout``) for the file ``gate``: a running attempt with output."""
    print(text, flush=True)
    deadline = time.monotonic() + timeout
    while not Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return "opened"


def fail_times(context: Any, times: int = 1) -> str:
    """Fail the first ``times`` attempts, then succeed."""
    _ledger(context, "exec")
    if context.attempt <= times:
        raise RuntimeError(f"planned failure on attempt {context.attempt}")
    return "ok"


def fail_unless_exists(context: Any, marker: str) -> str:
    _ledger(context, "exec")
    if not Path(marker).exists():
        raise RuntimeError(f"{marker} does not exist")
    return "ok"


def sleep_on_first_attempt(context: Any, seconds: float = 60.0) -> str:
    """Attempt 1 sleeps (to be killed mid-body); later attempts return at once."""
    _ledger(context, "start")
    if context.attempt == 1:
        time.sleep(seconds)
    _ledger(context, "end")
    return f"attempt {context.attempt}"


def kill_own_process(context: Any) -> str:
    """Kills the process running it (as an out-of-memory kill would): every attempt is lost, never failed."""
    import signal

    _ledger(context, "start")
    os.kill(os.getpid(), signal.SIGKILL)
    return "unreachable"


def gate_then_fail(context: Any, gate: str, timeout: float = 60.0) -> str:
    """Start (ledger ``start``), wait for the file ``gate``, then fail: a running attempt whose failure the test
    releases (e.g. to race an operator command with the worker's finish)."""
    _ledger(context, "start")
    deadline = time.monotonic() + timeout
    while not Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    raise RuntimeError("gate opened: planned failure")


def gate_then_record(context: Any, gate: str, timeout: float = 60.0) -> str:
    """Start (ledger ``start``), wait for the file ``gate``, then succeed (ledger ``exec``)."""
    _ledger(context, "start")
    deadline = time.monotonic() + timeout
    while not Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    _ledger(context, "exec")
    return context.task_name
