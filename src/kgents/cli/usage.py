"""``kgents usage TENANT_ID``: a tenant's metered usage and token quota, from the local database.

Like ``GET /v1/usage``: every configured meter for the tenant's subject, grouped by the meter's
group keys, over the last 30 days in DAY windows unless told otherwise. ``--from`` and ``--to``
take ISO 8601 dates or date-times; one without an offset is read in ``--time-zone``.
"""

from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer
from rich.table import Table

from kgents.cli.common import DataDirOption, console, load_settings, run
from kgents.clock import utc_now
from kgents.metering.meters import WindowSize
from kgents.metering.query import DEFAULT_SPAN, QueryRow
from kgents.platform import open_platform


class Window(StrEnum):
    minute = "minute"
    hour = "hour"
    day = "day"
    month = "month"


_LABEL_FORMAT = {
    Window.minute: "%Y-%m-%d %H:%M",
    Window.hour: "%Y-%m-%d %H:%M",
    Window.day: "%Y-%m-%d",
    Window.month: "%Y-%m",
}


def usage(
    tenant_id: Annotated[str, typer.Argument(help="Tenant id (ten_…)")],
    window: Annotated[Window, typer.Option(help="Window size")] = Window.day,
    from_: Annotated[
        str | None,
        typer.Option("--from", help="Start, inclusive (ISO 8601) [default: 30 days before --to]"),
    ] = None,
    to: Annotated[
        str | None,
        typer.Option(help="End, exclusive (ISO 8601) [default: the end of the current minute]"),
    ] = None,
    time_zone: Annotated[
        str, typer.Option("--time-zone", help="IANA zone windows are aligned in")
    ] = "UTC",
    data_dir: DataDirOption = None,
) -> None:
    """Show a tenant's usage per meter and window, and its token quota for this month."""
    settings = load_settings(data_dir)
    zone = _zone(time_zone)
    end = _moment(to, zone, "--to") or utc_now().replace(second=0, microsecond=0) + timedelta(
        minutes=1
    )
    start = _moment(from_, zone, "--from") or end - DEFAULT_SPAN

    async def show() -> None:
        async with open_platform(settings) as platform:
            tenant = await platform.tenancy.get_tenant(tenant_id=tenant_id)
            plan = platform.tenancy.plan(tenant.plan)
            results: list[tuple[str, QueryRow]] = []
            for meter in platform.meters.meters:
                rows = await platform.meters.query(
                    meter,
                    subjects=[tenant.id],
                    group_by=list(meter.group_by),
                    from_=start,
                    to=end,
                    window_size=WindowSize(window.value.upper()),
                    window_time_zone=time_zone,
                )
                results.extend((meter.slug, row) for row in rows)
            quota = await platform.quota.status(tenant_id=tenant.id, plan=plan)

        results.sort(key=lambda item: item[1].window_start)
        console.print(
            f"Usage of {tenant.id} ({tenant.name}, plan {tenant.plan}) "
            f"from {start.astimezone(zone):%Y-%m-%d %H:%M} to {end.astimezone(zone):%Y-%m-%d %H:%M}"
            f" {time_zone}, {window.value} windows",
            highlight=False,
        )
        table = Table()
        table.add_column(f"window ({time_zone})", no_wrap=True)
        table.add_column("meter")
        table.add_column("group")
        table.add_column("value", justify="right")
        for slug, row in results:
            label = row.window_start.astimezone(zone).strftime(_LABEL_FORMAT[window])
            group = ", ".join(f"{key}={value}" for key, value in row.group_by.items())
            table.add_row(label, slug, group or "-", _number(row.value))
        console.print(table)
        if not results:
            console.print("[dim]No usage in this range.[/dim]")
        limit = "unlimited" if quota.limit is None else f"{quota.limit:,}"
        remaining = "unlimited" if quota.remaining is None else f"{quota.remaining:,}"
        console.print(
            f"Tokens this month: used {quota.used:,} of {limit}, remaining {remaining} "
            f"(period {quota.period_start:%Y-%m-%d} to {quota.period_end:%Y-%m-%d} UTC)"
        )
        console.print(f"Rate limit: {plan.requests_per_minute:,} requests per minute per key")

    run(show())


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise typer.BadParameter(f"unknown time zone {name!r}", param_hint="--time-zone") from None


def _moment(value: str | None, zone: ZoneInfo, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not an ISO 8601 date or date-time", param_hint=option
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment.astimezone(UTC)


def _number(value: float) -> str:
    return f"{int(value):,}" if value.is_integer() else f"{value:,.4f}".rstrip("0")
