"""files.expires_at: uploads expire (OpenAI's expires_after; POOLQ_FILE_EXPIRY_S by default)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 07:50:00

Files uploaded before this revision keep expires_at NULL: they were accepted
as kept-until-deleted, so they stay that way.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('files', sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True))
    op.create_index('ix_files_expires_at', 'files', ['expires_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_files_expires_at', table_name='files')
    op.drop_column('files', 'expires_at')
