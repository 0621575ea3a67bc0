"""The command line people expect: ``--version``, ``tenant update``, ``key list``, help that
reads as help, and ``kgents serve`` refusing a data dir or port in use in one line."""

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from kgents import __version__
from kgents.cli.main import app
from tests.support.servers import ServerProcess, free_port

runner = CliRunner()
WIDE = {"COLUMNS": "200"}


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=WIDE, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def cells(table: str) -> str:
    """A printed table's text with the borders taken out: one space between cells."""
    return " ".join(table.replace("│", " ").split())


def test_version() -> None:
    assert invoke("--version") == (0, f"kgents {__version__}\n", "")


def test_tenant_update_and_key_list(tmp_path: Path) -> None:
    data = ("--data-dir", str(tmp_path / "data"))
    _, created, _ = invoke("tenant", "create", "acme", *data)
    tenant_id = re.search(r"tenant_id: (ten_\w+)", created)
    assert tenant_id
    tid = tenant_id.group(1)

    code, out, _ = invoke("tenant", "update", tid, "--plan", "pro", "--status", "suspended", *data)
    assert code == 0 and "plan:      pro" in out and "status:    suspended" in out
    code, out, _ = invoke("tenant", "update", tid, "--status", "active", *data)
    assert code == 0 and "plan:      pro" in out and "status:    active" in out
    assert f"{tid} acme pro active" in cells(invoke("tenant", "list", *data)[1])

    _, second, _ = invoke("key", "create", tid, "--name", "ci", *data)
    key_id = re.search(r"key_id:\s+(key_\w+)", second)
    secret = re.search(r"api_key:\s+(kg_live_\w+)", second)
    assert key_id and secret
    invoke("key", "revoke", key_id.group(1), *data)
    code, out, _ = invoke("key", "list", tid, *data)
    assert code == 0 and "2 keys of" in out
    assert re.search(r"default kg_live_\w+… sessions, usage [\d: -]+ never active", cells(out))
    assert re.search(rf"{key_id.group(1)} ci kg_live_\w+… .* revoked", cells(out))
    assert secret.group(1) not in out  # prefixes only

    assert invoke("tenant", "update", tid, *data)[0] == 2  # nothing to change
    assert invoke("tenant", "update", tid, "--status", "paused", *data)[0] == 2
    code, _, err = invoke("tenant", "update", tid, "--plan", "gold", *data)
    assert code == 1 and "unknown plan" in err and "Traceback" not in err
    code, _, err = invoke("key", "list", "ten_missing", *data)
    assert code == 1 and "not found" in err


def commands(group: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, command in getattr(group, "commands", {}).items():
        yield from commands(command, (*path, name))


def test_help_reads_as_help() -> None:
    every = list(commands(typer.main.get_command(app)))
    assert ("tenant", "update") in every and ("key", "list") in every
    for path in every:
        code, out, _ = invoke(*path, "--help")
        assert code == 0, path
        assert "<bool>" not in out, f"kgents {' '.join(path)}: a flag shown with a value"
        usage = out.split("Usage:", 1)[1].splitlines()[0]
        assert "{" not in usage and not re.search(r"\s[a-z_]+(\s|$)", usage.split("]")[-1]), usage
    out = invoke("tenant", "create", "--help")[1]
    assert "[OPTIONS] NAME" in out
    assert re.search(r"--all\s+Replay every dead letter", invoke("metering", "replay", "--help")[1])

    serve = invoke("serve", "--help")[1]
    for option, env, default in [
        ("--host", "KGENTS_HOST", "127.0.0.1"),
        ("--port", "KGENTS_PORT", "8000"),
        ("--data-dir", "KGENTS_DATA_DIR", "./.kgents"),
        ("--log-format", "KGENTS_LOG_FORMAT", "auto"),
        ("--log-level", "KGENTS_LOG_LEVEL", "info"),
        ("--workers", "KGENTS_WORKERS", "1"),
    ]:
        line = next(line for line in serve.splitlines() if f" {option} " in line)
        assert f"[env var: {env}]" in line and re.search(rf"\[default: \(?{default}\)?\]", line)


@pytest.mark.slow
def test_a_second_serve_on_a_data_dir_or_port_in_use_says_so_in_one_line(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    env = {"KGENTS_NATS_URL": "", "KGENTS_ADMIN_TOKEN": "kg_admin_" + "t" * 32}
    with ServerProcess(data_dir, env) as first:
        banner = first.log_path.read_text()
        url = first.base_url
        assert f"console   {url}/" in banner and f"API docs  {url}/docs" in banner
        assert f"next      kgents tenant create NAME --data-dir {data_dir}" in banner

        base = [sys.executable, "-m", "kgents", "serve"]
        for args in (
            ["--data-dir", str(data_dir), "--port", str(free_port())],
            ["--data-dir", str(tmp_path / "other"), "--port", str(first.port)],
        ):
            second = subprocess.run(
                base + args,
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert second.returncode == 1, second.stdout + second.stderr
            assert second.stdout == "" and len(second.stderr.splitlines()) == 1, second.stderr
            assert "in use" in second.stderr and "Traceback" not in second.stderr
