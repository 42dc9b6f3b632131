"""Polling with a deadline: the only way tests (and bench/) wait for something to happen. :func:`poll` is the
one loop; :func:`wait_until` fails the test at the deadline, :func:`holds_for` checks that something stays
true for a while."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def poll(predicate: Callable[[], T | None], timeout: float, interval: float = 0.05) -> T | None:
    """Call ``predicate`` until it returns something truthy and return that value; None once ``timeout``
    seconds have passed (``predicate`` is always called at least once, and once more after the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def wait_until(
    predicate: Callable[[], T | None],
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
    last: list[object] = [None]

    def attempt() -> T | None:
        try:
            last[0] = value = predicate()
        except ignore as exc:
            last[0] = exc
            return None
        return value

    found = poll(attempt, timeout, interval)
    if found is None:
        raise AssertionError(f"{message} (waited {timeout:.1f}s; last value: {last[0]!r})")
    return found


def holds_for(predicate: Callable[[], object], seconds: float, interval: float = 0.05,
              message: str = "condition stopped holding") -> None:
    """Check that ``predicate`` stays truthy for ``seconds`` (called every ``interval``, at the end too).
    Raises ``AssertionError`` with ``message`` at the first falsy result; an assertion inside ``predicate``
    fails with its own message."""
    if poll(lambda: not predicate(), seconds, interval):
        raise AssertionError(message)


def read_lines(path: Path | str) -> list[str]:
    """The complete (newline-terminated) lines of ``path``; [] if it does not exist yet."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    return lines[:-1]  # the last element is "" or an incomplete line still being written


def pid_in(path: Path | str) -> int | None:
    """The process id written to ``path`` (a body's ``echo $! > path``); None until it is there, complete."""
    try:
        text = Path(path).read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def wait_for_pid(path: Path | str, timeout: float = 30.0, interval: float = 0.05) -> int:
    """Wait until ``path`` holds a process id; return it."""
    return wait_until(lambda: pid_in(path), timeout=timeout, interval=interval, message=f"{path} never got a pid")


def wait_for_file_lines(path: Path | str, n: int, timeout: float = 30.0, interval: float = 0.05) -> list[str]:
    """Wait until ``path`` holds at least ``n`` complete lines; return all of them."""
    def enough() -> tuple[list[str]] | None:
        lines = read_lines(path)
        return (lines,) if len(lines) >= n else None  # in a tuple: no lines (n = 0) is an answer too

    found = poll(enough, timeout, interval)
    if found is None:
        lines = read_lines(path)
        raise AssertionError(
            f"{path} did not reach {n} complete line(s) within {timeout:.1f}s; "
            f"it has {len(lines)}, last ones: {lines[-10:]!r}"
        )
    return found[0]
