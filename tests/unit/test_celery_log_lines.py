"""Celery's and beat's routine INFO lines about the reconciler's beat job are logged at DEBUG (tasks/celery_app.py);
every other line, and every line about it at another level, is left alone. The same records as Celery makes
them (celery/app/trace.py ``info``, celery/worker/strategy.py, celery/beat.py ``apply_entry``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

import tasks.celery_app  # noqa: F401 - installs the filters


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def captured() -> Iterator[Capture]:
    handler = Capture()
    loggers = [logging.getLogger(n) for n in ("celery.app.trace", "celery.worker.strategy", "celery.beat")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield handler
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)


def _celery_lines(name: str) -> None:
    ctx = {"id": "abc", "name": name, "runtime": 0.01, "return_value": "'x'", "args": "[]", "kwargs": "{}",
           "eta": None}
    logging.getLogger("celery.worker.strategy").info("Task %(name)s[%(id)s] received", ctx, extra={"data": ctx})
    logging.getLogger("celery.app.trace").info("Task %(name)s[%(id)s] succeeded in %(runtime)ss: "
                                               "%(return_value)s", ctx, extra={"data": ctx})
    entry = "tideflow-reconcile" if name == "tideflow.reconcile" else "other"
    logging.getLogger("celery.beat").info("Scheduler: Sending due task %s (%s)", entry, name)


def test_the_reconcilers_routine_lines_are_dropped_at_info(captured: Capture) -> None:
    for name in ("celery.app.trace", "celery.worker.strategy", "celery.beat"):
        logging.getLogger(name).setLevel(logging.INFO)
    _celery_lines("tideflow.reconcile")
    assert captured.records == []
    _celery_lines("tideflow.execute[wf/a]")
    assert [r.levelno for r in captured.records] == [logging.INFO] * 3


def test_they_are_debug_lines_at_debug(captured: Capture) -> None:
    for name in ("celery.app.trace", "celery.worker.strategy", "celery.beat"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    _celery_lines("tideflow.reconcile")
    assert [(r.levelname, r.getMessage()[:30]) for r in captured.records] == [
        ("DEBUG", "Task tideflow.reconcile[abc] r"), ("DEBUG", "Task tideflow.reconcile[abc] s"),
        ("DEBUG", "Scheduler: Sending due task ti")]


def test_a_failing_reconcile_stays_an_error(captured: Capture) -> None:
    logging.getLogger("celery.app.trace").setLevel(logging.INFO)
    ctx = {"id": "abc", "name": "tideflow.reconcile", "exc": "boom"}
    logging.getLogger("celery.app.trace").error("Task %(name)s[%(id)s] raised unexpected: %(exc)s", ctx,
                                                extra={"data": ctx})
    assert [r.levelno for r in captured.records] == [logging.ERROR]
