"""Beat stops between ticks: a SIGTERM that arrives while a tick publishes takes effect when the tick returns."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from tasks.celery_app import graceful_beat_stop


class Scheduler:
    def __init__(self) -> None:
        self.published: list[str] = []

    def tick(self) -> float:
        os.kill(os.getpid(), signal.SIGTERM)  # arrives in the middle of the tick
        self.published.append("reconcile")  # the publish the signal must not cut off
        return 0.5


class Service:
    def __init__(self) -> None:
        self.scheduler = Scheduler()


@pytest.fixture
def restore_handlers() -> Any:
    saved = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGTERM, saved[0])
    signal.signal(signal.SIGINT, saved[1])


def test_a_signal_during_a_tick_stops_beat_after_it(restore_handlers: Any) -> None:
    service = Service()
    graceful_beat_stop(service)
    with pytest.raises(SystemExit):
        service.scheduler.tick()
    assert service.scheduler.published == ["reconcile"]


def test_a_signal_between_ticks_stops_beat_at_once(restore_handlers: Any) -> None:
    graceful_beat_stop(Service())
    with pytest.raises(SystemExit):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next bytecode: raises here
