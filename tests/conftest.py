"""Session-wide real servers and per-test databases, broker namespaces and Celery clusters.

Fixtures (see tests/support/*.py for the objects):

* ``postgres`` (session): :class:`PostgresServer` or :class:`ExternalPostgres`
  (``TIDEFLOW_TEST_DATABASE_URL``); ``.url(dbname)``, ``.maintenance_url``, ``.external``.
* ``redis_server`` (session): :class:`RedisServer` or :class:`ExternalRedis` (``TIDEFLOW_TEST_REDIS_URL``);
  ``.url(db=0)``, ``.external``.
* ``rabbitmq`` (session): :class:`RabbitServer` or :class:`ExternalRabbit` (``TIDEFLOW_TEST_AMQP_URL``); ``.url``.
* ``schema_upgrade`` (session): the ``upgrade(database_url)`` callable (``app.db.migrate.upgrade``).
* ``pg_template`` (session): name of the migrated template database (``tideflow_template_<pid>_<uuid8>``).
* ``pg_url``: a fresh PostgreSQL database cloned from the template; dropped afterwards.
* ``sqlite_url``: a fresh migrated SQLite file in ``tmp_path``.
* ``db_url``: parametrised over both (ids ``pg`` / ``sqlite``).
* ``broker``: :class:`Broker` - ``.url``, ``.key_prefix``, ``.client()``, ``.keys()``, ``.delete_queues()``.
* ``cluster``: :class:`Cluster` on ``cluster_db_url`` (defaults to ``db_url``: override it in a module with
  ``def cluster_db_url(pg_url): return pg_url`` for PostgreSQL only) and ``broker``. Extra env:
  ``@pytest.mark.cluster_env(TIDEFLOW_LEASE_SECONDS="5")`` or override the ``cluster_overrides`` fixture.
"""

from __future__ import annotations

import os
import signal
import threading
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from types import FrameType

import pytest

from tests.support.cluster import Cluster
from tests.support.rabbitmq import NOT_AVAILABLE, ExternalRabbit, RabbitServer, rabbit_from_env
from tests.support.servers import (
    Broker,
    ExternalPostgres,
    ExternalRedis,
    PostgresServer,
    RedisServer,
    create_database,
    drop_database,
    postgres_from_env,
    psycopg_conninfo,
    redis_from_env,
    terminate_backends,
)

#: per session, so that two pytest sessions can share one external PostgreSQL: the pid alone is not enough (two
#: containers can run their sessions with the same pid against one server), hence the random part
TEMPLATE_DB = f"tideflow_template_{os.getpid()}_{uuid.uuid4().hex[:8]}"

_reports_key = pytest.StashKey[dict[str, pytest.TestReport]]()


# -- hooks ------------------------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster_env(**env): extra environment for the `cluster` fixture")
    # A CI runner cancelling the job sends SIGTERM: turn it into KeyboardInterrupt so the session
    # fixtures still stop the servers (atexit is the fallback; leftovers of a SIGKILL are reaped next run).
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) in (
        signal.SIG_DFL,
        None,
    ):

        def _on_sigterm(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        signal.signal(signal.SIGTERM, _on_sigterm)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(_reports_key, {})[report.when] = report
    return report


def _test_failed(request: pytest.FixtureRequest) -> bool:
    reports = request.node.stash.get(_reports_key, {})
    return any(rep.failed for rep in reports.values())


# -- servers ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer | ExternalPostgres]:
    server = postgres_from_env()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer | ExternalRedis]:
    server = redis_from_env()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[RabbitServer | ExternalRabbit]:
    """A RabbitMQ (``.url``): ``TIDEFLOW_TEST_AMQP_URL``, else a private node of Debian's ``rabbitmq-server``; the
    tests using it skip, saying so, only when neither exists (tests/support/rabbitmq.py)."""
    server = rabbit_from_env()
    if server is None:
        pytest.skip(NOT_AVAILABLE)
    try:
        yield server
    finally:
        server.cleanup()


# -- databases --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def schema_upgrade() -> Callable[[str], None]:
    """Creates / migrates the schema of the database at a URL."""
    from app.db.migrate import upgrade

    return upgrade


@pytest.fixture(scope="session")
def pg_template(
    postgres: PostgresServer | ExternalPostgres, schema_upgrade: Callable[[str], None]
) -> Iterator[str]:
    """The migrated template every ``pg_url`` database is cloned from (made once per session)."""
    import psycopg

    maintenance = postgres.maintenance_url
    drop_database(maintenance, TEMPLATE_DB)  # a stale one from an earlier run against an external server
    url = create_database(maintenance, TEMPLATE_DB)
    schema_upgrade(url)
    # CREATE DATABASE ... TEMPLATE fails while anybody is connected to the template (e.g. a pooled
    # connection the migration left open): close them and refuse new ones.
    terminate_backends(maintenance, TEMPLATE_DB)
    with psycopg.connect(psycopg_conninfo(maintenance), autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{TEMPLATE_DB}" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false')
    try:
        yield TEMPLATE_DB
    finally:
        with psycopg.connect(psycopg_conninfo(maintenance), autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{TEMPLATE_DB}" WITH IS_TEMPLATE false')
        drop_database(maintenance, TEMPLATE_DB)


@pytest.fixture
def pg_url(postgres: PostgresServer | ExternalPostgres, pg_template: str) -> Iterator[str]:
    """SQLAlchemy URL of a fresh, migrated PostgreSQL database ``tf_<uuid8>``; dropped after the test."""
    name = f"tf_{uuid.uuid4().hex[:8]}"
    url = create_database(postgres.maintenance_url, name, template=pg_template)
    try:
        yield url
    finally:
        drop_database(postgres.maintenance_url, name)


@pytest.fixture
def sqlite_url(tmp_path: Path, schema_upgrade: Callable[[str], None]) -> str:
    """SQLAlchemy URL of a fresh, migrated SQLite file in ``tmp_path``."""
    url = f"sqlite:///{tmp_path / 'tideflow.sqlite3'}"
    schema_upgrade(url)
    return url


@pytest.fixture(params=["postgresql", "sqlite"], ids=["pg", "sqlite"])
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh migrated database on each backend."""
    fixture = "pg_url" if request.param == "postgresql" else "sqlite_url"
    return str(request.getfixturevalue(fixture))


# -- broker / cluster -------------------------------------------------------------------------------


@pytest.fixture
def broker(redis_server: RedisServer | ExternalRedis) -> Iterator[Broker]:
    """A private key namespace (``tf-<uuid8>:``) in the session's Redis; its keys are deleted afterwards."""
    b = Broker(redis_server.url(0), f"tf-{uuid.uuid4().hex[:8]}:")
    try:
        yield b
    finally:
        try:
            b.delete_queues()
        finally:
            b.close()


@pytest.fixture
def cluster_db_url(db_url: str) -> str:
    """The database the ``cluster`` fixture uses; override per module/class to pin a backend."""
    return db_url


@pytest.fixture
def cluster_overrides(request: pytest.FixtureRequest) -> dict[str, str]:
    """Extra environment for the cluster: ``@pytest.mark.cluster_env(NAME="value", ...)`` (closest wins)."""
    env: dict[str, str] = {}
    for marker in reversed(list(request.node.iter_markers("cluster_env"))):
        env.update({key: str(value) for key, value in marker.kwargs.items()})
    return env


@pytest.fixture
def cluster(
    request: pytest.FixtureRequest,
    cluster_db_url: str,
    broker: Broker,
    tmp_path: Path,
    cluster_overrides: dict[str, str],
) -> Iterator[Cluster]:
    """Celery workers / beat / CLI against the test's database and broker namespace; all stopped after."""
    c = Cluster(cluster_db_url, broker.url, broker.key_prefix, tmp_path / "cluster", cluster_overrides)
    try:
        yield c
    finally:
        try:
            c.stop()
        finally:
            if _test_failed(request):
                c.dump_logs()
