"""cron schedules: schedules, their fire times (one row per (schedule, fire time): at most one run each), durable
backfills; runs know the schedule and logical time that started them

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 07:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.db.schema import UTCDateTime

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column('workflow_runs', sa.Column('schedule_name', sa.String(length=100), nullable=True))
    op.add_column('workflow_runs', sa.Column('schedule_time', UTCDateTime(), nullable=True))
    op.create_table(
        'schedules',
        sa.Column('id', Id, nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('workflow_name', sa.String(length=100), nullable=False),
        sa.Column('spec', sa.JSON(), nullable=False),
        sa.Column('paused', sa.Boolean(), server_default=sa.text('false'), nullable=False),
        sa.Column('paused_by', sa.String(length=200), nullable=True),
        sa.Column('paused_at', UTCDateTime(), nullable=True),
        sa.Column('active', sa.Boolean(), server_default=sa.text('true'), nullable=False),
        sa.Column('cursor', UTCDateTime(), nullable=False),
        sa.Column('next_due_at', UTCDateTime(), nullable=True),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.Column('updated_at', UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id', name='pk_schedules'),
        sa.UniqueConstraint('name', name='uq_schedules_name'),
    )
    op.create_index('ix_schedules_workflow_name', 'schedules', ['workflow_name'])
    op.create_index('ix_schedules_due', 'schedules', ['next_due_at'],
                    postgresql_where=sa.text('active AND NOT paused'), sqlite_where=sa.text('active AND NOT paused'))
    op.create_table(
        'backfills',
        sa.Column('id', Id, nullable=False),
        sa.Column('schedule_name', sa.String(length=100), nullable=False),
        sa.Column('range_start', UTCDateTime(), nullable=False),
        sa.Column('range_end', UTCDateTime(), nullable=False),
        sa.Column('parallel', sa.Integer(), nullable=False),
        sa.Column('state', sa.String(length=20), nullable=False),
        sa.Column('actor', sa.String(length=200), nullable=False),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.Column('updated_at', UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id', name='pk_backfills'),
        sa.UniqueConstraint('schedule_name', 'range_start', 'range_end',
                            name='uq_backfills_schedule_name_range_start_range_end'),
    )
    op.create_table(
        'schedule_fires',
        sa.Column('id', Id, nullable=False),
        sa.Column('schedule_name', sa.String(length=100), nullable=False),
        sa.Column('fire_time', UTCDateTime(), nullable=False),
        sa.Column('outcome', sa.String(length=20), nullable=False),
        sa.Column('run_id', Id, nullable=True),
        sa.Column('backfill_id', Id, nullable=True),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('actor', sa.String(length=200), nullable=False),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.Column('updated_at', UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(['run_id'], ['workflow_runs.id'], name='fk_schedule_fires_run_id_workflow_runs'),
        sa.ForeignKeyConstraint(['backfill_id'], ['backfills.id'], name='fk_schedule_fires_backfill_id_backfills'),
        sa.PrimaryKeyConstraint('id', name='pk_schedule_fires'),
        sa.UniqueConstraint('schedule_name', 'fire_time', name='uq_schedule_fires_schedule_name_fire_time'),
    )
    op.create_index('ix_schedule_fires_backfill_id', 'schedule_fires', ['backfill_id'])
    op.create_index('ix_schedule_fires_waiting', 'schedule_fires', ['schedule_name', 'fire_time'],
                    postgresql_where=sa.text("outcome IN ('buffered', 'pending')"),
                    sqlite_where=sa.text("outcome IN ('buffered', 'pending')"))


def downgrade() -> None:
    op.drop_index('ix_schedule_fires_waiting', table_name='schedule_fires')
    op.drop_index('ix_schedule_fires_backfill_id', table_name='schedule_fires')
    op.drop_table('schedule_fires')
    op.drop_table('backfills')
    op.drop_index('ix_schedules_due', table_name='schedules')
    op.drop_index('ix_schedules_workflow_name', table_name='schedules')
    op.drop_table('schedules')
    op.drop_column('workflow_runs', 'schedule_time')
    op.drop_column('workflow_runs', 'schedule_name')
