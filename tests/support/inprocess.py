"""One process's services in the test's own process, on a test database, its broker the in-process stub
(:class:`app.testing.StubDispatcher`: ``drain`` delivers what was published, as workers would): what the
in-process tests of code workflows share (tests/integration/test_code_workflows.py, test_examples_code.py,
test_api.py). Real Celery workers: tests/support/cluster.py."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import update

from app.client import Tideflow
from app.clock import utcnow
from app.config import load_settings
from app.db.schema import TaskRun
from app.runtime import Runtime
from app.services.reconciler import Report, reconcile_once
from app.testing import StubDispatcher
from tests.support import codeflows

CODEFLOWS = "tests.support.codeflows"


def reset_codeflows() -> None:
    """Forget what tests/support/codeflows.py's activities recorded and the failures a test asked of them."""
    codeflows.CALLS.clear()
    codeflows.FAIL.clear()


def fire_timers(rt: Runtime, stub: StubDispatcher) -> Report:
    """As if every pending timer (and signal timeout) were due now: a reconciler pass, and the messages it leads
    to; what the pass did."""
    with rt.db.transaction() as s:
        s.execute(update(TaskRun).where(TaskRun.state == "running", TaskRun.due_at.is_not(None))
                  .values(due_at=utcnow() - timedelta(seconds=1)))
    done = reconcile_once(rt)
    stub.drain(rt)
    return done


class StubProcess:
    """A process importing ``modules`` (``TIDEFLOW_WORKFLOW_MODULES``), with its client ``tf``; each call that
    publishes is followed by a drain."""

    def __init__(self, db_url: str, modules: str = CODEFLOWS, **settings: Any):
        self.stub = StubDispatcher()
        self.rt = Runtime.create(load_settings(database_url=db_url, workflow_modules=modules, **settings), self.stub)
        self.tf = Tideflow(self.rt)

    def start(self, workflow: Any, params: dict[str, Any] | None = None, **kw: Any) -> int:
        run_id = self.tf.start_run(workflow, params, **kw)
        self.stub.drain(self.rt)
        return run_id

    def run(self, run_id: int) -> dict[str, Any]:
        return self.tf.run(run_id)

    def signal(self, run_id: int, name: str, data: Any) -> None:
        self.tf.signal(run_id, name, data)
        self.stub.drain(self.rt)

    def fire_timers(self) -> Report:
        return fire_timers(self.rt, self.stub)
