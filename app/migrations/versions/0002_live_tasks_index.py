"""indexes by run for the master's incremental advance: live tasks ("is anything left?") and unhandled
tasks ("what finished since the last advance?"), so an advance costs the same in a 10,000-task run

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 22:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

LIVE = "state IN ('pending', 'submitted', 'running')"


def upgrade() -> None:
    op.create_index('ix_task_runs_live', 'task_runs', ['run_id'], unique=False,
                    postgresql_where=sa.text(LIVE), sqlite_where=sa.text(LIVE))
    op.create_index('ix_task_runs_unhandled_run', 'task_runs', ['run_id'], unique=False,
                    postgresql_where=sa.text('handled = false'), sqlite_where=sa.text('handled = 0'))


def downgrade() -> None:
    op.drop_index('ix_task_runs_unhandled_run', table_name='task_runs',
                  postgresql_where=sa.text('handled = false'), sqlite_where=sa.text('handled = 0'))
    op.drop_index('ix_task_runs_live', table_name='task_runs', postgresql_where=sa.text(LIVE),
                  sqlite_where=sa.text(LIVE))
