"""Fault injection points for the chaos campaign (``tests/chaos``). Off unless a ``TIDEFLOW_FAULT_*``
setting says otherwise; they exist because some crashes cannot be hit reliably from outside the process
(e.g. between a commit and the publish that follows it)."""

from __future__ import annotations

import logging
import os
import random
import signal

log = logging.getLogger(__name__)


def crash_point(probability: float, where: str) -> None:
    """SIGKILL this process with ``probability`` (no cleanup, no acknowledgement: like a power cut)."""
    if probability > 0 and random.random() < probability:
        log.critical("fault injection: SIGKILL %s", where)
        os.kill(os.getpid(), signal.SIGKILL)
