"""Run callbacks after a SQLAlchemy transaction commits, never inside it (the "publish after commit" rule).

Semantics (see shared/reference/celery-sqlalchemy-facts.md; ``after_commit`` also fires when a SAVEPOINT
is released, and the outer transaction can still roll back afterwards):

* callbacks are kept per transaction in ``session.info``, keyed by the innermost (nested) transaction;
* a transaction that ends without committing drops its callbacks (rolled-back savepoints publish nothing);
* a committed savepoint hands its callbacks to its parent, which may still roll back;
* only when the root transaction has committed do the callbacks run, in registration order. Errors are
  logged and swallowed: the commit already happened, and the reconciler re-publishes what was not sent.

Works with any :class:`~sqlalchemy.orm.Session`, including a caller's own, so that "start a run inside my
transaction" publishes only if the caller commits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

log = logging.getLogger(__name__)

_CALLBACKS = "tideflow.on_commit"
_COMMITTED = "tideflow.committed"


def _innermost(session: Session) -> SessionTransaction | None:
    return session.get_nested_transaction() or session.get_transaction()


def on_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run ``callback`` once the session's root transaction has committed; drop it on rollback."""
    txn = _innermost(session)
    if txn is None:
        raise RuntimeError("on_commit() needs a session inside a transaction")
    session.info.setdefault(_CALLBACKS, {}).setdefault(txn, []).append(callback)


def pending_callbacks(session: Session) -> int:
    return sum(len(v) for v in session.info.get(_CALLBACKS, {}).values())


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    txn = _innermost(session)
    if txn is not None and session.info.get(_CALLBACKS):
        session.info.setdefault(_COMMITTED, set()).add(txn)


@event.listens_for(Session, "after_transaction_end")
def _after_transaction_end(session: Session, txn: SessionTransaction) -> None:
    callbacks = session.info.get(_CALLBACKS)
    if not callbacks:
        return
    committed_set = session.info.get(_COMMITTED, set())
    committed = txn in committed_set
    committed_set.discard(txn)
    mine = callbacks.pop(txn, None)
    if not mine or not committed:
        return
    if txn.parent is not None:
        callbacks.setdefault(txn.parent, []).extend(mine)
        return
    for cb in mine:
        try:
            cb()
        except Exception:  # noqa: BLE001 - the commit happened; the reconciler covers a lost publish
            log.exception("after-commit callback %r failed; the reconciler will re-publish", cb)
