"""The test-support layer itself: real PostgreSQL / Redis servers, per-test databases and broker
namespaces, polling helpers and real Celery processes (tests/support/*, tests/conftest.py)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
import redis
from celery import Celery
from sqlalchemy import create_engine, inspect, text

from tests.support.cluster import REPO_ROOT, TEST_TIMINGS, Cluster
from tests.support.servers import (
    Broker,
    ExternalPostgres,
    ExternalRedis,
    PostgresServer,
    RedisServer,
    create_database,
    drop_database,
    psycopg_conninfo,
)
from tests.support.wait import holds_for, poll, wait_for_file_lines, wait_until

try:
    import app.db.migrate  # noqa: F401

    HAVE_MIGRATE = True
except ImportError:
    HAVE_MIGRATE = False

STUB_TABLE = "tideflow_support_stub"


def _stub_upgrade(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(f"CREATE TABLE IF NOT EXISTS {STUB_TABLE} (id INTEGER PRIMARY KEY)"))
    finally:
        engine.dispose()


if not HAVE_MIGRATE:
    # app.db.migrate is not written yet: exercise the fixtures with a one-table schema instead.
    @pytest.fixture(scope="session")
    def schema_upgrade() -> Callable[[str], None]:
        return _stub_upgrade


def _dead(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _database_exists(postgres: PostgresServer | ExternalPostgres, name: str) -> bool:
    with psycopg.connect(psycopg_conninfo(postgres.maintenance_url)) as conn:
        row = conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row == (1,)


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


# -- PostgreSQL -------------------------------------------------------------------------------------


def test_pg_url_is_a_fresh_migrated_database(
    postgres: PostgresServer | ExternalPostgres, pg_url: str
) -> None:
    assert pg_url.startswith("postgresql+psycopg://")
    dbname = pg_url.rsplit("/", 1)[1]
    assert dbname.startswith("tf_") and len(dbname) == 11
    assert _tables(pg_url), "the template's schema was not copied"
    if not HAVE_MIGRATE:
        assert STUB_TABLE in _tables(pg_url)
    with psycopg.connect(psycopg_conninfo(pg_url)) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (dbname,)
        if not postgres.external:
            settings: dict[str, str] = dict(
                conn.execute(
                    "SELECT name, setting FROM pg_settings WHERE name IN "
                    "('fsync', 'synchronous_commit', 'full_page_writes', 'max_connections')"
                ).fetchall()
            )
            assert settings == {
                "fsync": "off",
                "synchronous_commit": "on",
                "full_page_writes": "off",
                "max_connections": "300",
            }
            assert conn.execute("SELECT current_setting('server_version_num')::int").fetchone()[0] >= 180000  # type: ignore[index]


def test_pg_databases_are_isolated(
    postgres: PostgresServer | ExternalPostgres, pg_template: str, pg_url: str
) -> None:
    with psycopg.connect(psycopg_conninfo(pg_url), autocommit=True) as conn:
        conn.execute("CREATE TABLE only_here (x int)")
    other = f"tf_{uuid.uuid4().hex[:8]}"
    other_url = create_database(postgres.maintenance_url, other, template=pg_template)
    try:
        assert "only_here" in _tables(pg_url)
        assert "only_here" not in _tables(other_url)
        assert _tables(other_url) == _tables(pg_url) - {"only_here"}
    finally:
        drop_database(postgres.maintenance_url, other)
    assert not _database_exists(postgres, other)


def test_pg_url_database_is_dropped_even_with_open_connections(
    postgres: PostgresServer | ExternalPostgres, pg_template: str
) -> None:
    name = f"tf_{uuid.uuid4().hex[:8]}"
    url = create_database(postgres.maintenance_url, name, template=pg_template)
    leftover = psycopg.connect(psycopg_conninfo(url))  # e.g. a pool a test forgot to dispose
    try:
        drop_database(postgres.maintenance_url, name)
    finally:
        leftover.close()
    assert not _database_exists(postgres, name)


def test_sqlite_url_is_migrated(sqlite_url: str, tmp_path: Path) -> None:
    assert sqlite_url == f"sqlite:///{tmp_path / 'tideflow.sqlite3'}"
    assert (tmp_path / "tideflow.sqlite3").exists()
    assert _tables(sqlite_url)


def test_db_url_covers_both_backends(db_url: str, request: pytest.FixtureRequest) -> None:
    backend = request.node.callspec.id
    assert backend in ("pg", "sqlite")
    assert db_url.startswith("postgresql+psycopg://" if backend == "pg" else "sqlite:///")
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()


def test_own_postgres_survives_restart_and_kill() -> None:
    with PostgresServer() as server:
        url = server.url("postgres")
        with psycopg.connect(psycopg_conninfo(url), autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (x int)")
            conn.execute("INSERT INTO kept VALUES (1)")
        server.restart()
        assert server.url("postgres") == url
        with psycopg.connect(psycopg_conninfo(url), autocommit=True) as conn:
            conn.execute("INSERT INTO kept VALUES (2)")
        pid = server.postmaster_pid()
        server.kill()
        assert not server.is_running()
        assert _dead(pid)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(psycopg_conninfo(url), connect_timeout=2)
        server.start()  # crash recovery
        with psycopg.connect(psycopg_conninfo(url)) as conn:
            assert conn.execute("SELECT x FROM kept ORDER BY x").fetchall() == [(1,), (2,)]
        base = server.base_dir
    assert not base.exists()


# -- Redis ------------------------------------------------------------------------------------------


def test_redis_server_answers(redis_server: RedisServer | ExternalRedis) -> None:
    client = redis.Redis.from_url(redis_server.url(5), decode_responses=True)
    try:
        assert client.ping()
        if not redis_server.external:
            assert client.config_get("databases") == {"databases": "64"}
            assert client.config_get("save") == {"save": ""}
            assert client.config_get("appendonly") == {"appendonly": "no"}
    finally:
        client.close()


def test_broker_namespace(broker: Broker, redis_server: RedisServer | ExternalRedis) -> None:
    assert broker.key_prefix.startswith("tf-") and broker.key_prefix.endswith(":")
    assert broker.url == redis_server.url(0)
    other = Broker(broker.url, f"tf-{uuid.uuid4().hex[:8]}:")
    client = broker.client()
    try:
        client.rpush(f"{broker.key_prefix}tideflow.default", "m1")
        client.set(f"{broker.key_prefix}unacked", "x")
        client.set(f"{other.key_prefix}tideflow.default", "theirs")
        assert broker.keys() == [f"{broker.key_prefix}tideflow.default", f"{broker.key_prefix}unacked"]
        assert other.keys() == [f"{other.key_prefix}tideflow.default"]
        assert broker.delete_queues() == 2
        assert broker.keys() == []
        assert client.get(f"{other.key_prefix}tideflow.default") == "theirs"
    finally:
        other.delete_queues()
        other.close()
        client.close()


def test_own_redis_restart_and_kill_lose_keys() -> None:
    with RedisServer() as server:
        url = server.url(3)
        client = redis.Redis.from_url(url)
        try:
            client.set("k", "v")
            server.restart()
            assert server.url(3) == url
            assert client.get("k") is None  # no persistence
            client.set("k", "v")
            pid = server.pid
            server.kill()
            assert _dead(pid)
            with pytest.raises(redis.ConnectionError):
                client.ping()
            server.start()
            assert client.get("k") is None
        finally:
            client.close()


# -- wait helpers -----------------------------------------------------------------------------------


def test_wait_until_returns_the_truthy_value() -> None:
    calls = iter([0, None, "", "done"])
    assert wait_until(lambda: next(calls), timeout=5, interval=0.001) == "done"


def test_wait_until_raises_with_message_and_last_value() -> None:
    with pytest.raises(AssertionError, match=r"never happened .*last value: \[\]"):
        wait_until(list, timeout=0.1, interval=0.01, message="never happened")


def test_wait_until_can_ignore_exceptions() -> None:
    attempts: list[int] = []

    def flaky() -> int:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("not yet")
        return len(attempts)

    assert wait_until(flaky, timeout=5, interval=0.001, ignore=(ConnectionError,)) == 3

    def refused() -> bool:
        raise ConnectionError("refused")

    with pytest.raises(AssertionError, match="last value: ConnectionError"):
        wait_until(refused, timeout=0.1, interval=0.01, ignore=(ConnectionError,))
    with pytest.raises(ConnectionError):
        wait_until(refused, timeout=5)  # not ignored: raised at once


def test_poll_returns_the_truthy_value_or_none_at_the_deadline() -> None:
    calls = iter([0, None, "", "done"])
    assert poll(lambda: next(calls), timeout=5, interval=0.001) == "done"
    seen: list[float] = []
    t0 = time.monotonic()
    assert poll(lambda: seen.append(time.monotonic()) or 0, timeout=0.2, interval=0.01) is None  # not the 0
    assert seen[-1] - t0 >= 0.2 and len(seen) > 2  # called until the deadline, once more after it
    assert poll(lambda: seen.append(0.0), timeout=0) is None and seen[-1] == 0.0  # called at least once


def test_holds_for_fails_as_soon_as_the_condition_breaks() -> None:
    holds_for(lambda: True, 0.1, interval=0.01)
    values = iter([True, True, False, True])
    t0 = time.monotonic()
    with pytest.raises(AssertionError, match="went false"):
        holds_for(lambda: next(values), 5, interval=0.01, message="went false")
    assert time.monotonic() - t0 < 5

    def asserts() -> bool:
        raise AssertionError("its own message")

    with pytest.raises(AssertionError, match="its own message"):
        holds_for(asserts, 5)


def test_wait_for_file_lines_counts_complete_lines_only(tmp_path: Path) -> None:
    path = tmp_path / "ledger.txt"
    with pytest.raises(AssertionError, match="did not reach 1"):
        wait_for_file_lines(path, 1, timeout=0.1)
    path.write_text("a\nb\npartial")
    assert wait_for_file_lines(path, 2, timeout=1) == ["a", "b"]
    with pytest.raises(AssertionError, match="has 2"):
        wait_for_file_lines(path, 3, timeout=0.1)
    assert wait_for_file_lines(tmp_path / "missing.txt", 0, timeout=0.1) == []


# -- Celery processes -------------------------------------------------------------------------------

PROBE_APP = textwrap.dedent(
    """
    import os

    from celery import Celery

    app = Celery("tfprobe", broker=os.environ["TIDEFLOW_BROKER_URL"])
    app.conf.broker_transport_options = {"global_keyprefix": os.environ["TIDEFLOW_BROKER_KEY_PREFIX"]}
    app.conf.task_default_queue = "tideflow.default"
    app.conf.broker_connection_retry_on_startup = True
    app.conf.beat_schedule = {"tick": {"task": "tfprobe.record", "schedule": 0.3, "args": ("tick",)}}


    @app.task(name="tfprobe.record")
    def record(word):
        with open(os.environ["TIDEFLOW_TEST_LEDGER"], "a") as ledger:
            ledger.write(f"{word} {os.getpid()} {os.environ['TIDEFLOW_LEASE_SECONDS']}\\n")
    """
)


@pytest.fixture
def probe_cluster(tmp_path: Path, broker: Broker) -> Iterator[Cluster]:
    """A Cluster running a throwaway Celery app (``tfprobe``) instead of the real ``tasks`` package."""
    moddir = tmp_path / "probe"
    moddir.mkdir()
    (moddir / "tfprobe.py").write_text(PROBE_APP)
    cluster = Cluster(
        "sqlite:///unused.sqlite3",
        broker.url,
        broker.key_prefix,
        tmp_path / "cluster",
        {"TIDEFLOW_LEASE_SECONDS": "7"},
        celery_app="tfprobe",
        extra_pythonpath=[moddir],
    )
    try:
        yield cluster
    finally:
        cluster.stop()


def _probe_sender(broker: Broker) -> Celery:
    sender = Celery("sender", broker=broker.url)
    sender.conf.broker_transport_options = {"global_keyprefix": broker.key_prefix}
    return sender


def test_cluster_runs_real_celery_processes(probe_cluster: Cluster, broker: Broker) -> None:
    env = probe_cluster.env
    assert env["TIDEFLOW_BROKER_KEY_PREFIX"] == broker.key_prefix
    assert env["TIDEFLOW_LEASE_SECONDS"] == "7"  # overrides win over the test timings
    assert env["PYTHONPATH"].split(os.pathsep)[1] == str(REPO_ROOT)

    worker = probe_cluster.start_worker("w1", concurrency=2)
    assert "ready." in worker.log()
    pool = worker.children()
    assert len(pool) == 2

    sender = _probe_sender(broker)
    try:
        sender.send_task("tfprobe.record", args=("hello",), queue="tideflow.default")
        lines = wait_for_file_lines(probe_cluster.ledger, 1, timeout=30)
    finally:
        sender.close()
    word, pid, lease = lines[0].split()
    assert (word, lease) == ("hello", "7")
    assert int(pid) in pool
    # kombu wrote its keys under the test's prefix only
    keys = broker.keys()
    assert any(key.endswith("tideflow.default") for key in keys)

    beat = probe_cluster.start_beat()
    wait_until(lambda: sum(line.startswith("tick") for line in probe_cluster.ledger_lines()) >= 2, timeout=30)
    beat.terminate(timeout=10)
    assert not beat.is_alive()

    everything = [worker.pid, *pool]
    worker.kill()
    assert not worker.is_alive()
    assert worker.children() == []
    assert all(_dead(p) for p in everything)

    w2 = probe_cluster.start_worker("w2", queues=["tideflow.master"], concurrency=1)
    assert len(w2.children()) == 1
    probe_cluster.stop()
    assert not w2.is_alive()
    assert (probe_cluster.workdir / "w1.log").exists() and (probe_cluster.workdir / "beat.log").exists()
    assert "===== w2.log" in probe_cluster.dump_logs(lines=5)


def test_cluster_start_worker_fails_fast_with_log_tail(probe_cluster: Cluster) -> None:
    probe_cluster.celery_app = "no_such_module_tfprobe"
    with pytest.raises(AssertionError, match="exited with .* before logging 'ready.'"):
        probe_cluster.start_worker("broken", timeout=30)


def test_cluster_fixture_wiring(cluster: Cluster, db_url: str, broker: Broker, tmp_path: Path) -> None:
    assert cluster.database_url == db_url
    env = cluster.env
    assert env["TIDEFLOW_DATABASE_URL"] == db_url
    assert env["TIDEFLOW_BROKER_URL"] == broker.url
    assert env["TIDEFLOW_BROKER_KEY_PREFIX"] == broker.key_prefix
    assert env["TIDEFLOW_TEST_LEDGER"] == str(tmp_path / "cluster" / "ledger.txt")
    assert env["PYTHONUNBUFFERED"] == "1"
    for key, value in TEST_TIMINGS.items():
        assert env[key] == value


@pytest.mark.cluster_env(TIDEFLOW_LEASE_SECONDS="9")
def test_cluster_env_marker(cluster: Cluster) -> None:
    assert cluster.env["TIDEFLOW_LEASE_SECONDS"] == "9"


def _real_celery_app_available() -> str | None:
    """None if ``celery -A tasks`` can work, else why not."""
    if importlib.util.find_spec("tasks") is None or not (REPO_ROOT / "tasks" / "__init__.py").exists():
        return "the tasks package is not written yet"
    try:
        tasks = importlib.import_module("tasks")
    except Exception as exc:
        return f"import tasks failed: {exc!r}"
    if isinstance(getattr(tasks, "app", None), Celery) or isinstance(getattr(tasks, "celery", None), Celery):
        return None
    return "tasks has no Celery app attribute (app / celery)"


def test_cluster_starts_the_real_tasks_worker(cluster: Cluster) -> None:
    reason = _real_celery_app_available()
    if reason:
        pytest.skip(reason)
    worker = cluster.start_worker("w1")
    assert len(worker.children()) == 2
    if importlib.util.find_spec("app.cli") is not None:
        assert cluster.run_cli("--help").returncode == 0
    cluster.stop()
    assert not worker.is_alive()
