"""An expense approval: ask the approver, wait for their answer as a signal; with no answer in time, escalate to
the next approver once; with still no answer, reject automatically. The run publishes its stage (``state_values``)
so a UI or a script can show where each request is.

Run it (every process needs the module)::

    export TIDEFLOW_WORKFLOW_MODULES=examples.approvals
    tideflow run start expense_approval -p request_id=EXP-7 -p amount=250 -p timeout=3600
    tideflow run show ID --json                      # "state_values": {"stage": "waiting for manager"}
    tideflow run signal ID approve --data '{"approved": true, "by": "ann"}'
    tideflow run show ID --json                      # "result": {"approved": true, "by": "ann", ...}

or, from application code: ``tideflow.Client.from_env().signal(ID, "approve", {"approved": True, "by": "ann"})``.

Nothing holds a worker while the run waits: the wait is a row with a due time, and the reconciler ends it with
``None`` at the timeout (also when every process was down over it). A signal sent before the run waits for it is
kept and delivered to the next wait; ``--key`` makes a repeated send deliver once.
"""

from __future__ import annotations

from typing import Any

import tideflow


@tideflow.activity(retries=3, retry_delay=5, timeout=30)
def notify_approver(approver: str, request_id: str, amount: int) -> str:
    # a real one would send an e-mail or a chat message with a link that sends the signal
    return f"asked {approver} to approve {request_id} ({amount})"


@tideflow.activity(retries=3, retry_delay=5, timeout=30)
def record_decision(request_id: str, approved: bool, by: str | None, reason: str) -> dict[str, Any]:
    return {"request_id": request_id, "approved": approved, "by": by, "reason": reason}


@tideflow.workflow(name="expense_approval", description="wait for an approval signal; escalate, then auto-reject")
def expense_approval(ctx: tideflow.Context, request_id: str, amount: int, approver: str = "manager",
                     escalate_to: str | None = "director", timeout: float = 24 * 3600) -> dict[str, Any]:
    decision = None
    asked = []
    for who in [approver] + ([escalate_to] if escalate_to else []):
        asked.append(who)
        ctx.set_state("stage", f"waiting for {who}")
        ctx.activity(notify_approver, who, request_id, amount)
        decision = ctx.wait_signal("approve", timeout=timeout)  # the signal's data, or None on timeout
        if decision is not None:
            break
    if decision is None:
        ctx.set_state("stage", "auto-rejected")
        return ctx.activity(record_decision, request_id, False, None, f"no answer from {', '.join(asked)} in time")
    # the signal's data: {"approved": bool, "by": name, "reason": text}; a bare true/false works too
    if not isinstance(decision, dict):
        decision = {"approved": bool(decision)}
    approved = bool(decision.get("approved", True))
    ctx.set_state("stage", "approved" if approved else "rejected")
    return ctx.activity(record_decision, request_id, approved, decision.get("by", asked[-1]),
                        str(decision.get("reason", "")))
