"""``kgents nats streams``: the JetStream streams of the platform and their state."""

from rich.table import Table

from kgents.cli.common import DataDirOption, console, load_settings, run
from kgents.cli.typer_app import Typer
from kgents.streaming.runtime import connect_for_tools
from kgents.streaming.subjects import Namespace
from kgents.streaming.topology import describe_streams

nats_app = Typer(help="Inspect the NATS JetStream event streams.", no_args_is_help=True)


@nats_app.command("streams")
def streams(data_dir: DataDirOption = None) -> None:
    """Print each stream with its limits and state."""
    settings = load_settings(data_dir)

    async def show() -> None:
        async with connect_for_tools(settings) as connection:
            ns = Namespace(settings.nats_prefix)
            statuses = await describe_streams(connection, (ns.events_stream, ns.usage_stream))
        table = Table(title="JetStream streams")
        for column in ("stream", "subjects", "messages", "bytes", "first", "last", "consumers"):
            table.add_column(column, no_wrap=column == "stream")
        table.add_column("replicas")
        table.add_column("max age")
        for status in statuses:
            if not status.exists:
                table.add_row(status.name, "(missing)", *[""] * 7)
                continue
            table.add_row(
                status.name,
                ", ".join(status.subjects),
                f"{status.messages:,}",
                f"{status.bytes:,}",
                str(status.first_seq),
                str(status.last_seq),
                str(status.consumer_count),
                str(status.replicas),
                f"{status.max_age_seconds / 3600:g}h",
            )
        console.print(table)

    run(show())
