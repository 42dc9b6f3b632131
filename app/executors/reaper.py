"""The reaper: the process between a shell task's executor and its ``/bin/sh -c COMMAND``, so that the command's
whole process tree dies with whatever supervises it, however that dies.

Run as ``python -I -S reaper.py PARENT_PID GRACE JOB_FD STATUS_FD`` (by :mod:`app.executors.shell`, in a new
session): standard library only, no site-packages, so it starts in a few milliseconds and nothing the project
imports can break it. It

1. makes itself a *child subreaper* (``PR_SET_CHILD_SUBREAPER``): every process the command starts stays below
   it, even one that double-forks or calls ``setsid`` to leave the command's process group and session, since
   an orphan is re-parented to its nearest living subreaper ancestor instead of to PID 1 (prctl(2));
2. asks for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``), then checks ``getppid()``: if the parent died
   before the request took effect, nobody would send that signal, so the reaper acts as if it had received it;
3. reads its job from ``JOB_FD`` (NUL-separated: the command, then ``NAME=value`` environment entries; EOF
   ends it), starts ``/bin/sh -c COMMAND`` as the leader of a new process group, reports
   ``pid N`` on ``STATUS_FD`` and waits (reaping whatever orphans are re-parented to it meanwhile);
4. when the shell exits, terminates whatever the command left running (see 5) and reports ``exit N``
   (``subprocess.Popen.returncode`` style: ``-S`` for a signal) and ``leftovers N`` (how many processes it
   had to terminate);
5. on SIGTERM (the executor stops the command, or the parent died) terminates the whole tree: SIGTERM (and
   SIGCONT, for stopped ones) to every descendant, up to GRACE seconds for them to exit, then SIGKILL to every
   descendant, again, until it has no child left (a killed process's children are re-parented to the reaper,
   so "no child" means "no descendant"), and reports ``stopped``.

The status lines let the executor tell the command's own exit status from the reaper's fate. Limits: a
process that makes *itself* a subreaper keeps its orphans, but it is a descendant too and dies with the tree;
a SIGKILL of the reaper itself (it is tiny, so the OOM killer prefers the pool process) leaves the tree to the
executor, which kills the command's process group if it is still alive; a process handed to another
supervisor (``systemd-run``, ``docker run``) is not a descendant and is not touched.

PR_SET_PDEATHSIG fires when the *thread* that forked the reaper exits, not the process (prctl(2)): the
executor waits for the reaper in the thread that started it, so that thread outlives it.
"""

from __future__ import annotations

# The C modules under ctypes and signal: importing those two (and the enum module signal pulls in) would
# cost ~7 ms of a start-up of ~10, paid by every shell task. What is used of them is stable since Python 3.3.
import _ctypes
import _signal as signal
import os
import sys
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PR_SET_CHILD_SUBREAPER = 36
#: signals Python ignores at start-up: the command gets their default back (as subprocess's restore_signals)
_RESTORE = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, name))
_MAX_POLL = 0.01


class Stop(BaseException):
    """Raised by the SIGTERM handler: stop the command now."""


_stopping = False


def _on_sigterm(_signum: int, _frame: object) -> None:
    global _stopping
    if not _stopping:
        _stopping = True
        raise Stop


class _CInt(_ctypes._SimpleCData):  # ctypes.c_int
    _type_ = "i"


class _LibcFunction(_ctypes.CFuncPtr):  # what ctypes.CDLL(None, use_errno=True) makes of a name
    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = _CInt


class _Libc:
    _handle = _ctypes.dlopen(None, os.RTLD_NOW)  # type: ignore[arg-type]  # None: the program itself


def _prctl(option: int, arg: int) -> None:
    prctl = _LibcFunction(("prctl", _Libc()))  # type: ignore[arg-type]  # anything with a _handle
    if prctl(option, arg, 0, 0, 0) != 0:
        err = _ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def descendants() -> list[int]:
    """Every live descendant of this process (from ``/proc/PID/stat``'s parent pids)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # gone meanwhile
            continue
        # "PID (COMM) STATE PPID ...": COMM may contain anything, so split after its last ')'
        ppid = int(stat[stat.rindex(b")") + 2:].split(None, 2)[1])
        children.setdefault(ppid, []).append(int(name))
    found: list[int] = []
    todo = [os.getpid()]
    while todo:
        for kid in children.get(todo.pop(), ()):
            found.append(kid)
            todo.append(kid)
    return found


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:  # noqa: SIM105 - no contextlib: every import costs the reaper's start-up time
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


class Reaper:
    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.shell: int | None = None
        self.status: int | None = None

    def _record(self, pid: int, status: int) -> None:
        if pid == self.shell:
            self.status = status

    def reap(self) -> bool:
        """Collect every child that has exited; True when no child is left at all."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return True
            if pid == 0:
                return False
            self._record(pid, status)

    def _wait_empty(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        pause = 0.001
        while not self.reap():
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, _MAX_POLL)
        return True

    def terminate(self) -> int:
        """Terminate every descendant (SIGTERM, GRACE, SIGKILL); how many there were at first."""
        if self.reap():
            return 0
        first = descendants()
        _signal_all(first, signal.SIGTERM)
        _signal_all(first, signal.SIGCONT)
        if self._wait_empty(self.grace):
            return len(first)
        while True:  # whatever is left, including what was started meanwhile, until nothing is
            _signal_all(descendants(), signal.SIGKILL)
            if self._wait_empty(0.05):
                return len(first)

    def run(self, job: bytes) -> None:
        """Start the command and wait until the shell exits (orphans re-parented meanwhile are reaped)."""
        command, *env = job.split(b"\0")
        self.shell = os.posix_spawn(
            b"/bin/sh", [b"/bin/sh", b"-c", command], dict(e.split(b"=", 1) for e in env if e),
            setpgroup=0, setsigdef=_RESTORE)
        report(f"pid {self.shell}")
        while self.status is None:
            pid, status = os.waitpid(-1, 0)
            self._record(pid, status)


_status_fd = -1


def report(line: str) -> None:
    try:  # noqa: SIM105 - see _signal_all
        os.write(_status_fd, (line + "\n").encode())
    except OSError:  # the executor is gone (SIGPIPE is ignored: BrokenPipeError)
        pass


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def main(argv: list[str]) -> None:
    global _status_fd, _stopping
    parent, grace, job_fd, _status_fd = int(argv[1]), float(argv[2]), int(argv[3]), int(argv[4])
    for fd in (job_fd, _status_fd):  # the command must not hold them (the executor reads STATUS_FD to EOF)
        os.set_inheritable(fd, False)
    reaper = Reaper(grace)
    outcome = "stopped"
    # The handler raises Stop at most once, wherever the main thread is: the outer try catches it even when it
    # lands in the inner handler. After this block no Stop can come (``_stopping`` is set either way).
    try:
        try:
            # before this, SIGTERM kills the reaper outright: nothing has been started yet
            signal.signal(signal.SIGTERM, _on_sigterm)
            _prctl(PR_SET_CHILD_SUBREAPER, 1)
            _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent:  # the parent died before PR_SET_PDEATHSIG took effect
                raise Stop
            reaper.run(_read_all(job_fd))
            outcome = "exit"
        except Exception as exc:  # noqa: BLE001 - reported to the executor; the tree is terminated all the same
            outcome = f"error {type(exc).__name__}: {exc}"
        _stopping = True
    except Stop:
        pass
    leftovers = reaper.terminate()
    if outcome == "exit" and reaper.status is not None:
        report(f"leftovers {leftovers}")
        report(f"exit {os.waitstatus_to_exitcode(reaper.status)}")
    else:
        report(outcome)
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv)
