"""``kgents tenant …`` and ``kgents key …``: administration against the local database.

These work without a running server: they open the same database the server uses.
"""

from datetime import datetime
from enum import StrEnum
from typing import Annotated

import typer
from rich.table import Table

from kgents.cli.common import DataDirOption, console, load_settings, run
from kgents.cli.typer_app import Typer
from kgents.clock import utc_now
from kgents.platform import open_platform
from kgents.records import ApiKey
from kgents.tenancy.service import DEFAULT_SCOPES, SCOPES

tenant_app = Typer(help="Create, list and update tenants.", no_args_is_help=True)
key_app = Typer(help="Create, list and revoke API keys.", no_args_is_help=True)


class TenantStatusChoice(StrEnum):
    active = "active"
    suspended = "suspended"


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
            table.add_row(
                tenant.id, tenant.name, tenant.plan, tenant.status, _minute(tenant.created_at)
            )
        console.print(table)

    run(list_())


@tenant_app.command("update")
def tenant_update(
    tenant_id: Annotated[str, typer.Argument(help="Tenant id (ten_…)")],
    plan: Annotated[
        str | None, typer.Option(help="New plan: free, pro, enterprise, custom", show_default=False)
    ] = None,
    status: Annotated[
        TenantStatusChoice | None,
        typer.Option(help="active, or suspended (its keys are refused)", show_default=False),
    ] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Change a tenant's plan or status."""
    if plan is None and status is None:
        raise typer.BadParameter("give --plan, --status or both", param_hint="--plan/--status")
    settings = load_settings(data_dir)

    async def update() -> None:
        async with open_platform(settings) as platform:
            tenant = await platform.tenancy.update_tenant(
                tenant_id=tenant_id,
                plan=plan,
                status=status.value if status is not None else None,
            )
        console.print(f"tenant_id: {tenant.id}")
        console.print(f"plan:      {tenant.plan}")
        console.print(f"status:    {tenant.status}")

    run(update())


@key_app.command("create")
def key_create(
    tenant_id: Annotated[str, typer.Argument(help="Tenant id")],
    name: Annotated[str, typer.Option(help="Key name")] = "default",
    scope: Annotated[
        list[str] | None,
        typer.Option(
            help=f"What the key may do, repeatable: {', '.join(SCOPES)} [default: all]",
            show_default=False,
        ),
    ] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Create an API key for a tenant (shown once)."""
    settings = load_settings(data_dir)
    scopes = tuple(scope) if scope else DEFAULT_SCOPES

    async def create() -> None:
        async with open_platform(settings) as platform:
            issued = await platform.tenancy.create_api_key(
                tenant_id=tenant_id, name=name, scopes=scopes
            )
        console.print(f"key_id:  {issued.key.id}")
        console.print(f"scopes:  {', '.join(issued.key.scopes)}")
        console.print(f"api_key: {issued.secret}")

    run(create())


@key_app.command("list")
def key_list(
    tenant_id: Annotated[str, typer.Argument(help="Tenant id (ten_…)")],
    data_dir: DataDirOption = None,
) -> None:
    """List a tenant's API keys (their prefixes: a full key is shown only once, at creation)."""
    settings = load_settings(data_dir)

    async def list_() -> None:
        async with open_platform(settings) as platform:
            keys = await platform.tenancy.list_api_keys(tenant_id=tenant_id)
        table = Table(title=f"{len(keys)} keys of {tenant_id}")
        for column in ("id", "name", "prefix", "scopes", "created (UTC)", "last used", "state"):
            table.add_column(column, no_wrap=column != "scopes")
        for key in keys:
            table.add_row(
                key.id,
                key.name,
                f"{key.prefix}…",
                ", ".join(key.scopes),
                _minute(key.created_at),
                _minute(key.last_used_at) if key.last_used_at else "never",
                _key_state(key),
            )
        console.print(table)

    run(list_())


def _minute(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M")


def _key_state(key: ApiKey) -> str:
    if key.revoked_at is not None:
        return f"revoked {_minute(key.revoked_at)}"
    if key.expires_at is not None:
        expired = key.expires_at <= utc_now()
        return f"{'expired' if expired else 'expires'} {_minute(key.expires_at)}"
    return "active"


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
