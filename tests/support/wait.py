"""Polling with a deadline: the only way tests wait for something to happen."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 30.0,
    interval: float = 0.05,
    message: str = "condition not met",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``predicate`` until it returns something truthy and return that value.

    Raises ``AssertionError`` (with ``message`` and the last value seen) once ``timeout`` seconds have
    passed. Exceptions listed in ``ignore`` count as a falsy result (e.g. "connection refused" while a
    server starts); the last one is reported if the deadline passes.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
        except ignore as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} (waited {timeout:.1f}s; last value: {last!r})")
        time.sleep(interval)


def read_lines(path: Path | str) -> list[str]:
    """The complete (newline-terminated) lines of ``path``; [] if it does not exist yet."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    return lines[:-1]  # the last element is "" or an incomplete line still being written


def wait_for_file_lines(path: Path | str, n: int, timeout: float = 30.0, interval: float = 0.05) -> list[str]:
    """Wait until ``path`` holds at least ``n`` complete lines; return all of them."""
    deadline = time.monotonic() + timeout
    while True:
        lines = read_lines(path)
        if len(lines) >= n:
            return lines
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"{path} did not reach {n} complete line(s) within {timeout:.1f}s; "
                f"it has {len(lines)}, last ones: {lines[-10:]!r}"
            )
        time.sleep(interval)
