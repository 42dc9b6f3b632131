"""Operators pressing the same button at once: concurrent requests racing a state change, for the tests of
guarded transitions over HTTP (tests/integration/test_run_commands.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx


def press_concurrently(
    base: str, headers: dict[str, str], path: str, release: Callable[[], None], *, presses: int = 2,
    stop_unless: str | None = None, json: object = None,
) -> list[tuple[int, str]]:
    """``presses`` clients each ``POST path`` again and again until one of them gets a 200; ``release()`` is
    called 0.3 s after they started (it lets the state they race on change, e.g. a task finish). With
    ``stop_unless``: a client stops at a refusal whose message does not hold it (refused because another request
    landed first, not for being early). ``json``: the body of each POST. Every answer as (status, message; ""
    for a 200), in the order they came."""
    answers: list[tuple[int, str]] = []
    lock = threading.Lock()
    landed = threading.Event()

    def press() -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
            while not landed.is_set():
                r = http.post(path, json=json)
                message = "" if r.status_code == 200 else _message(r)
                with lock:
                    answers.append((r.status_code, message))
                if r.status_code == 200:
                    landed.set()
                elif stop_unless is not None and stop_unless not in message:
                    return
    threads = [threading.Thread(target=press) for _ in range(presses)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    release()
    for t in threads:
        t.join(timeout=60)
    return answers


def _message(r: httpx.Response) -> str:
    try:
        return str(r.json()["message"])
    except (ValueError, KeyError, TypeError):
        return r.text
