"""The house rules that tools can check: ruff and mypy clean; the CLI is a leaf of the import graph."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_ruff_clean():
    result = _run("ruff", "check", "app", "tasks", "tests", "bench", "examples", "scripts/test", "scripts/demo")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_clean():
    result = _run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_nothing_imports_the_cli():
    """app/cli.py is the top layer: the demo and the rest call the client (app/client.py), never the CLI's
    helpers, so that the CLI can import them (lazily) without an import cycle."""
    offenders = []
    for path in sorted([*(REPO / "app").rglob("*.py"), *(REPO / "tasks").rglob("*.py")]):
        if path == REPO / "app" / "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if isinstance(node, ast.ImportFrom) and node.module == "app":
                names = [f"app.{a.name}" for a in node.names]
            offenders += [f"{path.relative_to(REPO)}:{node.lineno} imports {n}" for n in names
                          if n == "app.cli" or n.startswith("app.cli.")]
    assert not offenders, offenders
