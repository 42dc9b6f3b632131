"""The per-process cache of code runs' terminal history prefixes (``app.code.decider.PrefixCache``): an advance
reads only the steps from the first live one on, and a cached prefix the database no longer holds is read again.
In process (stub broker), PostgreSQL and SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import update

from app.client import Tideflow
from app.clock import utcnow
from app.code import decider
from app.config import load_settings
from app.db import code_history
from app.db.schema import TaskRun
from app.runtime import Runtime
from app.testing import StubDispatcher
from tests.support import codeflows


@pytest.fixture
def code(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Runtime, Tideflow, StubDispatcher, list[int]]]:
    codeflows.CALLS.clear()
    codeflows.FAIL.clear()
    reads: list[int] = []  # the position each advance read the history from
    for fn in ("history_from", "history_since"):
        real = getattr(code_history, fn)

        def recording(s: Any, run_id: int, from_seq: int = 0, real: Any = real) -> Any:
            reads.append(from_seq)
            return real(s, run_id, from_seq)

        monkeypatch.setattr(code_history, fn, recording)
    monkeypatch.setattr(decider, "PREFIXES", decider.PrefixCache())
    stub = StubDispatcher()
    rt = Runtime.create(load_settings(database_url=db_url, workflow_modules="tests.support.codeflows"), stub)
    yield rt, Tideflow(rt), stub, reads
    rt.close()


def test_advances_read_only_past_the_terminal_prefix(code: tuple[Runtime, Tideflow, StubDispatcher, list[int]]) -> None:
    rt, tf, stub, reads = code
    run_id = tf.start_run("looper", {"n": 12})
    stub.drain(rt)
    run = tf.run(run_id)
    assert run["state"] == "succeeded", run
    assert run["result"] == sum(range(12))
    assert [c for c in codeflows.CALLS if c[0] == "add"] == [("add", (sum(range(i)), i)) for i in range(12)]
    # the first advance reads from position 0; each later one from the step it is waiting for
    assert reads[0] == 0
    assert reads[1:] == list(range(len(reads) - 1)), reads


def test_a_prefix_changed_in_the_database_is_read_again(
        code: tuple[Runtime, Tideflow, StubDispatcher, list[int]]) -> None:
    rt, tf, stub, reads = code
    run_id = tf.start_run("approval")
    stub.drain(rt)
    tf.signal(run_id, "approve", "first")
    stub.drain(rt)
    assert [t["state"] for t in tf.run(run_id)["tasks"]] == ["succeeded", "running"]
    # as if the transaction that recorded position 0 had rolled back and another had written it since
    with rt.db.transaction() as s:
        s.execute(update(TaskRun).where(TaskRun.run_id == run_id, TaskRun.seq == 0)
                  .values(result="rewritten", updated_at=utcnow()))
    reads.clear()
    tf.signal(run_id, "approve", "second")
    stub.drain(rt)
    run = tf.run(run_id)
    assert run["state"] == "succeeded", run
    assert run["result"] == {"approved": ["rewritten", "second"]}
    assert reads == [1, 0]  # the cached prefix no longer matched: the history was read again from the start
