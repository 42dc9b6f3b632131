"""A RabbitMQ broker for the tests that run on it as well as on Redis (e.g. tests/integration/test_priority.py).

* ``TIDEFLOW_TEST_AMQP_URL`` selects an existing server (:class:`ExternalRabbit`, e.g.
  ``amqp://guest:guest@127.0.0.1:5672//``); tests there use queue names of their own and delete them afterwards.
* otherwise, when Debian's ``rabbitmq-server`` is installed (``scripts/test`` installs it when it runs as root),
  :class:`RabbitServer` runs a private node (its own ports, node name, data dir and Erlang cookie; ~5 s to start).
* with neither, :func:`rabbit_from_env` returns None and the fixture skips, saying how to provide one. It is not
  a pip package (it needs Erlang), so this is the only server the suite cannot always start itself.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import uuid

from kombu import Connection

from tests.support.procs import LocalServer, _tail, free_port, reap_orphans
from tests.support.wait import wait_until

AMQP_URL_ENV = "TIDEFLOW_TEST_AMQP_URL"
#: where Debian's package puts the server script that runs in the foreground (/usr/sbin's wrapper changes user
#: and directory)
SERVER_SCRIPTS = ("/usr/lib/rabbitmq/bin/rabbitmq-server",)
NOT_AVAILABLE = (f"RabbitMQ is not available: set {AMQP_URL_ENV} (e.g. amqp://guest:guest@127.0.0.1:5672//) or "
                 "install Debian's rabbitmq-server (scripts/test does, when it runs as root)")


def rabbit_ready(url: str, timeout: float = 2.0) -> bool:
    try:
        with Connection(url, connect_timeout=timeout) as conn:
            conn.ensure_connection(max_retries=0)
        return True
    except Exception:  # noqa: BLE001 - not up yet
        return False


def server_script() -> str | None:
    for path in SERVER_SCRIPTS:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("rabbitmq-server")


class RabbitServer(LocalServer):
    """A private RabbitMQ node run in the foreground under Popen, in its own process group."""

    kind = "rabbitmq"
    log_name = "rabbitmq.log"
    external = False

    def __init__(self, script: str) -> None:
        self.script = script
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self, timeout: float = 60.0) -> RabbitServer:
        reap_orphans()
        atexit.register(self.cleanup)
        self._port = free_port()
        base = self.base_dir
        env = {
            **os.environ, "HOME": str(base),  # its own Erlang cookie
            "RABBITMQ_NODENAME": f"tftest{uuid.uuid4().hex[:8]}@localhost", "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self._port), "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"), "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"), "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced"),
            "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"), "RABBITMQ_LOGS": "-",
        }
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen([self.script], cwd=base, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        proc = self._proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited ({proc.returncode}):\n{_tail(self.log_path)}")
            return rabbit_ready(self.url)

        try:
            wait_until(ready, timeout=timeout, interval=0.2, message=f"RabbitMQ on port {self._port} did not answer")
        except AssertionError as exc:
            self.cleanup()
            raise RuntimeError(f"{exc}\n{_tail(self.log_path)}") from exc
        return self

    def cleanup(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self._proc = None
        if self._base_dir is not None:
            shutil.rmtree(self._base_dir, ignore_errors=True)
            self._base_dir = None
        atexit.unregister(self.cleanup)


class ExternalRabbit:
    """An existing RabbitMQ named by a URL."""

    external = True

    def __init__(self, url: str) -> None:
        self.url = url

    def start(self) -> ExternalRabbit:
        wait_until(lambda: rabbit_ready(self.url), timeout=30, message=f"{AMQP_URL_ENV} server not reachable")
        return self

    def cleanup(self) -> None:
        pass


def rabbit_from_env() -> RabbitServer | ExternalRabbit | None:
    """The session's RabbitMQ, started; None when there is none to be had (see the module's doc)."""
    url = os.environ.get(AMQP_URL_ENV)
    if url:
        return ExternalRabbit(url).start()
    script = server_script()
    return RabbitServer(script).start() if script else None


def delete_queues(url: str, queues: list[str]) -> None:
    """Delete the queues (and the direct exchanges of the same name Celery declares for them) a test used."""
    with Connection(url, connect_timeout=5) as conn:
        channel = conn.channel()
        for name in queues:
            with contextlib.suppress(Exception):
                channel.queue_delete(name)
            with contextlib.suppress(Exception):
                channel.exchange_delete(name)

