"""An in-process broker for tests (like dramatiq's ``StubBroker``): fast, deterministic protocol tests.

:class:`StubDispatcher` is a :class:`~app.dispatch.Dispatcher` that keeps the messages the services publish
(after commit, as the real one) in a queue, JSON round-tripped as Celery would send them; :meth:`drain`
delivers them by calling the worker and master services directly, in this thread, until nothing is left.
A test of the protocol (what runs next, every way a task can fail to start, retries, lost attempts) then runs on
SQLite or PostgreSQL in milliseconds, without Celery processes or polling::

    stub = StubDispatcher()
    rt = Runtime.create(load_settings(database_url=url), stub)
    run_id = Tideflow(rt).start_run("etl")
    stub.drain(rt)
    assert Tideflow(rt).run(run_id)["state"] == "succeeded"

It never stands in for a test of delivery, crash or recovery: those use real Redis and ``celery worker``
processes. ``drain(crash=...)`` only simulates a worker that claimed an attempt and died (the attempt stays
running until its lease is expired and the reconciler runs, both of which the test does explicitly).
"""

from __future__ import annotations

import json
import uuid
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from app.clock import utcnow
from app.dispatch import ExecuteMessage
from app.runtime import Runtime


@dataclass
class Delivered:
    """What :meth:`StubDispatcher.drain` did."""

    executed: list[tuple[str, int, str]] = field(default_factory=list)  # (label, attempt, worker outcome)
    advanced: list[int] = field(default_factory=list)
    crashed: list[tuple[str, int]] = field(default_factory=list)  # (label, attempt) claimed, never finished


class StubDispatcher:
    def __init__(self) -> None:
        self.queue: deque[tuple[str, dict[str, Any]]] = deque()
        #: execute messages that came before their retry delay (a Celery countdown would still hold them)
        self.delayed: list[dict[str, Any]] = []
        self.published: list[tuple[str, dict[str, Any]]] = []

    # -- the Dispatcher protocol -----------------------------------------------------------------------
    def execute(self, messages: Sequence[ExecuteMessage]) -> None:
        for m in messages:
            self._put("execute", asdict(m))

    def advance(self, run_ids: Sequence[int], labels: Mapping[int, str] | None = None) -> None:
        for run_id in run_ids:
            self._put("advance", {"run_id": run_id})

    def ping(self) -> bool:
        return True

    def queue_depths(self, queues: Collection[str]) -> dict[str, int | None]:
        counts: dict[str, int | None] = {q: 0 for q in queues}
        for kind, body in self.queue:
            if kind == "execute" and body["queue"] in counts:
                counts[body["queue"]] = (counts[body["queue"]] or 0) + 1
        return counts

    def _put(self, kind: str, body: dict[str, Any]) -> None:
        message = (kind, json.loads(json.dumps(body)))  # what a JSON broker would hand a worker
        self.queue.append(message)
        self.published.append(message)

    # -- delivery --------------------------------------------------------------------------------------
    def drain(
        self, rt: Runtime, *, crash: Callable[[str, int], bool] | None = None, max_messages: int = 100_000,
    ) -> Delivered:
        """Deliver every queued message (and the ones they lead to) through the services. ``crash(label,
        attempt)``: True claims that attempt and drops the message, as a worker killed mid-body would."""
        from app.services import attempts
        from app.services.master import advance_run
        from app.services.worker import Outcome, execute

        done = Delivered()
        for _ in range(max_messages):
            if not self.queue:
                return done
            kind, body = self.queue.popleft()
            if kind == "advance":
                advance_run(rt, int(body["run_id"]), actor="master")
                done.advanced.append(int(body["run_id"]))
                continue
            label, attempt = str(body["label"]), int(body["attempt"])
            if crash is not None and crash(label, attempt):
                with rt.db.transaction() as s:
                    if attempts.claim(s, rt, int(body["task_run_id"]), attempt, now=utcnow(),
                                      token=str(uuid.uuid4())) is not None:
                        done.crashed.append((label, attempt))
                continue
            result = execute(rt, int(body["task_run_id"]), attempt)
            if result.outcome == Outcome.TOO_EARLY:
                self.delayed.append(body)
            done.executed.append((label, attempt, str(result.outcome)))
        raise AssertionError(f"the stub broker still had {len(self.queue)} messages after {max_messages}")

    def release_delayed(self) -> None:
        """Put the messages that came too early back in the queue (after the test moved time on)."""
        for body in self.delayed:
            self._put("execute", body)
        self.delayed.clear()
