"""Leases: jobs and batch chunks carry the expiry their worker renews

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 10:00:00

A running job (or chunk) is held by the worker named in `worker` until
`lease_expires_at`; the worker renews all its leases in one statement per
heartbeat, and any worker takes over a job whose lease lapsed. This replaces
the running-timeout sweep. Rows running at upgrade time get no lease: the
first heartbeat of a new worker takes them over.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True))
    op.create_index('ix_jobs_status_lease_expires_at', 'jobs', ['status', 'lease_expires_at'], unique=False)
    op.add_column('batch_chunks', sa.Column('worker', sa.String(length=255), nullable=True))
    op.add_column('batch_chunks', sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True))
    op.create_index('ix_batch_chunks_status_lease_expires_at', 'batch_chunks', ['status', 'lease_expires_at'],
                    unique=False)
    # Running rows from before leases: expired now, so they are taken over at once.
    op.execute("UPDATE jobs SET lease_expires_at = started_at WHERE status = 'running'")
    op.execute("UPDATE batch_chunks SET lease_expires_at = started_at WHERE status = 'running'")


def downgrade() -> None:
    op.drop_index('ix_batch_chunks_status_lease_expires_at', table_name='batch_chunks')
    op.drop_column('batch_chunks', 'lease_expires_at')
    op.drop_column('batch_chunks', 'worker')
    op.drop_index('ix_jobs_status_lease_expires_at', table_name='jobs')
    op.drop_column('jobs', 'lease_expires_at')
