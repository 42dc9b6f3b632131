"""code workflows: steps of a code run are task rows with a position (seq) and a due time (timers, signal
timeouts); runs get an idempotency key, a result, published state, a cancel request and a continuation; signals

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 02:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.db.schema import UTCDateTime

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column('workflow_runs', sa.Column('key', sa.String(length=200), nullable=True))
    op.add_column('workflow_runs', sa.Column('result', sa.JSON(), nullable=True))
    op.add_column('workflow_runs', sa.Column('state_values', sa.JSON(), nullable=True))
    op.add_column('workflow_runs', sa.Column('cancel_requested', sa.Boolean(), server_default=sa.text('false'),
                                             nullable=False))
    op.add_column('workflow_runs', sa.Column('continued_run_id', Id, nullable=True))
    op.create_index('ix_workflow_runs_key', 'workflow_runs', ['key'], unique=True)
    op.add_column('task_runs', sa.Column('seq', sa.Integer(), nullable=True))
    op.add_column('task_runs', sa.Column('due_at', UTCDateTime(), nullable=True))
    op.create_index('ix_task_runs_due', 'task_runs', ['due_at'],
                    postgresql_where=sa.text("state = 'running' AND due_at IS NOT NULL"),
                    sqlite_where=sa.text("state = 'running' AND due_at IS NOT NULL"))
    op.create_table(
        'signals',
        sa.Column('id', Id, nullable=False),
        sa.Column('run_id', Id, nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('data', sa.JSON(), nullable=True),
        sa.Column('key', sa.String(length=200), nullable=True),
        sa.Column('actor', sa.String(length=200), nullable=False),
        sa.Column('task_run_id', Id, nullable=True),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(['run_id'], ['workflow_runs.id'], name='fk_signals_run_id_workflow_runs'),
        sa.ForeignKeyConstraint(['task_run_id'], ['task_runs.id'], name='fk_signals_task_run_id_task_runs'),
        sa.PrimaryKeyConstraint('id', name='pk_signals'),
        sa.UniqueConstraint('run_id', 'key', name='uq_signals_run_id_key'),
    )
    op.create_index('ix_signals_pending', 'signals', ['run_id', 'name', 'id'],
                    postgresql_where=sa.text('task_run_id IS NULL'), sqlite_where=sa.text('task_run_id IS NULL'))


def downgrade() -> None:
    op.drop_index('ix_signals_pending', table_name='signals')
    op.drop_table('signals')
    op.drop_index('ix_task_runs_due', table_name='task_runs')
    op.drop_column('task_runs', 'due_at')
    op.drop_column('task_runs', 'seq')
    op.drop_index('ix_workflow_runs_key', table_name='workflow_runs')
    for name in ('continued_run_id', 'cancel_requested', 'state_values', 'result', 'key'):
        op.drop_column('workflow_runs', name)
