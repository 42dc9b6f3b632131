"""Code workflows the benchmarks run (``TIDEFLOW_WORKFLOW_MODULES=bench.codeflows``): no-op activities, so the
figures are the engine's own cost (recording, replay, dispatch)."""

from __future__ import annotations

import tideflow


@tideflow.activity
def noop(i: int) -> int:
    return i


@tideflow.workflow(name="bench-seq")
def seq(ctx: tideflow.Context, n: int = 10) -> int:
    """``n`` activities one after another (each replay pass reaches one more position)."""
    for i in range(n):
        ctx.activity(noop, i)
    return n


@tideflow.workflow(name="bench-gather")
def gather(ctx: tideflow.Context, n: int = 10) -> int:
    """``n`` activities started at once, then awaited together."""
    handles = [ctx.start_activity(noop, i) for i in range(n)]
    return len(ctx.gather(*handles))
