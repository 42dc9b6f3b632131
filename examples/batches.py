"""A long loop with ``continue_as_new``: total a source batch by batch. Each run handles a few batches, then
continues as a fresh run (an empty history) carrying its cursor and running total forward, so a loop over millions
of rows never grows one history past its cap (``TIDEFLOW_HISTORY_MAX_STEPS``).

Run it (every process needs the module)::

    export TIDEFLOW_WORKFLOW_MODULES=examples.batches
    tideflow run start batch_totals -p end=100 -p batch_size=10 -p batches_per_run=3
    tideflow run show ID --json          # "continued_run_id": the next run of the chain
    tideflow run list --workflow batch_totals

The chain's last run returns ``{"total": 4950, "cursor": 100, ...}`` (0 + 1 + ... + 99); each run publishes its
cursor as ``state_values``. The source here is ``range(end)``; a real one would read rows after ``cursor`` from a
table or an API page by page.
"""

from __future__ import annotations

from typing import Any

import tideflow


@tideflow.activity(retries=3, retry_delay=1, timeout=60)
def fetch_batch(cursor: int, size: int, end: int) -> list[int]:
    """The rows after ``cursor`` (at most ``size``)."""
    return list(range(cursor, min(cursor + size, end)))


@tideflow.activity(retries=3, retry_delay=1, timeout=60)
def sum_batch(rows: list[int]) -> int:
    return sum(rows)


@tideflow.workflow(name="batch_totals", description="total a source in batches, continue_as_new every few")
def batch_totals(ctx: tideflow.Context, end: int, cursor: int = 0, total: int = 0, batch_size: int = 10,
                 batches_per_run: int = 3, generation: int = 0) -> dict[str, Any]:
    for _ in range(batches_per_run):
        if cursor >= end:
            break
        rows = ctx.activity(fetch_batch, cursor, batch_size, end)
        if not rows:
            break
        total += ctx.activity(sum_batch, rows)
        cursor += len(rows)
        ctx.set_state("cursor", cursor)
    if cursor < end:
        # this run ends here (succeeded, linked to the next one); the next starts from the top with these
        ctx.continue_as_new(end=end, cursor=cursor, total=total, batch_size=batch_size,
                            batches_per_run=batches_per_run, generation=generation + 1)
    return {"total": total, "cursor": cursor, "runs": generation + 1}
