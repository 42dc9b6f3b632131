"""The ``tideflow`` command as the acceptance tests run it: a real ``python -m app.cli`` subprocess
(:func:`tideflow`; :meth:`tests.support.cluster.Cluster.run_cli` with the cluster's environment), and what they
check of it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def tideflow(env: Mapping[str, str], *args: str, timeout: float = 120, input: str | None = None
             ) -> subprocess.CompletedProcess[str]:
    """``python -m app.cli ARGS`` in the repository with ``env``; output captured as text, whatever the exit."""
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=REPO_ROOT, env=dict(env), input=input,
                          capture_output=True, text=True, timeout=timeout, check=False)


def stderr_line(result: subprocess.CompletedProcess[str], exit_code: int = 1) -> str:
    """The one line a command wrote on stderr, having exited ``exit_code``."""
    assert result.returncode == exit_code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{result.stderr}"
    return lines[0]


def write_file(tmp_path: Path, name: str, text: str) -> str:
    """``text`` (dedented) in ``tmp_path/name``; its path, for a command's argument."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)
