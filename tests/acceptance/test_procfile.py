"""`honcho start` with the real Procfile runs the whole system (master, worker, beat, Flower with basic
auth) against PostgreSQL and Redis, and stops cleanly on SIGTERM."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.support.servers import free_port
from tests.support.wait import wait_until

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cluster_db_url(pg_url):
    return pg_url


def _status(url: str, auth: str | None = None) -> int:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_honcho_runs_the_procfile(cluster, tmp_path):
    port = free_port()
    env = {**cluster.env, "FLOWER_BASIC_AUTH": "admin:s3cret", "FLOWER_PORT": str(port),
           "TIDEFLOW_BEAT_SCHEDULE": str(tmp_path / "beat-schedule"),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    log = open(tmp_path / "honcho.log", "wb")  # noqa: SIM115
    honcho = subprocess.Popen([sys.executable, "-m", "honcho", "start", "-f", str(REPO / "Procfile")],
                              cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        flower = f"http://127.0.0.1:{port}/"
        wait_until(lambda: _status(flower) == 401, timeout=60, ignore=(OSError,),
                   message="flower should answer, and refuse requests without credentials")
        assert _status(flower, "admin:s3cret") == 200
        assert _status(flower, "admin:wrong") == 401

        wf = tmp_path / "hello.yaml"
        wf.write_text("name: hello\ntasks:\n  - {name: a, type: shell, command: 'echo hi'}\n"
                      "  - {name: b, type: shell, command: 'echo there', depends_on: [a]}\n")
        cluster.run_cli("workflow", "register", str(wf), check=True)
        result = cluster.run_cli("run", "start", "hello", "--wait", "--timeout", "60")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "succeeded" in result.stdout
    finally:
        procs = psutil.Process(honcho.pid).children(recursive=True) + [psutil.Process(honcho.pid)]
        os.kill(honcho.pid, signal.SIGTERM)
        honcho.wait(60)
        log.close()
    gone, alive = psutil.wait_procs(procs, timeout=30)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], (tmp_path / "honcho.log").read_text()[-3000:]
    text = (tmp_path / "honcho.log").read_text()
    for name in ("master", "worker", "beat", "flower"):
        assert f"{name}." in text
