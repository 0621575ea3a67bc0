"""``kgents metering …``: reconcile turns with meters, inspect and replay dead letters.

Like the other administration commands these open the database directly; no server needed.
"""

from collections import Counter
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from kgents.cli.common import (
    DataDirOption,
    console,
    error_console,
    load_settings,
    progress_bar,
    run,
)
from kgents.cli.typer_app import Typer
from kgents.metering.dead_letters import dead_letters_to_replay, replay_dead_letters
from kgents.metering.ports import DeadLetter, ReplayOutcome
from kgents.metering.reconcile import CHECK_STEPS, MeteringCheck, check_metering
from kgents.platform import open_platform
from kgents.sinks.openmeter import configured_sink

metering_app = Typer(help="Check metering: reconcile, dead letters, replay.", no_args_is_help=True)


@metering_app.command("reconcile")
def reconcile(data_dir: DataDirOption = None) -> None:
    """Compare the tokens of stored turns with the meter totals, per tenant.

    There must be no difference: exit code 0 when every tenant matches, 1 otherwise. Usage
    events still in the outbox or in JetStream show as differences until they are metered."""
    settings = load_settings(data_dir)

    async def check() -> MeteringCheck:
        async with open_platform(settings) as platform:
            with progress_bar() as bar:
                task = bar.add_task("Reconciling", total=CHECK_STEPS)
                return await check_metering(
                    turns=platform.session_store,
                    meters=platform.meters,
                    outbox=platform.outbox,
                    parked=platform.meters,
                    on_step=lambda done: bar.update(task, advance=1, description=f"Read {done}"),
                )

    result = run(check())
    table = Table(title="Tokens per tenant: stored turns and meters")
    table.add_column("tenant", no_wrap=True)
    for column in ("turns in", "turns out", "metered in", "metered out"):
        table.add_column(column, justify="right")
    table.add_column("difference (metered - turns)")
    for row in result.tenants:
        difference = (
            "[green]none[/green]"
            if row.matches
            else f"[red]in {_signed(row.difference_in)}, out {_signed(row.difference_out)}[/red]"
        )
        table.add_row(
            row.tenant_id,
            _number(row.turns_in),
            _number(row.turns_out),
            _number(row.meter_in),
            _number(row.meter_out),
            difference,
        )
    console.print(table)
    if result.outbox_backlog:
        console.print(
            f"[yellow]{_count(result.outbox_backlog, 'usage event')} in the outbox, not yet "
            "relayed to JetStream:[/yellow] a difference may just be in flight; run this again "
            "once the server has relayed and metered them."
        )
    if result.dead_letters:
        console.print(
            f"[yellow]{_count(result.dead_letters, 'dead letter')}[/yellow]: events the "
            "metering processor parked (kgents metering dead-letters; kgents metering replay)."
        )
    differing = len(result.differences)
    if differing:
        error_console.print(
            f"[red]error[/red]: {differing} of {len(result.tenants)} tenants differ between "
            "stored turns and meters"
        )
        raise typer.Exit(code=1)
    if result.tenants:
        count = len(result.tenants)
        console.print(
            f"[green]No difference[/green]: turns and meters agree for {count} "
            f"tenant{'s' if count != 1 else ''}."
        )
    else:
        console.print("No turns and no metered tokens yet.")


@metering_app.command("dead-letters")
def dead_letters(
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many, oldest first")] = 50,
    data_dir: DataDirOption = None,
) -> None:
    """List the events the metering processor parked, with why."""
    settings = load_settings(data_dir)

    async def list_() -> tuple[list[DeadLetter], int]:
        async with open_platform(settings) as platform:
            letters = await platform.meters.dead_letters(limit=limit)
            return letters, await platform.meters.dead_letter_count()

    letters, total = run(list_())
    title = _count(total, "dead letter") + (f" (oldest {limit})" if total > limit else "")
    table = Table(title=title)
    table.add_column("id", justify="right")
    table.add_column("parked (UTC)", no_wrap=True)
    for column in ("source", "type", "subject"):
        table.add_column(column)
    table.add_column("attempts", justify="right")
    table.add_column("error")
    for letter in letters:
        table.add_row(
            str(letter.id),
            letter.parked_at.strftime("%Y-%m-%d %H:%M:%S"),
            *(_field(letter.event, name) for name in ("source", "type", "subject")),
            str(letter.attempts),
            escape(letter.error),
        )
    console.print(table)


@metering_app.command("replay")
def replay(
    ids: Annotated[
        list[int] | None, typer.Option("--id", help="A dead letter to replay (repeatable)")
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Replay every dead letter")] = False,
    data_dir: DataDirOption = None,
) -> None:
    """Ingest dead letters into the meter store again and remove them.

    Idempotent: an event the meter store already holds is not counted again. An event still
    refused stays parked (exit code 1). With KGENTS_OPENMETER_URL set, each event is first
    forwarded to OpenMeter (which ignores an id it already has); one OpenMeter refuses stays
    parked, and if OpenMeter is unavailable the replay stops with the rest still parked."""
    if bool(ids) == all_:
        raise typer.BadParameter("give --id (one or more) or --all", param_hint="--id/--all")
    settings = load_settings(data_dir)

    async def replay_() -> list[ReplayOutcome]:
        sink = configured_sink(settings)
        try:
            async with open_platform(settings) as platform:
                chosen = await dead_letters_to_replay(
                    store=platform.meters, ids=None if all_ else ids
                )
                with progress_bar() as bar:
                    task = bar.add_task("Replaying dead letters", total=len(chosen))
                    return await replay_dead_letters(
                        store=platform.meters,
                        ids=chosen,
                        sink=sink,
                        on_replayed=lambda _: bar.advance(task),
                    )
        finally:
            if sink is not None:
                await sink.aclose()

    outcomes = run(replay_())
    if not outcomes:
        console.print("No dead letters to replay.")
        return
    counts = Counter(outcome.status for outcome in outcomes)
    console.print(
        f"Replayed {_count(len(outcomes), 'dead letter')}: {counts['counted']:,} counted, "
        f"{counts['duplicate']:,} already counted (duplicates), "
        f"{counts['still_parked']:,} still parked"
        + (f", {counts['gone']:,} no longer parked" if counts["gone"] else "")
        + "."
    )
    refused = [outcome for outcome in outcomes if outcome.status == "still_parked"]
    if refused:
        table = Table(title="Still parked")
        table.add_column("id", justify="right")
        table.add_column("error")
        for outcome in refused:
            table.add_row(str(outcome.dead_letter_id), escape(outcome.error or ""))
        console.print(table)
        error_console.print(f"[red]error[/red]: {_count(len(refused), 'event')} still parked")
        raise typer.Exit(code=1)


def _count(number: int, thing: str) -> str:
    return f"{number:,} {thing}" + ("" if number == 1 else "s")


def _field(event: dict[str, Any], name: str) -> str:
    value = event.get(name)
    return escape(value) if isinstance(value, str) else "-"


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,.4f}".rstrip("0")


def _signed(value: float) -> str:
    return ("+" if value > 0 else "") + _number(value)
