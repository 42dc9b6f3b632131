"""Code workflows whose activities run under limits (``TIDEFLOW_WORKFLOW_MODULES=tests.support.limitflows``):
tests/integration/test_limits.py (in process) and test_limits_delivery.py (real workers killed, messages lost).

Each activity sleeps ``seconds``, so that attempts overlap unless a limit holds them apart; the attempts ledger
(``task_attempts``) is what the tests read.
"""

from __future__ import annotations

import time
from typing import Any

import tideflow

#: the pool the pooled activity names (``tideflow pool set codelim SLOTS``)
POOL = "codelim"


@tideflow.activity(pool=POOL)
def pooled_nap(i: int, seconds: float) -> int:
    time.sleep(seconds)
    return i


@tideflow.activity(concurrency={"key": "tenant-{{ params.tenant }}", "limit": 2})
def tenant_nap(i: int, seconds: float) -> int:
    time.sleep(seconds)
    return i


@tideflow.activity(rate_limit="2/s")
def rated_nap(i: int, seconds: float) -> int:
    time.sleep(seconds)
    return i


@tideflow.activity(concurrency={"key": "cust-{{ args.customer }}", "limit": 1})
def customer_nap(customer: str, i: int, seconds: float = 0.0) -> int:
    time.sleep(seconds)
    return i


@tideflow.activity(concurrency={"key": "{{ args.order.customer }}", "limit": 1})
def order_nap(order: dict[str, Any]) -> str:
    return str(order["customer"])


NAPS = {"pool": pooled_nap, "tenant": tenant_nap, "rate": rated_nap}


@tideflow.workflow(name="limited_naps")
def limited_naps(ctx: tideflow.Context, kind: str, n: int, seconds: float, tenant: str = "t1") -> list[Any]:
    """``n`` activities of one kind (``pool``, ``tenant``: a key of the run's params, ``rate``), in parallel."""
    return ctx.gather(*[ctx.start_activity(NAPS[kind], i, seconds) for i in range(n)])


@tideflow.workflow(name="customer_naps")
def customer_naps(ctx: tideflow.Context, customer: str, n: int = 1, seconds: float = 0.0) -> list[Any]:
    """``n`` activities keyed by their ``customer`` argument (at most 1 running per customer), in parallel."""
    return ctx.gather(*[ctx.start_activity(customer_nap, customer, i, seconds) for i in range(n)])


@tideflow.workflow(name="unrenderable_key")
def unrenderable_key(ctx: tideflow.Context, catch: bool = True) -> Any:
    """An activity whose concurrency key names a field its argument lacks: it fails without running."""
    try:
        ctx.activity(order_nap, {"id": 1})
    except tideflow.ActivityError as exc:
        if not catch:
            raise
        return {"type": exc.type, "message": exc.message, "then": ctx.activity(order_nap, {"customer": "c1"})}
    return "unreachable"
