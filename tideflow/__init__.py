"""Tideflow's SDK: the one import a user's workflow code needs.

    import tideflow

    @tideflow.activity(retries=3, retry_delay=2, timeout=60)
    def charge(order_id: int, amount: int) -> dict: ...

    @tideflow.workflow(name="order")
    def order(ctx: tideflow.Context, order_id: int, amount: int) -> dict:
        return ctx.activity(charge, order_id, amount)

The implementation lives in ``app.code`` (the engine, the decider, the registry) and ``app.client`` (starting,
signalling, cancelling, resuming and replaying runs from application code: :class:`Client`).
"""

from app.client import Tideflow as Client
from app.code.engine import (
    ActivityError,
    AsyncContext,
    Cancelled,
    ChildWorkflowError,
    Context,
    Handle,
    NotJSON,
    WorkflowError,
)
from app.code.registry import activity, workflow
from app.code.replay import ReplayReport, replay
from app.executors.activity import ActivityInfo, activity_info

__all__ = [
    "ActivityError",
    "ActivityInfo",
    "AsyncContext",
    "Cancelled",
    "ChildWorkflowError",
    "Client",
    "Context",
    "Handle",
    "NotJSON",
    "ReplayReport",
    "WorkflowError",
    "activity",
    "activity_info",
    "replay",
    "workflow",
]
