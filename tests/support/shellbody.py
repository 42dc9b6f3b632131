"""A shell body that forks children (one of them escaping its process group and session), the way to find every
process of it, and its log of start / tick / end lines, for the tests that kill whatever supervises a shell body
(``tests/unit/test_executors.py``, ``tests/integration/test_shell_reaper.py``, ``tests/acceptance/test_procfile.py``).

Every process of the body inherits ``BODY_LOG=PATH`` in its environment (PATH is unique per test), which is how
:func:`body_processes` finds them, wherever they moved to. Attempt 1 runs until it is killed; later attempts end
at once. Each line of the log is ``EVENT ATTEMPT PID TIME`` (``date +%s.%N``): the ticks (every 0.2 s, from two
background shells, one of them in a session of its own) show when attempt 1's processes were still alive.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.wait import poll

_TICK = 'while :; do echo "tick $TIDEFLOW_ATTEMPT $$ $(date +%s.%N)" >> "$BODY_LOG"; sleep 0.2; done'

#: the body's command; ``BODY_LOG`` must be in its environment (``env``) or set by a prefix (:data:`WITH_LOG_PARAM`)
FORKING_BODY = f"""echo "start $TIDEFLOW_ATTEMPT $$ $(date +%s.%N)" >> "$BODY_LOG"
if [ "$TIDEFLOW_ATTEMPT" = 1 ]; then
  tick='{_TICK}'
  sh -c "$tick" &
  (setsid sh -c "$tick" &)
  sleep 300 &
  wait
fi
echo "end $TIDEFLOW_ATTEMPT $$ $(date +%s.%N)" >> "$BODY_LOG"
echo "done $TIDEFLOW_ATTEMPT"
"""

#: the same, taking the log's path from the run parameter ``log`` (substituted shell-quoted)
WITH_LOG_PARAM = "export BODY_LOG={{ params.log }}\n" + FORKING_BODY


@dataclass(frozen=True)
class BodyProcess:
    pid: int
    sid: int
    cmdline: str


def _status(pid: str) -> tuple[str, int] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()
    return fields[0].decode(), int(fields[3])  # state, session id


def body_processes(log: Path | str) -> list[BodyProcess]:
    """Every live (not zombie) process whose environment has ``BODY_LOG=log``."""
    needle = os.fsencode(f"BODY_LOG={log}")
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{name}/environ").read_bytes()
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone, or not ours
            continue
        status = _status(name)
        if needle in environ.split(b"\0") and status is not None and status[0] not in ("Z", "X"):
            found.append(BodyProcess(int(name), status[1], cmdline.strip()))
    return found


def body_is_up(log: Path | str) -> list[BodyProcess] | None:
    """The body's processes once it is fully up (both tick loops, the sleep, one of them in another session)."""
    procs = body_processes(log)
    escaped = len({p.sid for p in procs}) >= 2
    sleeping = any(p.cmdline == "sleep 300" for p in procs)
    return procs if escaped and sleeping and len(procs) >= 4 else None


@dataclass(frozen=True)
class Line:
    event: str
    attempt: int
    pid: int
    t: float


def read_body_log(log: Path | str) -> list[Line]:
    try:
        text = Path(log).read_text()
    except FileNotFoundError:
        return []
    lines = []
    for raw in text.splitlines():
        parts = raw.split()
        if len(parts) == 4:
            lines.append(Line(parts[0], int(parts[1]), int(parts[2]), float(parts[3])))
    return lines


def assert_attempts_never_overlap(log: Path | str) -> dict[int, list[Line]]:
    """Every line of attempt N comes before every line of attempt N+1; returns the lines by attempt."""
    by_attempt: dict[int, list[Line]] = {}
    for line in read_body_log(log):
        by_attempt.setdefault(line.attempt, []).append(line)
    attempts = sorted(by_attempt)
    for early, late in zip(attempts, attempts[1:], strict=False):
        last = max(line.t for line in by_attempt[early])
        first = min(line.t for line in by_attempt[late])
        assert last < first, (f"attempt {early} was still running {last - first:.2f}s after attempt {late} "
                              f"started: {by_attempt}")
    return by_attempt


def kill_body(log: Path | str) -> None:
    """Clean-up after a failure: SIGKILL every process of the body until none is left."""
    for _ in range(50):
        procs = body_processes(log)
        if not procs:
            return
        for p in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p.pid, signal.SIGKILL)
        time.sleep(0.02)


def wait_body_dead(log: Path | str, timeout: float, what: str = "its supervisor") -> float:
    """Poll (every 20 ms) until no process of the body is left; when that was seen (``time.time()``). Fails
    listing the survivors."""
    procs: list[BodyProcess] = []  # the last ones seen

    def none_left() -> float | None:
        procs[:] = body_processes(log)
        return None if procs else time.time()

    gone_at = poll(none_left, timeout, interval=0.02)
    if gone_at is None:
        raise AssertionError(f"{len(procs)} process(es) of the body survived {what} by more than "
                             f"{timeout:.1f}s: {procs}")
    return gone_at
