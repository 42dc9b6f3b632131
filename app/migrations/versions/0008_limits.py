"""concurrency and rate limits: pools (slots per pool), a task's pool, queued runs (max_active_runs),
concurrency keys of runs and tasks, rate limits (a sliding log of starts)

Revision ID: 0008
Revises: 0006
Create Date: 2026-12-01 07:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.db.schema import UTCDateTime

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

_LIVE_POOL = "pool IS NOT NULL AND state IN ('submitted', 'running')"
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_LIVE_KEY = "concurrency_key IS NOT NULL AND state IN ('submitted', 'running')"


def upgrade() -> None:
    op.create_table(
        'pools',
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('slots', sa.Integer(), nullable=False),
        sa.Column('rate_limit', sa.String(length=20), nullable=True),
        sa.Column('updated_at', UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('name', name='pk_pools'),
    )
    op.add_column('task_runs', sa.Column('pool', sa.String(length=100), nullable=True))
    op.create_index('ix_task_runs_pool', 'task_runs', ['pool', 'state'],
                    postgresql_where=sa.text(_LIVE_POOL), sqlite_where=sa.text(_LIVE_POOL))
    op.add_column('task_runs', sa.Column('concurrency_key', sa.String(length=200), nullable=True))
    op.add_column('task_runs', sa.Column('concurrency_limit', sa.Integer(), nullable=True))
    op.create_index('ix_task_runs_concurrency_key', 'task_runs', ['concurrency_key', 'state'],
                    postgresql_where=sa.text(_LIVE_KEY), sqlite_where=sa.text(_LIVE_KEY))
    op.add_column('workflow_runs', sa.Column('concurrency_key', sa.String(length=200), nullable=True))
    op.add_column('task_runs', sa.Column('rate_key', sa.String(length=200), nullable=True))
    op.add_column('task_runs', sa.Column('rate_limit', sa.String(length=20), nullable=True))
    op.create_table(
        'rate_starts',
        sa.Column('id', Id, nullable=False),
        sa.Column('rate_key', sa.String(length=200), nullable=False),
        sa.Column('started_at', UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id', name='pk_rate_starts'),
    )
    op.create_index('ix_rate_starts_rate_key_started_at', 'rate_starts', ['rate_key', 'started_at'])
    op.create_index('ix_workflow_runs_queued', 'workflow_runs', ['workflow_name', 'priority', 'id'],
                    postgresql_where=sa.text("state = 'queued'"), sqlite_where=sa.text("state = 'queued'"))


def downgrade() -> None:
    op.drop_index('ix_workflow_runs_queued', table_name='workflow_runs')
    op.drop_index('ix_rate_starts_rate_key_started_at', table_name='rate_starts')
    op.drop_table('rate_starts')
    op.drop_column('task_runs', 'rate_limit')
    op.drop_column('task_runs', 'rate_key')
    op.drop_column('workflow_runs', 'concurrency_key')
    op.drop_index('ix_task_runs_concurrency_key', table_name='task_runs')
    op.drop_column('task_runs', 'concurrency_limit')
    op.drop_column('task_runs', 'concurrency_key')
    op.drop_index('ix_task_runs_pool', table_name='task_runs')
    op.drop_column('task_runs', 'pool')
    op.drop_table('pools')
