"""Code workflows and activities the tests run (``TIDEFLOW_WORKFLOW_MODULES=tests.support.codeflows``).

Activities record each call in ``CALLS`` (in-process tests) so a test can tell what ran and how often.
"""

from __future__ import annotations

from typing import Any

import tideflow

CALLS: list[tuple[str, Any]] = []
#: flags the in-process tests flip to make activities fail
FAIL: dict[str, int] = {}


@tideflow.activity
def add(a: int, b: int) -> int:
    CALLS.append(("add", (a, b)))
    return a + b


@tideflow.activity(retries=2)
def flaky(key: str) -> str:
    CALLS.append(("flaky", key))
    if FAIL.get(key, 0) > 0:
        FAIL[key] -= 1
        raise RuntimeError(f"flaky {key} failed")
    return f"ok {key}"


@tideflow.activity
def charge(order_id: int, amount: int) -> dict[str, Any]:
    CALLS.append(("charge", order_id))
    if FAIL.get("charge", 0) > 0:
        raise ValueError(f"card declined for order {order_id}")
    return {"order": order_id, "charged": amount}


@tideflow.activity
def refund(order_id: int) -> str:
    CALLS.append(("refund", order_id))
    return f"refunded {order_id}"


@tideflow.activity
def ship_item(order_id: int) -> str:
    CALLS.append(("ship_item", order_id))
    if FAIL.get("ship", 0) > 0:
        raise RuntimeError("no courier")
    return f"shipped {order_id}"


@tideflow.workflow(name="adder")
def adder(ctx: tideflow.Context, x: int, y: int = 1) -> dict[str, Any]:
    first = ctx.activity(add, x, y)
    a = ctx.start_activity(add, first, 1)
    b = ctx.start_activity(add, first, 2)
    left, right = ctx.gather(a, b)
    ctx.set_state("stage", "added")
    return {"first": first, "left": left, "right": right}


@tideflow.workflow(name="saga")
def saga(ctx: tideflow.Context, order_id: int) -> dict[str, Any]:
    receipt = ctx.activity(charge, order_id, 10)
    try:
        shipped = ctx.activity(ship_item, order_id)
    except tideflow.ActivityError as exc:
        ctx.activity(refund, order_id)
        return {"receipt": receipt, "compensated": exc.type, "message": exc.message}
    return {"receipt": receipt, "shipped": shipped}


@tideflow.workflow(name="sleeper")
def sleeper(ctx: tideflow.Context, seconds: float) -> str:
    ctx.set_state("stage", "sleeping")
    ctx.sleep(seconds)
    ctx.set_state("stage", "woke")
    return "woke"


@tideflow.workflow(name="approval")
def approval(ctx: tideflow.Context, timeout: float | None = None) -> Any:
    ctx.set_state("stage", "waiting")
    first = ctx.wait_signal("approve", timeout=timeout)
    if first is None:
        return {"approved": None}
    second = ctx.wait_signal("approve", timeout=timeout)
    return {"approved": [first, second]}


@tideflow.workflow(name="cancellable")
def cancellable(ctx: tideflow.Context, order_id: int) -> str:
    ctx.activity(charge, order_id, 5)
    try:
        ctx.sleep(3600)
    except tideflow.Cancelled:
        ctx.activity(refund, order_id)
        raise
    return "slept"


@tideflow.workflow(name="values")
def values(ctx: tideflow.Context) -> dict[str, Any]:
    return {"now": ctx.now().isoformat(), "uuid": str(ctx.uuid4()), "random": ctx.random()}


@tideflow.workflow(name="parent")
def parent(ctx: tideflow.Context, x: int) -> dict[str, Any]:
    child = ctx.child("adder", x=x, y=10)
    handle = ctx.start_child(adder, x=1)
    return {"child": child, "other": handle.result()}


@tideflow.workflow(name="counter")
def counter(ctx: tideflow.Context, n: int, until: int) -> int:
    value = ctx.activity(add, n, 1)
    if value < until:
        ctx.continue_as_new(n=value, until=until)
    return value


@tideflow.workflow(name="looper")
def looper(ctx: tideflow.Context, n: int) -> int:
    total = 0
    for i in range(n):
        total = ctx.activity(add, total, i)
    return total


@tideflow.workflow(name="async_adder")
async def async_adder(ctx: tideflow.AsyncContext, x: int) -> int:
    first = await ctx.activity(add, x, 1)
    a = ctx.start_activity(add, first, 1)
    b = ctx.start_activity(add, first, 2)
    left, right = await ctx.gather(a, b)
    await ctx.sleep(0)
    return left + right


@tideflow.activity
def whoami() -> dict[str, Any]:
    info = tideflow.activity_info()
    return {"activity": info.activity, "run_id": info.run_id, "seq": info.seq, "attempt": info.attempt,
            "key": info.idempotency_key}


@tideflow.workflow(name="introspect")
def introspect(ctx: tideflow.Context) -> Any:
    ctx.now()
    return ctx.activity(whoami)
