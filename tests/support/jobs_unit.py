"""Callables the unit tests run through the python executor (``tests.support.jobs_unit:NAME``)."""

from __future__ import annotations

import sys
from typing import Any

NOT_CALLABLE = 42


def add(a: Any, b: Any) -> dict[str, Any]:
    return {"sum": a + b, "types": [type(a).__name__, type(b).__name__]}


def echo(**kwargs: Any) -> dict[str, Any]:
    return kwargs


def shout(text: str) -> str:
    print(f"out: {text}")
    print(f"err: {text}", file=sys.stderr)
    return text.upper()


def boom(message: str = "kaboom") -> None:
    print("about to fail")
    raise ValueError(message)


def not_json() -> object:
    return {"s": {1, 2, 3}}


def nan() -> float:
    return float("nan")


def with_context(x: int, context: Any = None) -> dict[str, Any]:
    return {"x": x, "task": context.task_name, "attempt": context.attempt, "run": context.run_id}


def catches_everything(context: Any) -> str:
    context.stop.set()  # as if the lease keeper had stopped us while we swallowed the interruption
    return "pretending nothing happened"


class Namespace:
    @staticmethod
    def nested(v: int) -> int:
        return v * 2


def raises_stopped() -> None:
    from app.errors import TaskStopped

    raise TaskStopped("lease lost")


def fail_first(context: Any, v: Any = None) -> dict[str, Any]:
    """Fails on its first attempt, succeeds on any later one (of the task, whichever run)."""
    if context.attempt == 1:
        raise RuntimeError("the first attempt fails")
    return {"v": v}
