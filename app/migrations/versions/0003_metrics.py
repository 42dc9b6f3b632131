"""what /metrics needs: when a task became ready to run (task_runs.ready_at) and how long its attempt then
waited for a worker (task_attempts.wait_seconds); a counters table for events that leave no row (a message
retried because its task row was not visible yet)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 10:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import app.db.schema

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('counters',
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('value', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_counters'))
    )
    # nullable columns: a plain ADD COLUMN on both backends (no table rebuild on SQLite)
    op.add_column('task_runs', sa.Column('ready_at', app.db.schema.UTCDateTime(timezone=True), nullable=True))
    op.add_column('task_attempts', sa.Column('wait_seconds', sa.Float(), nullable=True))


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN (SQLite >= 3.35): keeps the tables' partial indexes as they are
    op.drop_column('task_attempts', 'wait_seconds')
    op.drop_column('task_runs', 'ready_at')
    op.drop_table('counters')
