"""tenants api keys job lifecycle

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 04:57:49.526023
"""
from __future__ import annotations

import base64
import datetime as dt
import secrets
import uuid

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

DEFAULT_TENANT_ID = "00000000-0000-0000-0000-000000000001"

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('tenants',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('webhook_secret', sa.String(length=128), nullable=False),
    sa.Column('previous_webhook_secret', sa.String(length=128), nullable=True),
    sa.Column('secret_rotated_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('max_queued_jobs', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tenants')),
    sa.UniqueConstraint('name', name=op.f('uq_tenants_name'))
    )
    # The tenant that owns every job while authentication is off, and every
    # job that existed before tenants did.
    tenants = sa.table("tenants", sa.column("id", sa.Uuid()), sa.column("name", sa.String()),
                       sa.column("webhook_secret", sa.String()), sa.column("created_at", sa.DateTime(timezone=True)))
    op.bulk_insert(tenants, [{
        "id": uuid.UUID(DEFAULT_TENANT_ID), "name": "default",
        "webhook_secret": "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode(),
        "created_at": dt.datetime.now(dt.timezone.utc),
    }])
    op.create_table('api_keys',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=True),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_api_keys_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
    sa.UniqueConstraint('prefix', name=op.f('uq_api_keys_prefix'))
    )
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_keys_tenant_id'), ['tenant_id'], unique=False)

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tenant_id', sa.Uuid(), nullable=False,
                                      server_default=sa.text(f"'{DEFAULT_TENANT_ID}'")))
        batch_op.add_column(sa.Column('metadata', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True))
        batch_op.add_column(sa.Column('idempotency_key', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('request_hash', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('webhook_url', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('webhook_events', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True))
        batch_op.create_index('ix_jobs_tenant_created_at', ['tenant_id', 'created_at', 'id'], unique=False)
        batch_op.create_unique_constraint('uq_jobs_tenant_idempotency_key', ['tenant_id', 'idempotency_key'])
        batch_op.create_foreign_key(batch_op.f('fk_jobs_tenant_id_tenants'), 'tenants', ['tenant_id'], ['id'], ondelete='CASCADE')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        # Existing rows have their tenant now; new ones must name theirs.
        batch_op.alter_column('tenant_id', server_default=None)
        # JSONB refuses "\u0000" in strings; requests may carry it (vLLM accepts it).
        batch_op.alter_column('request', type_=sa.JSON(), existing_nullable=False,
                              postgresql_using='request::json')
    with op.batch_alter_table('job_results', schema=None) as batch_op:
        batch_op.alter_column('body', type_=sa.JSON(), existing_nullable=False, postgresql_using='body::json')



def downgrade() -> None:
    with op.batch_alter_table('job_results', schema=None) as batch_op:
        batch_op.alter_column('body', type_=postgresql.JSONB(astext_type=sa.Text()).with_variant(sa.JSON(), 'sqlite'),
                              existing_nullable=False, postgresql_using='body::jsonb')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.alter_column('request', type_=postgresql.JSONB(astext_type=sa.Text()).with_variant(sa.JSON(), 'sqlite'),
                              existing_nullable=False, postgresql_using='request::jsonb')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_jobs_tenant_id_tenants'), type_='foreignkey')
        batch_op.drop_constraint('uq_jobs_tenant_idempotency_key', type_='unique')
        batch_op.drop_index('ix_jobs_tenant_created_at')
        batch_op.drop_column('webhook_events')
        batch_op.drop_column('webhook_url')
        batch_op.drop_column('request_hash')
        batch_op.drop_column('idempotency_key')
        batch_op.drop_column('metadata')
        batch_op.drop_column('tenant_id')

    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_keys_tenant_id'))

    op.drop_table('api_keys')
    op.drop_table('tenants')
