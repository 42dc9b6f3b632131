"""An order saga: charge the card, reserve every item (in parallel), ship; when a step fails past its retries,
undo what was done, in reverse order (release the reservations, refund the charge).

Run it (every process needs the module: workers run its activities, the master replays the workflow)::

    export TIDEFLOW_WORKFLOW_MODULES=examples.orders
    tideflow workflow list                          # order_saga is listed
    tideflow run start order_saga -p order_id=1 -p amount=30 -p 'items=["book","lamp"]' --wait
    tideflow run start order_saga -p order_id=2 -p amount=30 -p 'items=["book","lamp"]' -p country=AQ --wait
    tideflow run show ID --json                     # "result"; the steps in order, with their positions

The second run cannot ship to Antarctica: it releases both reservations, then refunds the card, and ends
``succeeded`` with ``{"status": "compensated", ...}`` (a saga that undid itself is a handled outcome, not a failed
run). An item out of stock (``sofa``) compensates the same way; the card is declined above 1000.

The activities are pure functions of their arguments (no network), so the example runs anywhere: replace their
bodies with calls to your payment, stock and shipping services. They should be idempotent (a retried activity may
have done its work before its worker died), e.g. by passing the order id as the provider's idempotency key.
"""

from __future__ import annotations

from typing import Any

import tideflow

#: what the warehouse holds (a real reservation would call the stock service)
STOCK = {"book": 5, "lamp": 2, "mug": 12, "sofa": 0}
#: where the courier delivers
SHIPS_TO = {"NL", "BE", "DE", "FR", "GB", "US"}


class CardDeclined(Exception):
    pass


class OutOfStock(Exception):
    pass


class CannotShip(Exception):
    pass


# Retries are for transient failures (a timeout talking to the provider); a declined card or an empty shelf fails
# the same way every time, so the steps whose failures are final run once.
@tideflow.activity(retries=3, retry_delay=2, timeout=30)
def charge_card(order_id: int, amount: int) -> dict[str, Any]:
    if amount > 1000:
        raise CardDeclined(f"order {order_id}: {amount} is over the card's limit")
    return {"charge_id": f"ch-{order_id}", "amount": amount}


@tideflow.activity(retries=3, retry_delay=2, timeout=30)
def refund_card(order_id: int, charge_id: str) -> dict[str, Any]:
    return {"refunded": charge_id, "order": order_id}


@tideflow.activity(timeout=30)
def reserve_item(order_id: int, item: str) -> str:
    if STOCK.get(item, 0) <= 0:
        raise OutOfStock(f"no {item} left")
    return f"res-{order_id}-{item}"


@tideflow.activity(retries=3, retry_delay=2, timeout=30)
def release_item(order_id: int, item: str) -> str:
    return f"released {item} for order {order_id}"


@tideflow.activity(timeout=60)
def ship_order(order_id: int, country: str) -> dict[str, Any]:
    if country not in SHIPS_TO:
        raise CannotShip(f"no courier delivers to {country}")
    return {"tracking": f"TRK-{order_id}-{country}", "country": country}


@tideflow.workflow(name="order_saga", description="charge, reserve, ship; refund and release on failure")
def order_saga(ctx: tideflow.Context, order_id: int, amount: int, items: list[str],
               country: str = "NL") -> dict[str, Any]:
    # Each entry undoes one step that succeeded; they run in reverse order if a later step fails.
    undo: list[tuple[Any, list[Any]]] = []
    try:
        ctx.set_state("stage", "charging")
        receipt = ctx.activity(charge_card, order_id, amount)
        undo.append((refund_card, [order_id, receipt["charge_id"]]))

        ctx.set_state("stage", "reserving")
        handles = [ctx.start_activity(reserve_item, order_id, item) for item in items]
        # Wait for all of them (return_exceptions: an item that failed must not hide the ones that succeeded,
        # which must be released).
        outcomes = ctx.gather(*handles, return_exceptions=True)
        for item, outcome in zip(items, outcomes, strict=True):
            if not isinstance(outcome, tideflow.ActivityError):
                undo.append((release_item, [order_id, item]))
        failed = [o for o in outcomes if isinstance(o, tideflow.ActivityError)]
        if failed:
            raise failed[0]

        ctx.set_state("stage", "shipping")
        shipment = ctx.activity(ship_order, order_id, country)
    except tideflow.ActivityError as exc:
        ctx.set_state("stage", "compensating")
        for fn, args in reversed(undo):
            ctx.activity(fn, *args)
        ctx.set_state("stage", "compensated")
        return {"status": "compensated", "order_id": order_id, "failed": exc.activity, "error": exc.type,
                "message": exc.message, "undone": len(undo)}
    ctx.set_state("stage", "shipped")
    return {"status": "shipped", "order_id": order_id, "charge": receipt, "reservations": outcomes,
            "shipment": shipment}
