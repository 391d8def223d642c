"""batches: chunks_total NULL while validation cuts the input; validated_at, validated_lines

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 19:00:00

Validation stores a batch's chunks step by step as it parses the input, so
the first chunks run while the rest is read: the batch is in_progress with
chunks_total NULL until the last step stores the count. validated_at is when
validation last stored a step (the sweeper re-sends a validation that
stopped making progress), validated_lines how many input lines its steps
cover (a validation run again stores only the bad lines after them).
Existing batches keep their counts.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('batches', schema=None) as batch_op:
        batch_op.alter_column('chunks_total', existing_type=sa.Integer(), nullable=True)
        batch_op.add_column(sa.Column('validated_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('validated_lines', sa.Integer(), nullable=False, server_default='0'))
    with op.batch_alter_table('batches', schema=None) as batch_op:
        batch_op.alter_column('validated_lines', server_default=None)  # the ORM sets it


def downgrade() -> None:
    # A batch still being cut when this runs keeps the chunks it has; the rest of its input is not run.
    op.execute("UPDATE batches SET chunks_total = (SELECT count(*) FROM batch_chunks c WHERE c.batch_id = batches.id) "
               "WHERE chunks_total IS NULL")
    with op.batch_alter_table('batches', schema=None) as batch_op:
        batch_op.drop_column('validated_lines')
        batch_op.drop_column('validated_at')
        batch_op.alter_column('chunks_total', existing_type=sa.Integer(), nullable=False)
