"""Schema migrations with Alembic (``tideflow db upgrade``). The migration scripts live in app/migrations.

:func:`schema_problem` is the one check of "is this database's schema the one this code needs": the CLI, the
web process and the workers call it to turn a raw SQL error on a database nobody ran ``tideflow db upgrade`` on
into that advice (:data:`UPGRADE_ADVICE`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, inspect
from sqlalchemy.engine import make_url

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"

#: what every "the schema is not there (or behind)" message ends with
UPGRADE_ADVICE = "run `tideflow db upgrade`"


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


@dataclass(frozen=True)
class UpgradeReport:
    """What ``tideflow db upgrade`` did: the revision it went from (None: an empty database) and to, and the
    tables it created."""

    before: str | None
    after: str | None
    created_tables: tuple[str, ...]

    def __str__(self) -> str:
        if self.before == self.after:
            return f"is up to date (revision {self.after})"
        went = f"revision {self.before or '(none)'} -> {self.after}"
        if self.before is None:
            return f"was empty: created the schema ({went}; {len(self.created_tables)} tables: " \
                   f"{', '.join(self.created_tables)})"
        made = f"; new tables: {', '.join(self.created_tables)}" if self.created_tables else ""
        return f"upgraded ({went}{made})"


def upgrade_reported(database_url: str, revision: str = "head") -> UpgradeReport:
    """:func:`upgrade`, saying what it changed."""
    before_rev, before_tables = _state(database_url)
    upgrade(database_url, revision)
    after_rev, after_tables = _state(database_url)
    return UpgradeReport(before_rev, after_rev, tuple(sorted(set(after_tables) - set(before_tables))))


def _state(database_url: str) -> tuple[str | None, list[str]]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return _current(conn), [t for t in inspect(conn).get_table_names() if t != "alembic_version"]
    finally:
        engine.dispose()


def _current(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def current(database_url: str) -> str | None:
    """The schema revision the database is at (None: not migrated): for operators and the migration tests."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return _current(conn)
    finally:
        engine.dispose()


@cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config("sqlite://"))


def head() -> str | None:
    """The revision this code's migrations end at."""
    return _scripts().get_current_head()


def schema_problem(engine: Engine) -> str | None:
    """None when the database's schema is at this code's head revision; otherwise one line saying what is wrong
    and what to do (``... run `tideflow db upgrade```). Raises what the connection raises (a database that is
    down is not a schema problem)."""
    where = make_url(engine.url).render_as_string(hide_password=True).split("@")[-1]
    with engine.connect() as conn:
        at = _current(conn)
    want = head()
    if at == want:
        return None
    if at is None:
        return f"the database at {where} has no Tideflow schema: {UPGRADE_ADVICE}"
    if at not in {s.revision for s in _scripts().walk_revisions()}:
        return (f"the database at {where} is at schema revision {at}, which this Tideflow does not know "
                f"(a newer version migrated it): upgrade Tideflow")
    return f"the database at {where} is at schema revision {at}, this Tideflow needs {want}: {UPGRADE_ADVICE}"
