"""code run control: a step superseded by a reset (``task rerun``, ``task force-success``) keeps its row; a task's
name is unique in its run among the rows not superseded

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 09:30:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.db.schema import UTCDateTime

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

_LIVE_ROW = "superseded_at IS NULL"


def upgrade() -> None:
    with op.batch_alter_table('task_runs') as batch_op:
        batch_op.add_column(sa.Column('superseded_at', UTCDateTime(), nullable=True))
        batch_op.drop_constraint('uq_task_runs_run_id_name', type_='unique')
        batch_op.create_index('ux_task_runs_run_id_name', ['run_id', 'name'], unique=True,
                              postgresql_where=sa.text(_LIVE_ROW), sqlite_where=sa.text(_LIVE_ROW))


def downgrade() -> None:
    # superseded rows would break the unique (run_id, name): they are renamed aside first
    op.execute("UPDATE task_runs SET name = substr(name || '~' || CAST(id AS VARCHAR(20)), 1, 100) "
               "WHERE superseded_at IS NOT NULL")
    with op.batch_alter_table('task_runs') as batch_op:
        batch_op.drop_index('ux_task_runs_run_id_name')
        batch_op.create_unique_constraint('uq_task_runs_run_id_name', ['run_id', 'name'])
        batch_op.drop_column('superseded_at')
