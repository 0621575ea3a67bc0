"""``kgents tenant …`` and ``kgents key …``: administration against the local database.

These work without a running server: they open the same database the server uses.
"""

from typing import Annotated

import typer
from rich.table import Table

from kgents.cli.common import DataDirOption, console, load_settings, run
from kgents.platform import open_platform

tenant_app = typer.Typer(help="Create and list tenants.", no_args_is_help=True)
key_app = typer.Typer(help="Create and revoke API keys.", no_args_is_help=True)


@tenant_app.command("create")
def tenant_create(
    name: Annotated[str, typer.Argument(help="Tenant name")],
    plan: Annotated[str, typer.Option(help="Plan: free, pro, enterprise, custom")] = "free",
    data_dir: DataDirOption = None,
) -> None:
    """Create a tenant and a first API key (shown once)."""
    settings = load_settings(data_dir)

    async def create() -> None:
        async with open_platform(settings) as platform:
            tenant = await platform.tenancy.create_tenant(name=name, plan=plan)
            issued = await platform.tenancy.create_api_key(tenant_id=tenant.id, name="default")
        console.print(f"tenant_id: {tenant.id}")
        console.print(f"plan:      {tenant.plan}")
        console.print(f"api_key:   {issued.secret}")
        console.print("[dim]The API key is shown only once. Keep it somewhere safe.[/dim]")

    run(create())


@tenant_app.command("list")
def tenant_list(data_dir: DataDirOption = None) -> None:
    """List tenants."""
    settings = load_settings(data_dir)

    async def list_() -> None:
        async with open_platform(settings) as platform:
            tenants, total = await platform.tenancy.list_tenants(limit=1000, offset=0)
        table = Table(title=f"{total} tenants")
        table.add_column("id", no_wrap=True)
        table.add_column("name")
        table.add_column("plan")
        table.add_column("status")
        table.add_column("created (UTC)", no_wrap=True)
        for tenant in tenants:
            created = tenant.created_at.strftime("%Y-%m-%d %H:%M")
            table.add_row(tenant.id, tenant.name, tenant.plan, tenant.status, created)
        console.print(table)

    run(list_())


@key_app.command("create")
def key_create(
    tenant_id: Annotated[str, typer.Argument(help="Tenant id")],
    name: Annotated[str, typer.Option(help="Key name")] = "default",
    data_dir: DataDirOption = None,
) -> None:
    """Create an API key for a tenant (shown once)."""
    settings = load_settings(data_dir)

    async def create() -> None:
        async with open_platform(settings) as platform:
            issued = await platform.tenancy.create_api_key(tenant_id=tenant_id, name=name)
        console.print(f"key_id:  {issued.key.id}")
        console.print(f"api_key: {issued.secret}")

    run(create())


@key_app.command("revoke")
def key_revoke(
    key_id: Annotated[str, typer.Argument(help="Key id (key_…)")],
    data_dir: DataDirOption = None,
) -> None:
    """Revoke an API key."""
    settings = load_settings(data_dir)

    async def revoke() -> None:
        async with open_platform(settings) as platform:
            key = await platform.tenancy.revoke_api_key(key_id=key_id)
        revoked = key.revoked_at.isoformat() if key.revoked_at else "?"
        console.print(f"revoked {key.id} ({key.prefix}…) at {revoked}")

    run(revoke())
