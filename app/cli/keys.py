"""`poolq keys ...`: API keys, straight in the database (an operator's command)."""

from __future__ import annotations

import click

from app.cli.options import settings_from_env


@click.group()
def keys() -> None:
    """Create, list and revoke API keys (each belongs to a tenant)."""


def _session():
    from app.db import make_engine, make_session_factory

    return make_session_factory(make_engine(settings_from_env().database_url))()


@keys.command("create")
@click.option("--tenant", required=True, help="Tenant name; created if new.")
@click.option("--name", default=None, help="A label for the key.")
@click.option("--max-queued-jobs", type=int, default=None, help="The tenant's queued-job limit (429 past it).")
def keys_create(tenant, name, max_queued_jobs) -> None:
    """Create a key for TENANT and print it (it is shown once)."""
    from app.tenants.services import create_key

    with _session() as session:
        created = create_key(session, tenant, name, max_queued_jobs)
        session.commit()
    click.echo(f"key {created.id} for tenant {created.tenant} (shown once; store it now):")
    click.echo(created.key)


@keys.command("list")
@click.option("--tenant", default=None, help="Only this tenant's keys.")
def keys_list(tenant) -> None:
    """Every key: id, prefix, tenant, label and whether it is revoked."""
    from app.tenants.services import list_keys

    with _session() as session:
        for key, owner in list_keys(session, tenant):
            state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
            click.echo(f"{key.id}  pq_{key.prefix}_…  tenant={owner.name}  name={key.name or '-'}  {state}")


@keys.command("revoke")
@click.argument("key")
def keys_revoke(key) -> None:
    """Revoke KEY, given as its id or its prefix."""
    from app.tenants.services import revoke_key

    with _session() as session:
        done = revoke_key(session, key)
        session.commit()
    if not done:
        raise click.ClickException(f"no active key {key!r}")
    click.echo(f"revoked {key}")
