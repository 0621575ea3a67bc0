"""What ``kgents serve`` checks and says before it starts: a data dir or port already in use
(one clear line, exit 1), then where the console is and what to do next."""

import errno
import socket

from rich.console import Console

from kgents import __version__
from kgents.config import Settings
from kgents.streaming.embedded import owned_elsewhere


def in_use(settings: Settings) -> str | None:
    """Why this server cannot start here, or ``None``: its data dir's embedded nats-server
    runs in another live process, or its address is taken."""
    if not settings.nats_url and owned_elsewhere(settings.data_dir):
        return (
            f"the data dir {settings.data_dir} is in use by another kgents serve; "
            "stop it first, or give this one another --data-dir"
        )
    if settings.port and not _can_bind(settings.host, settings.port):
        return f"{settings.host}:{settings.port} is already in use; stop that server or pick --port"
    return None


def _can_bind(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.errno != errno.EADDRINUSE
    return True


def print_banner(console: Console, settings: Settings) -> None:
    """The console's URL and the next step, before the server's own log lines."""
    url = f"http://{settings.host}:{settings.port}"
    data_dir = (
        "" if settings.data_dir.as_posix() == ".kgents" else f" --data-dir {settings.data_dir}"
    )
    console.print(f"[bold]kgents {__version__}[/bold] starting on {url}", highlight=False)
    console.print(f"  console   {url}/   (sign in with an API key)", highlight=False)
    console.print(f"  API docs  {url}/docs", highlight=False)
    console.print(
        f"  next      kgents tenant create NAME{data_dir}   "
        "(a tenant and its first API key, shown once)",
        highlight=False,
        soft_wrap=True,
    )
