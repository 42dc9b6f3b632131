"""named API tokens with roles (viewer, operator, admin); only the SHA-256 of each secret is stored

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 06:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.db.schema import UTCDateTime

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        'api_tokens',
        sa.Column('id', Id, nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('role', sa.String(length=20), nullable=False),
        sa.Column('digest', sa.String(length=64), nullable=False),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id', name='pk_api_tokens'),
        sa.UniqueConstraint('name', name='uq_api_tokens_name'),
        sa.UniqueConstraint('digest', name='uq_api_tokens_digest'),
    )


def downgrade() -> None:
    op.drop_table('api_tokens')
