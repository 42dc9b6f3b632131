"""`honcho start` with the real Procfile runs the whole system (web, master, worker, beat, Flower with basic
auth) against PostgreSQL and Redis: a run started through the REST API succeeds and is visible in the API, the
UI (headless Chromium: the run page shows both tasks succeeded), Flower (under its
``tideflow.execute[workflow/task]`` name; a task whose body failed as FAILURE; no reconciler passes) and
/metrics; SIGTERM stops every process cleanly while a run is in flight, and after a restart that run finishes
with no task lost or run twice.

Honcho (2.0, .venv/lib/python3.11/site-packages/honcho) on SIGTERM sends SIGTERM to each process group
(manager.py:100 installs the handler; manager.py:142-173 ``terminate``/``_killall``; compat.py:28 ``os.killpg``).
Once the first process has stopped it waits ``KILL_WAIT`` = 5 s (manager.py:12, checked at manager.py:131-140),
then SIGKILLs the groups still running (compat.py:40), always printing "sending SIGKILL to NAME" first
(manager.py:167-169). Each process is ``/bin/sh -c LINE`` in a new session (process.py:63-81: ``shell=True``,
``start_new_session=True``; Debian's dash does not exec the last command, so the shell stays as the parent and
dies of the SIGTERM at once, while the program shuts down). Honcho prints "NAME stopped (rc=N)" (manager.py:121-124,
N being that shell's status, -15) only once the output pipe is closed and the shell reaped (process.py:46-52),
i.e. once the program and all its children (Celery's pool processes) are gone.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import psutil
import pytest

from tests.support.cluster import Cluster
from tests.support.harness import client_for
from tests.support.procs import free_port
from tests.support.shellbody import (
    WITH_LOG_PARAM,
    assert_attempts_never_overlap,
    body_is_up,
    kill_body,
    wait_body_dead,
)
from tests.support.wait import wait_until
from tests.ui.harness import Page, chromium, report

REPO = Path(__file__).resolve().parents[2]
PROCESSES = ("web", "master", "worker", "beat", "flower")
TOKEN = "procfile-test-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
FLOWER_AUTH = ("admin", "s3cret")
#: honcho/manager.py:12: SIGKILL follows this long after the first process stopped
HONCHO_KILL_WAIT = 5.0

HELLO = {"name": "hello", "tasks": [
    {"name": "a", "type": "shell", "command": "echo hi"},
    {"name": "b", "type": "shell", "command": "echo there", "depends_on": ["a"]},
]}
BROKEN = {"name": "broken", "tasks": [{"name": "x", "type": "shell", "command": "echo no >&2; exit 3"}]}
SLOW = {"name": "slow", "tasks": [
    {"name": "s1", "type": "shell", "command": "sleep 1; echo one"},
    {"name": "s2", "type": "shell", "command": "sleep 1; echo two", "depends_on": ["s1"]},
    {"name": "s3", "type": "shell", "command": "sleep 1; echo three", "depends_on": ["s2"]},
]}

#: what each program logs when it shuts down cleanly (not when it is killed)
CLEAN_SHUTDOWN = {
    "web": "Finished server process",  # uvicorn/server.py, after "Shutting down"
    "master": "worker: Warm shutdown (MainProcess)",  # celery/apps/worker.py, _shutdown_handler
    "worker": "worker: Warm shutdown (MainProcess)",
    "beat": "beat: schedule saved, exiting",  # tasks/celery_app.py, on beat's SystemExit
    "flower": "detected, shutting down",  # flower/command.py, sigterm_handler
}


@pytest.fixture
def cluster_db_url(pg_url):
    return pg_url


class Honcho:
    """One ``honcho start`` of the repository's Procfile; its merged output goes to ``log_path``."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        env_file = log_path.parent / "honcho.env"  # empty: a developer's .env in the repo cannot change the test
        env_file.touch()
        with open(log_path, "wb") as log:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "honcho", "start", "-f", str(REPO / "Procfile"), "-d", str(REPO),
                 "-e", str(env_file)],
                cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def lines(self, name: str) -> list[str]:
        """The output lines of process ``name`` (honcho prefixes them "HH:MM:SS name.1 | ")."""
        return [line.split("|", 1)[1] for line in self.output().splitlines()
                if re.match(rf"^\S+ {name}\.1\s+\|", line)]

    def wait_for(self, name: str, text: str, timeout: float = 60.0) -> None:
        def seen() -> bool:
            if self.popen.poll() is not None:
                raise AssertionError(f"honcho exited ({self.popen.returncode}):\n{self.output()[-5000:]}")
            return any(text in line for line in self.lines(name))

        try:
            wait_until(seen, timeout=timeout, interval=0.1, message=f"{name} never logged {text!r}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.output()[-5000:]}") from None

    def tree(self) -> list[psutil.Process]:
        """Honcho and everything under it (the shells, the programs, Celery's pool processes)."""
        me = psutil.Process(self.popen.pid)
        return [me, *me.children(recursive=True)]

    def stop(self, timeout: float = 60.0) -> int:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGTERM)
        return self.popen.wait(timeout)

    def kill(self) -> None:
        """Clean-up after a failure: SIGKILL whatever is left (honcho and each process group)."""
        if self.popen.poll() is not None:
            return
        procs = self.tree()
        for proc in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        psutil.wait_procs(procs, timeout=10)
        self.popen.wait(10)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _env(cluster: Cluster, tmp_path: Path) -> dict[str, str]:
    return {
        **cluster.env,
        "TIDEFLOW_API_TOKEN": TOKEN,
        "TIDEFLOW_WEB_PORT": str(free_port()),
        "TIDEFLOW_BEAT_SCHEDULE_FILE": str(tmp_path / "celerybeat-schedule"),
        "FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH),
        "FLOWER_PORT": str(free_port()),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }


def _run(api: httpx.Client, run_id: int) -> dict[str, Any]:
    resp = api.get(f"/api/runs/{run_id}")
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()
    return data


def _wait_succeeded(api: httpx.Client, run_id: int, timeout: float = 90.0) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        data = _run(api, run_id)
        return data if data["state"] in ("succeeded", "failed", "cancelled") else None

    final = wait_until(finished, timeout=timeout, interval=0.2, message=f"run {run_id} did not finish",
                       ignore=(httpx.TransportError,))
    assert final["state"] == "succeeded", final
    return final


def _start(api: httpx.Client, definition: dict[str, Any]) -> int:
    registered = api.post("/api/workflows", json=definition)
    assert registered.status_code == 201, registered.text
    assert registered.json() == {"name": definition["name"], "version": 1, "created": True, "warnings": []}
    started = api.post("/api/runs", json={"workflow": definition["name"]})
    assert started.status_code == 201, started.text
    run_id: int = started.json()["id"]
    return run_id


def _see_success_in_the_browser(web: str, run_id: int, tmp_path: Path) -> None:
    """What an operator sees: sign in with the token, and the run page shows the run and both tasks succeeded
    (headless Chromium, as in tests/ui)."""
    driver = chromium(tmp_path / "chromium-profile")
    try:
        page = Page(driver, SimpleNamespace(base_url=web))  # type: ignore[arg-type]
        page.open(f"/runs/{run_id}")
        page.wait(lambda: page.path() == "/login", timeout=30, message="not sent to the login page")
        page.submit_token(TOKEN)
        page.wait(lambda: page.node_states() == {"a": "succeeded", "b": "succeeded"}, timeout=30,
                  message="the run page never showed both tasks succeeded")
        assert "succeeded" in page.text("#title"), page.text("#title")
    except Exception:
        print(report(driver, "honcho-run-page"))
        raise
    finally:
        driver.quit()


def test_honcho_runs_the_procfile_and_stops_cleanly(cluster, tmp_path):
    env = _env(cluster, tmp_path)
    web = f"http://127.0.0.1:{env['TIDEFLOW_WEB_PORT']}"
    flower = f"http://127.0.0.1:{env['FLOWER_PORT']}"
    first = Honcho(env, tmp_path / "honcho-1.log")
    second: Honcho | None = None
    api = httpx.Client(base_url=web, headers=BEARER, timeout=10)
    try:
        # -- everything comes up ------------------------------------------------------------------------
        wait_until(lambda: api.get("/api/health").status_code == 200, timeout=90, interval=0.2,
                   ignore=(httpx.TransportError,), message="the web process never answered /api/health")
        wait_until(lambda: httpx.get(f"{flower}/api/workers", timeout=5).status_code == 401, timeout=90,
                   interval=0.2, ignore=(httpx.TransportError,), message="flower never answered")
        # Flower switches task events on by broadcasting enable_events every 5 s (flower/events.py:153,186,271-276);
        # each worker logs it once (celery/worker/control.py:372-374). Before that, tasks are invisible to it.
        for name in ("master", "worker"):
            first.wait_for(name, "Events of group {task} enabled by remote.", timeout=60)

        # -- a run through the REST API -----------------------------------------------------------------
        run_id = _start(api, HELLO)
        done = _wait_succeeded(api, run_id)
        assert [(t["name"], t["state"], t["result"]) for t in done["tasks"]] == [
            ("a", "succeeded", "hi"), ("b", "succeeded", "there")]
        broken_id = _start(api, BROKEN)
        wait_until(lambda: _run(api, broken_id)["state"] == "failed", timeout=60, interval=0.2,
                   message="the broken run never failed")

        # the UI's run page: with the bearer header, with the login cookie; without either, to the login form
        login = httpx.post(f"{web}/login", data={"token": TOKEN}, timeout=10)
        assert login.status_code == 303, login.text[:500]
        for kwargs in ({"headers": BEARER}, {"cookies": dict(login.cookies)}):
            page = httpx.get(f"{web}/runs/{run_id}", timeout=10, **kwargs)
            assert page.status_code == 200, (kwargs, page.status_code, page.text[:500])
            assert page.headers["content-type"].startswith("text/html"), page.headers
        anonymous = httpx.get(f"{web}/runs/{run_id}", timeout=10)
        assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login"), anonymous
        _see_success_in_the_browser(web, run_id, tmp_path)

        # /metrics: only with the token
        assert httpx.get(f"{web}/metrics", timeout=10).status_code == 401
        metrics = api.get("/metrics")
        assert metrics.status_code == 200, metrics.text[:500]

        # Flower: basic auth enforced; the tasks listed under the dispatcher's shadow names, a task whose body
        # failed as FAILURE (tasks/execute.py AttemptFailed), and no reconciler pass (it sends no task events)
        assert httpx.get(f"{flower}/api/tasks", timeout=10).status_code == 401
        assert httpx.get(f"{flower}/api/tasks", auth=("admin", "wrong"), timeout=10).status_code == 401
        expected = {"tideflow.execute[hello/a]": "SUCCESS", "tideflow.execute[hello/b]": "SUCCESS",
                    "tideflow.execute[broken/x]": "FAILURE"}

        def flower_tasks() -> dict[str, str] | None:
            resp = httpx.get(f"{flower}/api/tasks", auth=FLOWER_AUTH, timeout=10)
            assert resp.status_code == 200, resp.text
            seen = {t["name"]: t["state"] for t in resp.json().values()}
            return seen if {n: seen.get(n) for n in expected} == expected else None

        listed = wait_until(flower_tasks, timeout=30, interval=0.5, message="flower never listed the tasks")
        assert "tideflow.execute" not in listed, listed  # never the bare name: Flower shows which task it was
        assert "tideflow.reconcile" not in listed, listed
        # the reconciler ran every 0.5 s all along: none of Celery's or beat's routine lines about it at INFO
        # (it logs "reconcile: ..." itself, only in a pass that acted)
        for name in ("master", "beat"):
            routine = [line for line in first.lines(name)
                       if "Task tideflow.reconcile[" in line or "Sending due task tideflow-reconcile" in line]
            assert not routine, (name, routine[:5])

        # -- SIGTERM while a run is in flight -----------------------------------------------------------
        slow_id = _start(api, SLOW)
        wait_until(lambda: any(t["state"] == "running" for t in _run(api, slow_id)["tasks"]), timeout=30,
                   interval=0.05, message="the slow run's first task never ran")
        procs = first.tree()
        workers = [p for p in procs if {"-A", "worker"} <= set(p.cmdline())]
        mains = [p for p in workers if p.ppid() not in {w.pid for w in workers}]
        assert len(mains) == 2 and all(p.children() for p in mains), f"master and worker, with pools: {procs}"
        first.stop(timeout=HONCHO_KILL_WAIT + 60)
        out = first.output()
        assert "SIGTERM received" in out, out[-3000:]
        assert "sending SIGKILL" not in out, out[-5000:]  # honcho's kill grace never ran out
        for name in PROCESSES:
            assert re.search(rf"system\s+\| {name}\.1 stopped \(rc=", out), f"no exit line for {name}:\n{out[-5000:]}"
            assert any(CLEAN_SHUTDOWN[name] in line for line in first.lines(name)), (
                f"{name} did not log its clean shutdown ({CLEAN_SHUTDOWN[name]!r}):\n{out[-5000:]}")
        for bad in ("WorkerLostError", "exited with 'signal", "Traceback"):
            assert bad not in out, f"{bad} in the output:\n{out[-5000:]}"
        survivors = [p for p in procs if _alive(p)]
        assert not survivors, f"still running after honcho exited: {survivors}"

        # the in-flight run is not lost: still running (it resumes) or, if the last task squeezed in, done
        tf = client_for(cluster)
        try:
            assert tf.run(slow_id)["state"] in ("running", "succeeded")
        finally:
            tf.close()

        # -- restart: the run finishes, no task lost, none run twice ------------------------------------
        second = Honcho(env, tmp_path / "honcho-2.log")
        final = _wait_succeeded(api, slow_id, timeout=120)
        assert [(t["name"], t["state"], t["result"], t["attempt"]) for t in final["tasks"]] == [
            ("s1", "succeeded", "one", 1), ("s2", "succeeded", "two", 1), ("s3", "succeeded", "three", 1)], final
        second.stop(timeout=HONCHO_KILL_WAIT + 60)
        assert "sending SIGKILL" not in second.output(), second.output()[-5000:]
    finally:
        api.close()
        for h in (first, second):
            if h is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    h.stop(timeout=HONCHO_KILL_WAIT + 30)
                h.kill()


@pytest.mark.parametrize("value", [None, "", "admin", "admin:", ":s3cret", "admin:s3cret,bob", " admin:s3cret"])
def test_flower_refuses_to_start_without_basic_auth(value):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    if value is not None:
        env["FLOWER_BASIC_AUTH"] = value
    done = subprocess.run([sys.executable, "-m", "app.cli", "flower"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.splitlines() == [
        "error: set FLOWER_BASIC_AUTH=user:password (comma separated for several users); "
        "Flower does not start without authentication"], done.stderr
    assert done.stdout == ""


def test_flower_accepts_user_password_pairs():
    from app.cli import _basic_auth_ok

    assert _basic_auth_ok("admin:s3cret")
    assert _basic_auth_ok("admin:s3cret,ops:an:other")  # a password may contain ':' (Basic auth splits at the first)
    assert not _basic_auth_ok("admin:s3cret,")


@pytest.mark.slow
def test_honcho_stop_during_a_long_shell_body_kills_its_tree_and_the_retry_does_not_overlap(cluster, tmp_path):
    """Issue 9, item 3: SIGTERM to honcho while a shell task runs a long command. The worker's warm shutdown
    waits for the body, honcho's grace runs out and it SIGKILLs the worker's process group; the body is in a
    session of its own (so the SIGTERM did not cut it off), and its reaper, whose parent (the pool process)
    died, kills its whole tree: nothing of it runs on as an orphan. After a restart the task runs again (its
    attempt is lost once its lease lapses; lease 3 s here) and the two attempts never overlap."""
    env = _env(cluster, tmp_path)
    log = tmp_path / "body.log"
    long_shell = {"name": "long-shell", "params": {"log": str(log)}, "tasks": [
        {"name": "long", "type": "shell", "command": WITH_LOG_PARAM, "retries": 1, "retry_delay": 0}]}
    first = Honcho(env, tmp_path / "honcho-1.log")
    second: Honcho | None = None
    api = httpx.Client(base_url=f"http://127.0.0.1:{env['TIDEFLOW_WEB_PORT']}", headers=BEARER, timeout=10)
    try:
        wait_until(lambda: api.get("/api/health").status_code == 200, timeout=90, interval=0.2,
                   ignore=(httpx.TransportError,), message="the web process never answered /api/health")
        run_id = _start(api, long_shell)
        up = wait_until(lambda: body_is_up(log), timeout=60, message="the shell body's processes never all started")
        assert len({p.sid for p in up}) >= 2, up  # one of its children left the session

        first.stop(timeout=HONCHO_KILL_WAIT + 60)
        out = first.output()
        assert re.search(r"sending SIGKILL to worker\.1", out), out[-5000:]  # the grace ran out mid-body
        wait_body_dead(log, timeout=5, what="honcho")  # honcho has exited: so has everything of the body
        tf = client_for(cluster)
        try:
            assert tf.run(run_id)["tasks"][0]["state"] == "running"  # until the reconciler sees the lease lapse
        finally:
            tf.close()

        second = Honcho(env, tmp_path / "honcho-2.log")
        final = _wait_succeeded(api, run_id, timeout=120)
        (task,) = final["tasks"]
        assert (task["state"], task["attempt"], task["result"]) == ("succeeded", 2, "done 2"), final
        assert [a["outcome"] for a in task["attempts"]] == ["lost", "succeeded"], task
        lines = assert_attempts_never_overlap(log)
        assert len({line.pid for line in lines[1] if line.event == "tick"}) == 2, lines[1]
        assert not [line for line in lines[1] if line.event == "end"], lines[1]
        assert [line.event for line in lines[2]] == ["start", "end"]
        second.stop(timeout=HONCHO_KILL_WAIT + 60)
    finally:
        api.close()
        kill_body(log)
        for h in (first, second):
            if h is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    h.stop(timeout=HONCHO_KILL_WAIT + 30)
                h.kill()
