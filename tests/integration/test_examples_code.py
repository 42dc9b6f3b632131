"""The code workflow examples (examples/orders.py, approvals.py, batches.py) run in process with the stub broker
(the harness of test_code_workflows.py), on PostgreSQL and SQLite: the saga's happy and compensation paths, the
approval approved / escalated / timed out, the continue_as_new chain's total, and the replay check of an exported
history (passing, and naming the position where a changed version of the saga diverges)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tideflow
from app.services.reconciler import Report
from examples import orders
from examples.orders import order_saga
from tests.support.inprocess import StubProcess

MODULES = "examples.orders,examples.approvals,examples.batches"


class Examples(StubProcess):
    def __init__(self, db_url: str):
        super().__init__(db_url, MODULES)

    def fire_timers(self) -> Report:
        """As if every pending timer / signal timeout were due now, then a reconciler pass and what it leads to."""
        done = super().fire_timers()
        assert done.fired_timers >= 1
        return done


def steps(run: dict[str, Any]) -> list[tuple[str, str]]:
    """(step name, state) in position order: what the workflow did, in the order it did it."""
    return [(t["name"].rpartition("#")[0], t["state"]) for t in sorted(run["tasks"], key=lambda t: t["seq"])]


@pytest.fixture
def ex(db_url: str) -> Iterator[Examples]:
    h = Examples(db_url)
    yield h
    h.rt.close()


# -- the order saga ------------------------------------------------------------------------------------------------

def test_order_saga_happy_path(ex: Examples) -> None:
    run = ex.run(ex.start("order_saga", {"order_id": 1, "amount": 30, "items": ["book", "lamp"]}))
    assert run["state"] == "succeeded", run
    assert steps(run) == [("charge_card", "succeeded"), ("reserve_item", "succeeded"), ("reserve_item", "succeeded"),
                          ("ship_order", "succeeded")]
    assert run["result"] == {"status": "shipped", "order_id": 1, "charge": {"charge_id": "ch-1", "amount": 30},
                             "reservations": ["res-1-book", "res-1-lamp"],
                             "shipment": {"tracking": "TRK-1-NL", "country": "NL"}}
    assert run["state_values"] == {"stage": "shipped"}


def test_order_saga_compensates_in_reverse_order_when_shipping_fails(ex: Examples) -> None:
    run = ex.run(ex.start("order_saga", {"order_id": 2, "amount": 30, "items": ["book", "lamp"], "country": "AQ"}))
    assert run["state"] == "succeeded", run
    assert steps(run) == [("charge_card", "succeeded"), ("reserve_item", "succeeded"), ("reserve_item", "succeeded"),
                          ("ship_order", "failed"),
                          # undone in reverse: the last reservation first, the charge last
                          ("release_item", "succeeded"), ("release_item", "succeeded"), ("refund_card", "succeeded")]
    by_seq = sorted(run["tasks"], key=lambda t: t["seq"])
    assert [t["result"] for t in by_seq[4:]] == ["released lamp for order 2", "released book for order 2",
                                                 {"refunded": "ch-2", "order": 2}]
    assert run["result"] == {"status": "compensated", "order_id": 2, "failed": "ship_order", "error": "CannotShip",
                             "message": "no courier delivers to AQ", "undone": 3}
    assert run["state_values"] == {"stage": "compensated"}


def test_order_saga_releases_only_what_it_reserved(ex: Examples) -> None:
    run = ex.run(ex.start("order_saga", {"order_id": 3, "amount": 30, "items": ["book", "sofa", "mug"]}))
    assert run["state"] == "succeeded", run
    assert steps(run) == [("charge_card", "succeeded"), ("reserve_item", "succeeded"), ("reserve_item", "failed"),
                          ("reserve_item", "succeeded"),
                          ("release_item", "succeeded"), ("release_item", "succeeded"), ("refund_card", "succeeded")]
    assert [t["result"] for t in sorted(run["tasks"], key=lambda t: t["seq"])[4:6]] == [
        "released mug for order 3", "released book for order 3"]
    assert run["result"]["failed"] == "reserve_item" and run["result"]["error"] == "OutOfStock"
    assert run["result"]["undone"] == 3


# -- the approval --------------------------------------------------------------------------------------------------

def test_approval_approved_by_signal(ex: Examples) -> None:
    run_id = ex.start("expense_approval", {"request_id": "EXP-1", "amount": 250, "timeout": 3600})
    run = ex.run(run_id)
    assert run["state"] == "running"
    assert run["state_values"] == {"stage": "waiting for manager"}
    assert steps(run) == [("notify_approver", "succeeded"), ("approve", "running")]
    ex.signal(run_id, "approve", {"approved": True, "by": "ann"})
    run = ex.run(run_id)
    assert run["state"] == "succeeded", run
    assert run["result"] == {"request_id": "EXP-1", "approved": True, "by": "ann", "reason": ""}
    assert run["state_values"] == {"stage": "approved"}


def test_approval_escalates_on_timeout_then_is_rejected_by_the_next_approver(ex: Examples) -> None:
    run_id = ex.start("expense_approval", {"request_id": "EXP-2", "amount": 900, "timeout": 60})
    ex.fire_timers()  # the manager did not answer in time
    run = ex.run(run_id)
    assert run["state"] == "running"
    assert run["state_values"] == {"stage": "waiting for director"}
    assert steps(run) == [("notify_approver", "succeeded"), ("approve", "succeeded"),
                          ("notify_approver", "succeeded"), ("approve", "running")]
    ex.signal(run_id, "approve", {"approved": False, "by": "dora", "reason": "over budget"})
    run = ex.run(run_id)
    assert run["state"] == "succeeded", run
    assert run["result"] == {"request_id": "EXP-2", "approved": False, "by": "dora", "reason": "over budget"}
    assert run["state_values"] == {"stage": "rejected"}


def test_approval_times_out_and_is_auto_rejected(ex: Examples) -> None:
    run_id = ex.start("expense_approval", {"request_id": "EXP-3", "amount": 40, "timeout": 60})
    ex.fire_timers()
    ex.fire_timers()
    run = ex.run(run_id)
    assert run["state"] == "succeeded", run
    assert run["result"] == {"request_id": "EXP-3", "approved": False, "by": None,
                             "reason": "no answer from manager, director in time"}
    assert run["state_values"] == {"stage": "auto-rejected"}
    assert [s for s in steps(run) if s[0] == "approve"] == [("approve", "succeeded")] * 2
    # with no one to escalate to, one timeout is enough
    other = ex.start("expense_approval", {"request_id": "EXP-4", "amount": 40, "timeout": 60, "escalate_to": None})
    ex.fire_timers()
    assert ex.run(other)["result"]["reason"] == "no answer from manager in time"


# -- the continue_as_new loop ----------------------------------------------------------------------------------

def test_batch_loop_continues_as_new_and_ends_with_the_total(ex: Examples) -> None:
    run = ex.run(ex.start("batch_totals", {"end": 100, "batch_size": 10, "batches_per_run": 3}))
    chain = [run]
    while chain[-1]["continued_run_id"]:
        chain.append(ex.run(chain[-1]["continued_run_id"]))
    assert [r["state"] for r in chain] == ["succeeded"] * 4
    assert [r["state_values"] for r in chain] == [{"cursor": 30}, {"cursor": 60}, {"cursor": 90}, {"cursor": 100}]
    assert [r["params"]["cursor"] for r in chain[1:]] == [30, 60, 90]
    assert all(len(r["tasks"]) <= 6 for r in chain)  # each run's history stays bounded
    assert chain[-1]["result"] == {"total": sum(range(100)), "cursor": 100, "runs": 4}
    assert all(r["result"] is None for r in chain[:-1])


# -- the replay check on an exported history --------------------------------------------------------------------

@tideflow.workflow(name="order_saga_undo_forward")
def order_saga_undo_forward(ctx: tideflow.Context, order_id: int, amount: int, items: list[str],
                            country: str = "NL") -> dict[str, Any]:
    """order_saga with a deliberate change: it undoes in the order the steps were done (refund first)."""
    undo: list[tuple[Any, list[Any]]] = []
    try:
        receipt = ctx.activity(orders.charge_card, order_id, amount)
        undo.append((orders.refund_card, [order_id, receipt["charge_id"]]))
        handles = [ctx.start_activity(orders.reserve_item, order_id, item) for item in items]
        outcomes = ctx.gather(*handles, return_exceptions=True)
        undo += [(orders.release_item, [order_id, item]) for item, o in zip(items, outcomes, strict=True)
                 if not isinstance(o, tideflow.ActivityError)]
        ctx.activity(orders.ship_order, order_id, country)
    except tideflow.ActivityError:
        for fn, args in undo:
            ctx.activity(fn, *args)
        return {"status": "compensated"}
    return {"status": "shipped"}


def test_replay_of_an_exported_history(ex: Examples, tmp_path: Path) -> None:
    run_id = ex.start("order_saga", {"order_id": 5, "amount": 30, "items": ["book", "lamp"], "country": "AQ"})
    view = ex.run(run_id)
    assert view["state"] == "succeeded" and view["result"]["status"] == "compensated"
    path = tmp_path / f"order-{run_id}.json"
    path.write_text(json.dumps(view, default=str))  # what `tideflow run show ID --json > file` saves

    report = tideflow.replay(order_saga, path)
    assert report.ok, report
    assert report.steps == 7 and report.outcome == "returned"
    assert tideflow.replay("order_saga", str(path)).ok

    changed = tideflow.replay(order_saga_undo_forward, path)
    assert not changed.ok
    assert changed.divergence == ("position 4: the history holds activity 'release_item', the code asked for "
                                  "activity 'refund_card'")
    assert "divergence at position 4" in str(changed)
    # a compatible history (nothing to undo) replays under both
    happy = tmp_path / "happy.json"
    happy.write_text(json.dumps(ex.run(ex.start("order_saga", {"order_id": 6, "amount": 1, "items": ["mug"]})),
                                default=str))
    assert tideflow.replay(order_saga, happy).ok
    assert tideflow.replay(order_saga_undo_forward, happy).ok


@pytest.mark.parametrize("module", ["orders", "approvals", "batches"])
def test_each_example_says_how_to_run_it(module: str) -> None:
    import importlib

    from app.code import registry

    mod = importlib.import_module(f"examples.{module}")
    doc = mod.__doc__ or ""
    assert f"TIDEFLOW_WORKFLOW_MODULES=examples.{module}" in doc
    names = [w.name for w in registry.workflows() if w.module == mod.__name__]
    assert names and all(f"tideflow run start {n}" in doc for n in names), (names, doc)
