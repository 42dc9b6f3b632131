"""``tideflow token add/list/remove`` as an operator uses them: real subprocesses against PostgreSQL and a real
``tideflow web``; the secret printed once works as a bearer token with its role, and stops working when the token
is removed."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.acceptance.test_cli import _error_line
from tests.support.cluster import Cluster

HELLO = {"name": "hello", "tasks": [{"name": "a", "type": "shell", "command": "echo hi"}]}


@pytest.fixture
def cluster_db_url(pg_url: str) -> str:
    return pg_url


def test_token_add_list_remove_against_a_running_web(cluster: Cluster) -> None:
    _proc, base = cluster.start_web()  # with TIDEFLOW_API_TOKEN=test-token (admin, named "env")
    added = cluster.run_cli("token", "add", "ci-bot", "--role", "operator", check=True)
    secret = added.stdout.strip()
    assert len(added.stdout.splitlines()) == 1 and len(secret) > 40  # the secret alone on stdout, for $(...)
    assert "ci-bot" in added.stderr and "only now" in added.stderr
    cluster.run_cli("token", "add", "reader", "--role", "viewer", check=True)

    listed = json.loads(cluster.run_cli("token", "list", "--json", check=True).stdout)
    assert [(t["name"], t["role"]) for t in listed] == [("ci-bot", "operator"), ("reader", "viewer")]
    assert all(t["created_at"] for t in listed)
    table = cluster.run_cli("token", "list", check=True).stdout
    assert "ci-bot" in table and "operator" in table and secret not in table

    with httpx.Client(base_url=base, timeout=30) as web:
        admin = {"Authorization": "Bearer test-token"}
        ci = {"Authorization": f"Bearer {secret}"}
        assert web.post("/api/workflows", json=HELLO, headers=admin).status_code == 201
        denied = web.post("/api/workflows", json=HELLO, headers=ci)
        assert denied.status_code == 403 and denied.json()["error"] == "forbidden"
        started = web.post("/api/runs", json={"workflow": "hello"}, headers=ci)
        assert started.status_code == 201, started.text
        history = web.get(f"/api/runs/{started.json()['id']}/history", headers=ci).json()
        assert history[0]["actor"] == "ci-bot"

        # errors are one line; nothing changes
        assert "already exists" in _error_line(cluster.run_cli("token", "add", "ci-bot", "--role", "admin"))
        assert "no token named 'ghost'" in _error_line(cluster.run_cli("token", "remove", "ghost"))
        assert "invalid token name" in _error_line(cluster.run_cli("token", "add", "two words", "--role", "viewer"))
        bad_role = cluster.run_cli("token", "add", "x", "--role", "root")
        assert bad_role.returncode == 2 and "root" in bad_role.stderr and len(bad_role.stderr.splitlines()) == 1

        assert cluster.run_cli("token", "remove", "ci-bot", check=True).stdout.strip() == "removed token ci-bot"
        gone = web.get("/api/runs", headers=ci)
        assert gone.status_code == 401 and gone.json()["error"] == "unauthorized"
    listed = json.loads(cluster.run_cli("token", "list", "--json", check=True).stdout)
    assert [t["name"] for t in listed] == ["reader"]
