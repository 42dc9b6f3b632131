"""Worker identity (``app.runtime.worker_identity``): two processes that share the hostname and the pid, as two
containers on one host network do (each has its own pid namespace: both workers are pid 9), are told apart."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: a process whose hostname is "vm" and whose pid is 9, like every worker container on that host's network
SAME_HOST_AND_PID = """
import os, socket
socket.gethostname = lambda: "vm"
os.getpid = lambda: 9
from app.runtime import worker_identity
print(worker_identity({node!r}))
"""


def identity_in_a_container(node: str | None) -> str:
    out = subprocess.run([sys.executable, "-c", SAME_HOST_AND_PID.format(node=node)], cwd=REPO, check=True,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return out.stdout.strip()


def test_two_workers_with_one_hostname_and_pid_have_distinct_identities():
    first, second = identity_in_a_container("worker@vm"), identity_in_a_container("worker@vm")
    assert first != second
    for identity in (first, second):
        node, boot, pid = identity.split(":")
        assert (node, pid) == ("worker@vm", "9") and len(boot) == 6, identity


def test_without_a_celery_node_the_hostname_names_the_process():
    identity = identity_in_a_container(None)
    assert identity.startswith("vm:") and identity.endswith(":9"), identity
