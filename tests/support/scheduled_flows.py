"""A code workflow with a schedule (tests/integration/test_schedules.py): only processes that import this module
sync and fire it."""

from __future__ import annotations

import tideflow


@tideflow.workflow(schedule={"cron": "0 * * * *", "name": "hourly-code", "params": {"label": "tick"}})
def scheduled_code(ctx: tideflow.Context, label: str = "x") -> dict[str, str]:
    when = ctx.schedule_time
    return {"label": label, "time": when.isoformat() if when is not None else ""}
