"""files: a batch's output and error files name its lines instead of holding a copy

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 13:00:00

A batch's end wrote its output lines a second time, joined into one bytea
in `files.content` (a 100,000-line output: 47 MB, 306 ms of the closing
transaction). An output or error file now has no content of its own: it
names the batch (`batch_id`) and which of its lines (`batch_ok`), and its
bytes are those lines joined as the file is read. The lines cannot change
once the batch has ended, so neither can the file. Files written before
keep their content and read as before.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.alter_column('content', existing_type=sa.LargeBinary(), nullable=True)
        batch_op.add_column(sa.Column('batch_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('batch_ok', sa.Boolean(), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_files_batch_id_batches'), 'batches', ['batch_id'], ['id'],
                                    ondelete='CASCADE')
        batch_op.create_index('ix_files_batch_id', ['batch_id'], unique=False)


def downgrade() -> None:
    # The files that name lines get their bytes back first, one file at a time.
    bind = op.get_bind()
    named = bind.execute(sa.text("SELECT id, batch_id, batch_ok FROM files WHERE content IS NULL")).all()
    for file_id, batch_id, ok in named:
        lines = bind.execute(sa.text("SELECT line FROM batch_outputs WHERE batch_id = :b AND ok = :ok "
                                     "ORDER BY line_no"), {"b": batch_id, "ok": ok}).scalars().all()
        content = "".join(line + "\n" for line in lines).encode()
        bind.execute(sa.text("UPDATE files SET content = :c WHERE id = :id"), {"c": content, "id": file_id})
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.drop_index('ix_files_batch_id')
        batch_op.drop_constraint(batch_op.f('fk_files_batch_id_batches'), type_='foreignkey')
        batch_op.drop_column('batch_ok')
        batch_op.drop_column('batch_id')
        batch_op.alter_column('content', existing_type=sa.LargeBinary(), nullable=False)
