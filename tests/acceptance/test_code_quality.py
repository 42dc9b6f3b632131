"""The house rules that tools can check: ruff and mypy clean."""

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
