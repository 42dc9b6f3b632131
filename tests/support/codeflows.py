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


@tideflow.workflow(name="code_parent")
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


# -- for real worker processes (tests/integration/test_code_delivery.py): CALLS is per process, so these
# activities write to a marker file named by the test, one line per event, and a test counts the lines.


def _mark(path: str, event: str) -> int:
    """Append ``<event> <pid>`` to ``path``; return how many ``event`` lines it holds now (this one included)."""
    import os

    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{event} {os.getpid()}\n")
        f.flush()
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.split(" ", 1)[0] == event)


@tideflow.activity
def hang_first_time(path: str, seconds: float) -> int:
    """The first execution hangs for ``seconds`` (to be killed mid-activity); the effect (an ``effect`` line)
    happens only when an execution completes. Returns which execution completed (1, 2, ...)."""
    import time

    n = _mark(path, "start")
    if n == 1:
        time.sleep(seconds)
    _mark(path, "effect")
    return n


@tideflow.workflow(name="crash_once")
def crash_once(ctx: tideflow.Context, path: str, seconds: float = 120.0) -> dict[str, Any]:
    execution = ctx.activity(hang_first_time, path, seconds)
    after = ctx.activity(add, execution, 100)
    return {"execution": execution, "after": after}


@tideflow.workflow(name="late_approval")
def late_approval(ctx: tideflow.Context, seconds: float) -> Any:
    """Sleeps before it waits: signals sent meanwhile must be kept until the waits take them."""
    ctx.sleep(seconds)
    ctx.set_state("stage", "waiting")
    first = ctx.wait_signal("approve")
    second = ctx.wait_signal("approve")
    return [first, second]


@tideflow.workflow(name="sleepy_parent")
def sleepy_parent(ctx: tideflow.Context, seconds: float = 3600) -> Any:
    return ctx.child("sleeper", seconds=seconds)


@tideflow.workflow(name="deployed")
def deployed(ctx: tideflow.Context, seconds: float) -> str:
    """Its first call depends on the deployed code's version (``TIDEFLOW_TEST_CODE_VERSION`` of the process that
    replays it): version 2 is an incompatible change for runs started under version 1."""
    import os

    if os.environ.get("TIDEFLOW_TEST_CODE_VERSION") == "2":
        ctx.activity(refund, 1)
    else:
        ctx.activity(add, 1, 1)
    ctx.sleep(seconds)
    return "done"


@tideflow.workflow(name="patched_flow")
def patched_flow(ctx: tideflow.Context, seconds: float) -> str:
    """Version 2 (``TIDEFLOW_TEST_CODE_VERSION``) takes a new branch behind ``ctx.patched``; runs that recorded
    the old branch keep replaying it. The final signal keeps a run open across a deploy."""
    import os

    ctx.sleep(seconds)
    if os.environ.get("TIDEFLOW_TEST_CODE_VERSION") == "2" and ctx.patched("use-refund"):
        value = str(ctx.activity(refund, 2))
    else:
        value = str(ctx.activity(add, 2, 2))
    ctx.wait_signal("finish")
    return value


@tideflow.activity(timeout=1)
def overrun(seconds: float) -> str:
    import time

    time.sleep(seconds)
    return "finished"


@tideflow.workflow(name="timeboxed")
def timeboxed(ctx: tideflow.Context, seconds: float) -> dict[str, Any]:
    try:
        return {"result": ctx.activity(overrun, seconds)}
    except tideflow.ActivityError as exc:
        return {"error": exc.type, "message": exc.message}


@tideflow.activity(queue="tf-test-payments")
def pay(order_id: int) -> str:
    return f"paid {order_id}"


@tideflow.workflow(name="payer")
def payer(ctx: tideflow.Context, order_id: int) -> str:
    return str(ctx.activity(pay, order_id))


# -- limits (tests/integration/test_limits.py) ---------------------------------------------------------------


@tideflow.activity(pool="codepool")
def pooled_add(a: int, b: int) -> int:
    CALLS.append(("pooled_add", (a, b)))
    return a + b


@tideflow.workflow(name="one_at_a_time", max_active_runs=1)
def one_at_a_time(ctx: tideflow.Context, x: int) -> int:
    ctx.wait_signal("go")
    return int(ctx.activity(pooled_add, x, 1))


# -- run control of code runs (force-success and rerun: resets of the history) ---------------------------------
# The activities count their executions in a marker file (``_mark``), so in-process and real-worker tests alike
# can tell which positions ran again.


@tideflow.activity
def counted(path: str, name: str) -> int:
    """Which execution of ``name`` this is (1, 2, ...)."""
    return _mark(path, name)


@tideflow.activity
def counted_gated(path: str, name: str, wait: float = 0.0) -> int:
    """As :func:`counted`, but fails while ``<path>.fail`` exists; waits up to ``wait`` seconds for
    ``<path>.gate`` first (to race it)."""
    import os
    import time

    deadline = time.monotonic() + wait
    while wait and not os.path.exists(f"{path}.gate") and time.monotonic() < deadline:
        time.sleep(0.05)
    n = _mark(path, name)
    if os.path.exists(f"{path}.fail"):
        raise RuntimeError(f"{name} failed (execution {n})")
    return n


@tideflow.workflow(name="resettable")
def resettable(ctx: tideflow.Context, path: str, wait: float = 0.0) -> dict[str, Any]:
    """a, then b (fails while ``<path>.fail`` exists), then c: each returns which execution it is."""
    a = ctx.activity(counted, path, "a")
    ctx.set_state("stage", "a")
    b = ctx.activity(counted_gated, path, "b", wait)
    ctx.set_state("stage", "b")
    c = ctx.activity(counted, path, "c")
    return {"a": a, "b": b, "c": c}


@tideflow.workflow(name="catcher")
def catcher(ctx: tideflow.Context, path: str) -> dict[str, Any]:
    """b's failure is caught and compensated: forcing b changes what the function saw."""
    try:
        b = ctx.activity(counted_gated, path, "b")
    except tideflow.ActivityError:
        return {"b": None, "compensated": ctx.activity(counted, path, "comp")}
    return {"b": b, "compensated": None}


@tideflow.workflow(name="signalled")
def signalled(ctx: tideflow.Context, path: str) -> dict[str, Any]:
    first = ctx.activity(counted, path, "a")
    go = ctx.wait_signal("go")
    stamp = ctx.uuid4()
    child = ctx.child("adder", x=first, y=1)
    after = ctx.activity(counted, path, "after")
    return {"go": go, "uuid": str(stamp), "child": child["first"], "after": after}


@tideflow.workflow(name="catch_then_sleep")
def catch_then_sleep(ctx: tideflow.Context, path: str) -> Any:
    """b's failure is caught; the run then sleeps an hour (a live step after the failed one)."""
    try:
        return ctx.activity(counted_gated, path, "b")
    except tideflow.ActivityError:
        ctx.sleep(3600)
        return "slept"
