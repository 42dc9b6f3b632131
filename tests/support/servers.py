"""Real PostgreSQL and Redis servers for the test session, started from pip-installed binaries.

This module only re-exports; the code lives in:

* :mod:`tests.support.postgres`: :class:`PostgresServer` / :class:`ExternalPostgres`, database helpers.
* :mod:`tests.support.redis_server`: :class:`RedisServer` / :class:`ExternalRedis`, :class:`Broker`.
* :mod:`tests.support.procs`: shared process/filesystem helpers (free ports, orphan reaping).
"""

from __future__ import annotations

from tests.support.postgres import (
    DATABASE_URL_ENV,
    ExternalPostgres,
    PostgresLike,
    PostgresServer,
    create_database,
    drop_database,
    postgres_from_env,
    psycopg_conninfo,
    terminate_backends,
    wait_pg_ready,
    with_database,
)
from tests.support.procs import free_port, reap_orphans, unique_name
from tests.support.redis_server import (
    REDIS_URL_ENV,
    Broker,
    ExternalRedis,
    RedisServer,
    redis_from_env,
    redis_server_binary,
    wait_redis_ready,
)

__all__ = [
    "DATABASE_URL_ENV",
    "REDIS_URL_ENV",
    "Broker",
    "ExternalPostgres",
    "ExternalRedis",
    "PostgresLike",
    "PostgresServer",
    "RedisServer",
    "create_database",
    "drop_database",
    "free_port",
    "postgres_from_env",
    "psycopg_conninfo",
    "reap_orphans",
    "redis_from_env",
    "redis_server_binary",
    "terminate_backends",
    "unique_name",
    "wait_pg_ready",
    "wait_redis_ready",
    "with_database",
]
