"""Task bodies for benchmarks: no-ops, so the figures are the engine's own cost."""

from __future__ import annotations

import time
from typing import Any


def noop(context: Any = None) -> None:
    return None


def sleep(seconds: float = 30.0, context: Any = None) -> None:
    """A long body (recovery benchmarks kill the worker running it)."""
    time.sleep(seconds)
