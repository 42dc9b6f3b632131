"""The code workflows a campaign runs beside the DAG mix (``TIDEFLOW_WORKFLOW_MODULES=tests.chaos.codeflows`` in
every campaign process, and imported by the campaign itself to start them).

``chaos-code`` (param ``n``): an activity, a 4-way gather (one of them fails its first attempt), a durable sleep
of :data:`SLEEP_SECONDS` (fired by the reconciler), a patch marker, a wait for the signal ``approve`` that the
campaign sends (:func:`signal_data`), a code child ``chaos-code-child``, and a last 1 s activity. Its result is a
deterministic function of ``n`` and the activities' results, which are deterministic functions of their
arguments; the invariant checker computes the expected result on its own (``invariants.expected_code_result``)
and compares.

Each activity writes ledger lines like the DAG bodies (``workload.execution``): an activity gets no context
argument, so it finds the worker's :class:`~app.executors.base.ExecutionContext` (run, task run, attempt) on
its caller's frame (``app.executors.python.call_captured(func, args, kwargs, ctx)``).
"""

from __future__ import annotations

import sys
from typing import Any

import tideflow
from app.executors.base import ExecutionContext
from tests.chaos.workload import execution, work

CODE = "chaos-code"
CODE_CHILD = "chaos-code-child"
SIGNAL = "approve"
SLEEP_SECONDS = 1.5
#: the gather's factors (``scale(base, k)`` for each), plus one ``bump`` that fails its first attempt
FACTORS = (3, 5, 7)
#: body seconds of each step, by role
FIRST_SECONDS, FAN_SECONDS, CHILD_SECONDS, LAST_SECONDS = 0.1, 0.3, 0.2, 1.0
_RETRY: dict[str, Any] = {"retries": 5, "retry_delay": 0.2, "retry_backoff": 1.5, "max_lost_attempts": 8}


def signal_data(n: int) -> dict[str, Any]:
    """What the campaign sends as the ``approve`` signal of run ``n``."""
    return {"salt": n % 7 + 1, "by": f"chaos-{n}"}


def _context() -> ExecutionContext:
    """The execution context of the activity running in this thread (a local of ``call_captured``)."""
    frame = sys._getframe(1)
    while frame is not None:
        ctx = frame.f_locals.get("ctx")
        if isinstance(ctx, ExecutionContext):
            return ctx
        frame = frame.f_back  # type: ignore[assignment]
    raise RuntimeError("not called by a worker's activity executor")


@tideflow.activity(**_RETRY)
def scale(x: int, k: int, seconds: float = 0.05) -> int:
    """``x * k + k`` after ``seconds`` of work."""
    with execution(_context()):
        work(seconds)
    return x * k + k


@tideflow.activity(**_RETRY)
def bump(x: int, seconds: float = 0.05) -> int:
    """``x + 100``; fails its first attempt."""
    ctx = _context()
    with execution(ctx):
        work(seconds)
        if ctx.attempt == 1:
            raise RuntimeError("planned failure on attempt 1")
    return x + 100


@tideflow.workflow(name=CODE_CHILD)
def chaos_code_child(ctx: tideflow.Context, n: int, salt: int) -> int:
    return int(ctx.activity(scale, n + salt, 11, CHILD_SECONDS))


@tideflow.workflow(name=CODE)
def chaos_code(ctx: tideflow.Context, n: int) -> dict[str, Any]:
    base = ctx.activity(scale, n, 2, FIRST_SECONDS)
    handles = [ctx.start_activity(scale, base, k, FAN_SECONDS) for k in FACTORS]
    handles.append(ctx.start_activity(bump, base, FAN_SECONDS))
    gathered = ctx.gather(*handles)
    ctx.set_state("stage", "sleeping")
    ctx.sleep(SLEEP_SECONDS)
    patched = ctx.patched("chaos-v1")
    ctx.set_state("stage", "waiting")
    approval = ctx.wait_signal(SIGNAL)
    child = ctx.child(CODE_CHILD, n=n, salt=approval["salt"])
    total = ctx.activity(scale, sum(gathered) + child, 1, LAST_SECONDS)
    ctx.set_state("stage", "done")
    return {"n": n, "base": base, "gathered": gathered, "patched": patched, "approval": approval, "child": child,
            "total": total}


def body_seconds() -> float:
    """Body time of one ``chaos-code`` run (one attempt each, plus ``bump``'s failed first one)."""
    return FIRST_SECONDS + (len(FACTORS) + 2) * FAN_SECONDS + CHILD_SECONDS + LAST_SECONDS


def critical_path(step_overhead: float) -> float:
    """Seconds one ``chaos-code`` run needs on an idle cluster: first activity, the gather (bump's failed attempt
    and retry), the sleep (+ one reconcile pass), the signal (sent once the run waits, at the latest), the child,
    the last activity; ``step_overhead`` per hop."""
    return (FIRST_SECONDS + 2 * FAN_SECONDS + 0.2 + SLEEP_SECONDS + 1.0 + CHILD_SECONDS + LAST_SECONDS
            + 10 * step_overhead)
