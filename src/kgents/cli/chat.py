"""``kgents chat`` and ``kgents ask``: talk to K-gent through a running server's HTTP API.

Both use ``kgents.client``: replies print token by token as they arrive, and a dropped
connection is resumed from the last event seen. In ``chat``, Ctrl-C during a reply cancels the
turn on the server (``POST …/cancel``) and returns to the prompt; Ctrl-C at the prompt or
Ctrl-D leaves. ``chat --session ID`` prints the last messages and, when a reply of that session
is still running (its terminal went away), streams it from its start to its end.
"""

import contextlib
import importlib
import json
import math
import re
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from kgents.cli.common import console, error_console
from kgents.client import (
    DEFAULT_URL,
    ApiError,
    ClientError,
    KgentsClient,
    StreamEvent,
    TurnResult,
    TurnStream,
)
from kgents.config import BUDGET_TIERS

MODES = ("reflect", "advise", "challenge", "explore")
_PIECES = re.compile(r"\s+|\S+")
REPLY_PREFIX = "[bold magenta]k-gent ›[/bold magenta] "
RECENT_MESSAGES = 6
BUSY_RETRIES = 25
BUSY_RETRY_SECONDS = 0.2

UrlOption = Annotated[
    str,
    typer.Option("--url", envvar="KGENTS_URL", help="Base URL of the kgents server."),
]
KeyOption = Annotated[
    str | None,
    typer.Option(
        "--key",
        envvar="KGENTS_API_KEY",
        help="Tenant API key (kg_live_…).",
        show_default=False,
    ),
]
SessionOption = Annotated[
    str | None,
    typer.Option("--session", help="Continue this session instead of starting a new one."),
]
ModeOption = Annotated[
    str | None,
    typer.Option("--mode", help="reflect, advise, challenge or explore.", show_default=False),
]
BudgetOption = Annotated[
    str | None,
    typer.Option(
        "--budget",
        help="dormant, whisper, dialogue or deep [default: the plan's highest, up to dialogue]",
        show_default=False,
    ),
]

HELP = """\
Commands:
  /mode [reflect|advise|challenge|explore]   show or set the mode of the next replies
  /budget [dormant|whisper|dialogue|deep]    show or set the budget of the next replies
  /new [title]                               start a new session
  /cancel                                    stop the turn running in this session
  /usage [json]                              this tenant's usage (GET /v1/usage)
  /session                                   the current session id
  /help                                      this text
  /quit                                      leave (Ctrl-D and Ctrl-C at the prompt too)
Ctrl-C while K-gent is answering cancels that reply."""


def _latest(values: list[float]) -> float:
    return values[-1]


COMBINE: dict[str, Callable[[list[float]], float]] = {
    "SUM": math.fsum,
    "COUNT": math.fsum,
    "MIN": min,
    "MAX": max,
}


def usage_table(usage: Any) -> Table | None:
    """``GET /v1/usage`` as a table: one row per meter and group, over the whole range
    (windows added up; for AVG, UNIQUE_COUNT and LATEST the latest window). ``None`` when the
    answer has another shape (then it is printed as JSON)."""
    if not isinstance(usage, dict) or not isinstance(usage.get("meters"), list):
        return None
    table = Table(title=f"usage {usage.get('from', '')} → {usage.get('to', '')}")
    table.add_column("meter")
    table.add_column("group")
    table.add_column("value", justify="right")
    for meter in usage["meters"]:
        rows: dict[str, list[float]] = {}
        for row in meter.get("data") or []:
            groups = row.get("group_by") or {}
            label = ", ".join(f"{k}={v}" for k, v in sorted(groups.items()) if v is not None)
            rows.setdefault(label, []).append(float(row.get("value", 0)))
        combine = COMBINE.get(str(meter.get("aggregation")), _latest)
        if not rows:
            table.add_row(str(meter.get("slug")), "", "0")
        for label, values in rows.items():
            table.add_row(str(meter.get("slug")), label, f"{combine(values):,.6g}")
    return table


def ended_line(status: str, error_code: str | None) -> str | None:
    """How a turn that did not complete ended, as one line; ``None`` for any other status."""
    if status == "cancelled":
        return "[yellow]cancelled[/yellow]"
    if status == "interrupted":
        return "[yellow]interrupted: the server stopped while replying[/yellow]"
    if status == "failed":
        return f"[red]failed[/red] ({error_code or 'error'})"
    return None


def _usage_line(tokens_in: object, tokens_out: object, model: object) -> str:
    return f"[dim]{tokens_in} tokens in · {tokens_out} out · {model}[/dim]"


def _choice(value: str | None, allowed: tuple[str, ...], what: str) -> str | None:
    if value is not None and value not in allowed:
        raise typer.BadParameter(f"{what} must be one of {', '.join(allowed)}", param_hint=what)
    return value


def _connect(url: str, key: str | None, **options: Any) -> KgentsClient:
    if not key:
        error_console.print("[red]error[/red]: no API key: pass --key or set KGENTS_API_KEY")
        raise typer.Exit(code=2)
    return KgentsClient(url, key, **options)


def _result_error(result: TurnResult) -> ClientError:
    """A turn that ended in ``error`` (the provider failed, it was cancelled…) as an error."""
    return ClientError(result.error_message or "the turn failed", code=result.error_code)


def ask(
    question: Annotated[str, typer.Argument(help="The question; '-' reads it from stdin.")],
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
    session: SessionOption = None,
    mode: ModeOption = None,
    budget: BudgetOption = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help='Print one JSON object at the end: {"message", "session_id", "turn_id", '
            '"message_id", "tokens": {"in", "out"}, "model"}; on failure the API\'s '
            '{"error": {"code", "message"}}.',
        ),
    ] = False,
) -> None:
    """Ask K-gent one question: the reply streams to stdout; exit code 1 on any error."""
    _choice(mode, MODES, "--mode")
    _choice(budget, BUDGET_TIERS, "--budget")
    if question == "-":
        question = sys.stdin.read().strip()
    out = sys.stdout

    def fail(exc: ClientError, code: int = 1) -> NoReturn:
        if as_json:
            out.write(json.dumps({"error": {"code": exc.code, "message": exc.message}}) + "\n")
        else:
            error_console.print(f"[red]error[/red] ({exc.code}): {exc.message}")
        raise typer.Exit(code=code)

    with _connect(url, key) as client:
        session_id = session
        turn: TurnStream | None = None
        wrote = False
        try:
            session_id = session_id or client.create_session(mode=mode).id
            turn = client.send(session_id, question, mode=mode, budget=budget)
            for event in turn:
                if event.type == "chunk" and not as_json:
                    out.write(str(event.data.get("text", "")))
                    out.flush()
                    wrote = True
            result = turn.wait()
        except KeyboardInterrupt:
            if turn is not None:  # the message may be sent: stop its turn
                turn.close()
                with contextlib.suppress(ClientError):
                    client.cancel(turn.session_id)
            if wrote:
                out.write("\n")
            fail(ClientError("interrupted: the turn was cancelled", code="cancelled"), code=130)
        except ClientError as exc:
            if wrote:
                out.write("\n")
            fail(exc)
        if wrote:
            out.write("\n")
            out.flush()
        if result.status != "complete":
            fail(_result_error(result))
        if as_json:
            summary = {
                "message": result.text,
                "session_id": result.session_id,
                "turn_id": result.turn_id,
                "message_id": result.message_id,
                "tokens": {"in": result.tokens_in, "out": result.tokens_out},
                "model": result.model,
            }
            out.write(json.dumps(summary, ensure_ascii=False) + "\n")


def chat(
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
    session: SessionOption = None,
    mode: ModeOption = None,
    budget: BudgetOption = None,
) -> None:
    """Talk with K-gent: replies stream as they are written; /help lists the commands."""
    _choice(mode, MODES, "--mode")
    _choice(budget, BUDGET_TIERS, "--budget")
    if sys.stdin.isatty():
        with contextlib.suppress(ImportError):
            importlib.import_module("readline")  # line editing and history for input()
    loop = ChatLoop(console=console, errors=error_console, mode=mode, budget=budget)
    with _connect(url, key, on_reconnect=loop.reconnecting) as client:
        raise typer.Exit(code=loop.run(client, session_id=session))


class ReplyPrinter:
    """Prints a reply as it streams, breaking lines between words rather than inside them.

    The prefix is printed with the first text, so a turn that fails at once prints nothing."""

    def __init__(self, console: Console, *, prefix: str = "") -> None:
        self.console = console
        self.prefix = prefix
        self.column = 0
        self.started = False
        self._space = ""

    def write(self, text: str) -> None:
        if not self.started:
            self.started = True
            self.console.print(self.prefix, end="")
            self.column = self.console.measure(self.prefix).maximum if self.prefix else 0
        width = max(20, self.console.width)
        for piece in _PIECES.findall(text):
            if "\n" in piece:
                self._out(piece)
                self.column = len(piece) - piece.rfind("\n") - 1
                self._space = ""
            elif piece.isspace():
                self._space += piece
            elif self._space and self.column + len(self._space) + len(piece) > width:
                self._out("\n" + piece)
                self.column, self._space = len(piece), ""
            else:
                self._out(self._space + piece)
                self.column += len(self._space) + len(piece)
                self._space = ""

    def end(self) -> None:
        """End the reply's line, if anything was printed."""
        if self.started:
            self.console.print()

    def _out(self, text: str) -> None:
        self.console.print(text, end="", markup=False, highlight=False, emoji=False, soft_wrap=True)


class ChatLoop:
    """The prompt, the commands and the streaming of replies of ``kgents chat``."""

    def __init__(
        self, *, console: Console, errors: Console, mode: str | None, budget: str | None
    ) -> None:
        self.console = console
        self.errors = errors
        self.mode = mode
        self.budget = budget
        self.plan_budget = "the plan's default"
        self.session_id = ""
        self._client: KgentsClient | None = None

    @property
    def client(self) -> KgentsClient:
        if self._client is None:
            raise RuntimeError("the chat is not connected")
        return self._client

    def run(self, client: KgentsClient, *, session_id: str | None) -> int:
        """Chat until the user leaves; return the exit code."""
        self._client = client
        running: dict[str, Any] | None = None
        try:
            if session_id is not None:
                info = client.get_session(session_id)
                self.mode = self.mode or info.mode
                self.console.print(
                    f"Continuing session [bold]{info.id}[/bold] ({info.message_count} messages)."
                )
                running = self.show_recent(info.id, total=info.message_count)
            else:
                info = client.create_session(mode=self.mode)
                self.mode = self.mode or info.mode
                self.console.print(f"New session [bold]{info.id}[/bold].")
        except ClientError as exc:
            self.errors.print(f"[red]error[/red] ({exc.code}): {exc.message}")
            return 1
        self.session_id = info.id
        if running is not None:
            self.reattach(running)
        with contextlib.suppress(ClientError):  # an older server: "the plan's default"
            self.plan_budget = str(client.budgets()["default"])
        self.console.print(
            f"[dim]mode {self.mode} · budget {self.budget or self.plan_budget} · "
            "/help for commands · Ctrl-C cancels a reply · Ctrl-D leaves[/dim]"
        )
        while True:
            try:
                line = self.console.input("[bold cyan]you ›[/bold cyan] ").strip()
            except (EOFError, KeyboardInterrupt):
                self.console.print()
                return 0
            if not line:
                continue
            if line.startswith("/"):
                if not self.command(line):
                    return 0
                continue
            self.turn(line)

    def show_recent(self, session_id: str, *, total: int) -> dict[str, Any] | None:
        """Print the last few messages of the session, each reply with how its turn ended;
        return the turn running now (``running_turn`` of the listing), if any."""
        offset = max(0, total - RECENT_MESSAGES)
        recent = self.client.messages(session_id, limit=RECENT_MESSAGES, offset=offset)
        messages: list[dict[str, Any]] = recent["messages"]
        if offset:
            self.console.print(f"[dim]… {offset} earlier messages[/dim]")
        for i, message in enumerate(messages):
            status, code = str(message.get("status")), message.get("error_code")
            if message["role"] == "user":
                self.console.print("[bold cyan]you ›[/bold cyan] ", end="")
                self.console.print(message["content"], markup=False, highlight=False)
                following = messages[i + 1] if i + 1 < len(messages) else None
                replied = following is not None and following["turn_id"] == message["turn_id"]
                ended = ended_line(status, code)
                if not replied and ended is not None:  # the turn ended before any text
                    self.console.print(f"{REPLY_PREFIX}[dim](no reply)[/dim] {ended}")
                continue
            printer = ReplyPrinter(self.console, prefix=REPLY_PREFIX)
            printer.write(message["content"])
            printer.end()
            ended = ended_line(status, code)
            if ended is not None:
                self.console.print(ended)
        running: dict[str, Any] | None = recent.get("running_turn")
        return running

    def reattach(self, running: dict[str, Any]) -> None:
        """Stream the reply of the turn running now, from its first event to its end (the
        terminal that sent it went away); Ctrl-C cancels it."""
        turn_id, after = running["id"], running.get("events_after")
        follow = self.client.follow(self.session_id, after=after, from_start=after is None)
        printer = ReplyPrinter(self.console, prefix=REPLY_PREFIX)
        end: StreamEvent | None = None
        try:
            for event in follow:
                if event.turn_id != turn_id:
                    continue
                if event.type == "chunk":
                    printer.write(str(event.data.get("text", "")))
                elif event.type in ("complete", "error"):
                    end = event
                    break
        except KeyboardInterrupt:
            printer.end()
            self._cancel_after_interrupt()
            return
        except ClientError as exc:
            printer.end()
            self.errors.print(f"[red]error[/red] ({exc.code}): {exc.message}")
            return
        finally:
            follow.close()
        printer.end()
        if end is None:
            return
        if end.type == "complete":
            data = end.data
            self.console.print(_usage_line(data["tokens_in"], data["tokens_out"], data["model"]))
            return
        code = str((end.data.get("error") or {}).get("code", "error"))
        status = code if code in ("cancelled", "interrupted") else "failed"
        self.console.print(ended_line(status, code))

    def reconnecting(self, last_event_id: int | None) -> None:
        where = f"after event {last_event_id}" if last_event_id is not None else "from the start"
        self.console.print(f"\n[dim](connection lost; resuming {where})[/dim]")

    def turn(self, message: str) -> TurnResult | None:
        """Send ``message`` and print the reply as it streams; Ctrl-C cancels it."""
        printer = ReplyPrinter(self.console, prefix=REPLY_PREFIX)
        turn: TurnStream | None = None
        try:
            for attempt in range(BUSY_RETRIES + 1):
                turn = self.client.send(
                    self.session_id, message, mode=self.mode, budget=self.budget
                )
                try:
                    for event in turn:
                        if event.type == "chunk":
                            printer.write(str(event.data.get("text", "")))
                    break
                except ApiError as exc:
                    # A turn cancelled just before takes a moment to be stored: wait for it.
                    if exc.code != "turn_in_progress" or attempt == BUSY_RETRIES:
                        raise
                    time.sleep(BUSY_RETRY_SECONDS)
        except KeyboardInterrupt:
            if turn is not None:
                turn.close()
            printer.end()
            self._cancel_after_interrupt()
            return None
        except ClientError as exc:
            printer.end()
            self.errors.print(f"[red]error[/red] ({exc.code}): {exc.message}")
            return None
        printer.end()
        result = turn.result if turn is not None else None
        if result is None:
            return None
        if result.status == "complete":
            self.console.print(_usage_line(result.tokens_in, result.tokens_out, result.model))
        elif result.status == "cancelled":
            self.console.print("[yellow]cancelled[/yellow]")
        else:
            self.errors.print(f"[red]error[/red] ({result.error_code}): {result.error_message}")
        return result

    def _cancel_after_interrupt(self) -> None:
        try:
            cancelled = self.client.cancel(self.session_id)
        except KeyboardInterrupt:
            return
        except ClientError as exc:
            self.errors.print(f"[red]could not cancel[/red] ({exc.code}): {exc.message}")
            return
        self.console.print("[yellow]cancelled[/yellow]" if cancelled else "[dim](finished)[/dim]")

    def command(self, line: str) -> bool:
        """Run a slash command; False means leave."""
        name, _, argument = line.partition(" ")
        argument = argument.strip()
        if name in ("/quit", "/exit"):
            return False
        handlers = {
            "/help": self._help,
            "/mode": self._mode,
            "/budget": self._budget,
            "/new": self._new,
            "/cancel": self._cancel,
            "/usage": self._usage,
            "/session": self._session,
        }
        handler = handlers.get(name)
        if handler is None:
            self.errors.print(f"unknown command {name}; /help lists the commands")
            return True
        try:
            handler(argument)
        except ClientError as exc:
            self.errors.print(f"[red]error[/red] ({exc.code}): {exc.message}")
        return True

    def _help(self, _argument: str) -> None:
        self.console.print(HELP, markup=False, highlight=False)

    def _mode(self, argument: str) -> None:
        if argument:
            if argument not in MODES:
                self.errors.print(f"mode must be one of {', '.join(MODES)}")
                return
            self.mode = argument
        self.console.print(f"mode: {self.mode}")

    def _budget(self, argument: str) -> None:
        if argument:
            if argument not in BUDGET_TIERS:
                self.errors.print(f"budget must be one of {', '.join(BUDGET_TIERS)}")
                return
            self.budget = argument
        self.console.print(f"budget: {self.budget or self.plan_budget}")

    def _new(self, argument: str) -> None:
        info = self.client.create_session(title=argument or None, mode=self.mode)
        self.session_id = info.id
        self.console.print(f"New session [bold]{info.id}[/bold].")

    def _cancel(self, _argument: str) -> None:
        if self.client.cancel(self.session_id):
            self.console.print("[yellow]cancelled the running turn[/yellow]")
        else:
            self.console.print("no turn is running in this session")

    def _usage(self, argument: str) -> None:
        try:
            usage = self.client.usage()
        except ApiError as exc:
            if exc.status != 404:
                raise
            self.errors.print(
                "usage is not available on this server (GET /v1/usage answered 404); "
                "a newer server has it"
            )
            return
        summary = usage_table(usage)
        if summary is None or argument == "json":
            self.console.print_json(data=usage)
            return
        self.console.print(summary)
        quota = usage.get("quota")
        if isinstance(quota, dict) and "used" in quota:
            limit = quota.get("limit")
            self.console.print(
                f"tokens this month: {quota['used']:,} of "
                + (f"{limit:,}" if isinstance(limit, int) else "unlimited")
            )

    def _session(self, _argument: str) -> None:
        self.console.print(f"session: {self.session_id}")
