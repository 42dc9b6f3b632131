"""Keeps a running attempt's lease alive, and stops the body when it must stop.

A heartbeat thread renews the lease every ``heartbeat_interval``. It is started only when it first has something
to do (the first renewal, or the task's timeout, whichever comes first): one scheduler thread per process
(:class:`_Starter`) starts it then, so a body that ends sooner (most tasks) costs no thread start, which cost a
context switch per task on a busy host. The body is stopped when
* the renewal does not land: the task was cancelled or the reconciler declared the attempt lost
  (a newer attempt may already be running) -- this worker has lost its lease;
* the database has been unreachable for a whole lease: the lease has lapsed, so assume lost;
* the task's timeout passed.
Each renewal also stores the attempt's captured output so far when it grew (the live logs: the UI and
``GET /api/tasks/{id}/logs`` show a running attempt's output), in the renewal's own statement.
Stopping sets ``stop`` (shell bodies kill their process group), then interrupts a Python body with a signal
(:data:`STOP_SIGNAL` raises :class:`TaskStopped` in the main thread), and if the body is still running after
``stop_grace_seconds`` the pool process kills itself (Celery replaces it; the message's redelivery is
ignored because its claim fails).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable
from types import FrameType

from app.clock import after
from app.db import repository as repo
from app.errors import TaskStopped
from app.executors.logbuffer import LogBuffer
from app.runtime import Runtime

log = logging.getLogger(__name__)

STOP_SIGNAL = signal.SIGUSR2


class _Starter:
    """Starts keepers' heartbeat threads when their first deadline comes (a heap of them; one daemon thread per
    process, re-created after a fork). A keeper that ended before its deadline is dropped when it comes up (held
    weakly: an ended keeper and the body's output it references are not kept alive until then)."""

    GRANULARITY = 0.05  # wake at most this often: a deadline can be met up to this late

    def __init__(self) -> None:
        self._seq = itertools.count()
        self._reset()

    def _reset(self) -> None:  # also in a forked child: no thread, and a lock nobody holds
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, weakref.ref[LeaseKeeper]]] = []
        self._pid = -1
        self._wake_at = float("inf")

    def add(self, keeper: LeaseKeeper, at: float) -> None:
        with self._cond:
            if self._pid != os.getpid():  # first use in this process (or a forked child): own thread
                self._pid, self._heap, self._wake_at = os.getpid(), [], float("inf")
                threading.Thread(target=self._run, name="lease-starter", daemon=True).start()
            heapq.heappush(self._heap, (at, next(self._seq), weakref.ref(keeper)))
            if at < self._wake_at:
                self._cond.notify()

    def _run(self) -> None:
        while True:
            due: list[LeaseKeeper] = []
            with self._cond:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    keeper = heapq.heappop(self._heap)[2]()
                    if keeper is not None:
                        due.append(keeper)
                if not due and (not self._heap or self._heap[0][0] > now):
                    self._wake_at = max(self._heap[0][0], now + self.GRANULARITY) if self._heap else float("inf")
                    self._cond.wait(None if not self._heap else self._wake_at - now)
                    continue
            for keeper in due:
                keeper._start_thread()


_STARTER = _Starter()
os.register_at_fork(after_in_child=_STARTER._reset)


class LeaseKeeper:
    def __init__(
        self, rt: Runtime, task_run_id: int, token: str, *, timeout: float | None, stop: threading.Event,
        interrupt_main: bool, hard_kill: bool, attempt: int | None = None, output: LogBuffer | None = None,
    ):
        self.rt = rt
        self.task_run_id = task_run_id
        self.token = token
        self.timeout = timeout
        self.stop = stop
        self.reason: str | None = None
        self.timed_out = False
        self.attempt = attempt
        self.output = output
        self._stored_bytes = 0  # how much of ``output`` the last renewal stored
        self._interrupt_main = interrupt_main and threading.current_thread() is threading.main_thread()
        self._hard_kill = hard_kill
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._started = 0.0
        self._previous_handler: Callable[[int, FrameType | None], object] | int | None = None

    # -- lifecycle, used as a context manager around the body ------------------------------------------
    def __enter__(self) -> LeaseKeeper:
        if self._interrupt_main:
            self._previous_handler = signal.signal(STOP_SIGNAL, self._raise_stopped)
        self._started = time.monotonic()
        first = self.rt.settings.heartbeat_interval
        if self.timeout is not None:
            first = min(first, self.timeout)
        _STARTER.add(self, self._started + first)
        return self

    def _start_thread(self) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self._thread = threading.Thread(target=self._loop, name=f"lease-{self.task_run_id}", daemon=True)
            self._thread.start()

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._done.set()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=5)
        if self._interrupt_main:
            signal.signal(STOP_SIGNAL, self._previous_handler or signal.SIG_DFL)

    def _raise_stopped(self, _signum: int, _frame: FrameType | None) -> None:
        if not self._done.is_set():
            raise TaskStopped(self.reason or "stopped")

    # -- heartbeat loop --------------------------------------------------------------------------------
    def _loop(self) -> None:
        settings = self.rt.settings
        started = last_ok = self._started  # the body started then; this thread may have started a little later
        beat = started + settings.heartbeat_interval
        while not self._done.is_set():
            wait = beat - time.monotonic()
            if self.timeout is not None:
                wait = min(wait, started + self.timeout - time.monotonic())
            if self._done.wait(max(0.0, wait)):
                return
            if self.timeout is not None and time.monotonic() - started >= self.timeout:
                self.timed_out = True
                self._stop(f"timed out after {self.timeout:g}s")
                return
            held = self._renew(timeout=max(0.0, last_ok + settings.lease_seconds - time.monotonic()))
            beat = time.monotonic() + settings.heartbeat_interval
            if held is None:  # no answer: an outage delays work, the lease decides
                if time.monotonic() - last_ok >= settings.lease_seconds:
                    self._stop(f"lease lost: database unreachable for {settings.lease_seconds:g}s")
                    return
                continue
            if not held:
                self._stop("lease lost: the task was cancelled or its attempt was failed over")
                return
            last_ok = time.monotonic()

    def _renew(self, timeout: float) -> bool | None:
        """Renew the lease; None if the database failed or did not answer within ``timeout`` (a black-holed
        connection blocks without an error: the renewal runs in its own thread so that it cannot hold the
        keeper past the lease; if it hangs, that thread and its connection are abandoned)."""
        answer: list[bool | None] = []
        written = self.output.bytes_written if self.output is not None else 0
        text = self.output.getvalue() if self.output is not None and written != self._stored_bytes else None

        def renew() -> None:
            try:
                with self.rt.db.transaction() as s:
                    answer.append(repo.renew_lease(s, self.task_run_id, self.token,
                                                   after(self.rt.settings.lease_seconds), attempt=self.attempt,
                                                   log=text))
                if text is not None and answer[-1]:
                    self._stored_bytes = written
            except Exception as exc:  # noqa: BLE001 - reported as "no answer"
                log.warning("task run %s: lease renewal failed: %s", self.task_run_id, exc)
                answer.append(None)

        thread = threading.Thread(target=renew, name=f"renew-{self.task_run_id}", daemon=True)
        thread.start()
        thread.join(max(timeout, 0.05))
        if not answer:
            log.warning("task run %s: lease renewal got no answer within %.1fs", self.task_run_id, timeout)
            return None
        return answer[0]

    def _stop(self, reason: str) -> None:
        self.reason = reason
        log.warning("task run %s: stopping the body: %s", self.task_run_id, reason)
        self.stop.set()
        if self._interrupt_main and not self._done.is_set():
            signal.pthread_kill(threading.main_thread().ident or 0, STOP_SIGNAL)
        if self._done.wait(self.rt.settings.stop_grace_seconds):
            return
        if self._hard_kill:
            log.error("task run %s: body did not stop within %.1fs; killing pool process %s",
                      self.task_run_id, self.rt.settings.stop_grace_seconds, os.getpid())
            os.kill(os.getpid(), signal.SIGKILL)
