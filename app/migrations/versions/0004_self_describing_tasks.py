"""task rows describe themselves (what to run, timeout, retry policy, lost-attempt budget), so the worker, lease
keeper and reconciler never read the workflow definition; runs say which decider advances them

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 23:00:00
"""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

COLUMNS: list[sa.Column[Any]] = [
    sa.Column('body', sa.JSON(), server_default=sa.text("'{}'"), nullable=False),
    sa.Column('timeout', sa.Float(), nullable=True),
    sa.Column('retries', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('retry_delay', sa.Float(), server_default=sa.text('0'), nullable=False),
    sa.Column('retry_backoff', sa.Float(), server_default=sa.text('2'), nullable=False),
    sa.Column('max_retry_delay', sa.Float(), server_default=sa.text('3600'), nullable=False),
    sa.Column('max_lost_attempts', sa.Integer(), server_default=sa.text('3'), nullable=False),
    sa.Column('on_lost', sa.String(length=10), server_default=sa.text("'retry'"), nullable=False),
    sa.Column('lost_attempts', sa.Integer(), server_default=sa.text('0'), nullable=False),
]


def upgrade() -> None:
    op.add_column('workflow_runs', sa.Column('kind', sa.String(length=20), server_default=sa.text("'dag'"),
                                             nullable=False))
    for column in COLUMNS:
        op.add_column('task_runs', column)
    _backfill()


def _backfill() -> None:
    """Snapshot each existing task's definition into its row (runs keep the version they started with)."""
    from app.definitions import WorkflowSpec, task_row_values

    conn = op.get_bind()
    workflows = sa.table('workflows', sa.column('id'), sa.column('definition', sa.JSON()))
    runs = sa.table('workflow_runs', sa.column('id'), sa.column('workflow_id'))
    tasks = sa.table('task_runs', sa.column('run_id'), sa.column('name'), *(sa.column(c.name, c.type)
                                                                             for c in COLUMNS))
    for wf_id, definition in conn.execute(sa.select(workflows.c.id, workflows.c.definition)).all():
        spec = WorkflowSpec.model_validate(definition)
        for task in spec.tasks:
            values: dict[str, Any] = task_row_values(spec, task, default_max_lost_attempts=3)
            values = {k: v for k, v in values.items() if k in tasks.c}
            conn.execute(tasks.update()
                         .where(tasks.c.name == task.name,
                                tasks.c.run_id.in_(sa.select(runs.c.id).where(runs.c.workflow_id == wf_id)))
                         .values(**values))


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN (SQLite >= 3.35): keeps the tables' partial indexes as they are
    for column in reversed(COLUMNS):
        op.drop_column('task_runs', column.name)
    op.drop_column('workflow_runs', 'kind')
