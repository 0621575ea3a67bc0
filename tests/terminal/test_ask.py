"""``kgents ask`` against a live server: streamed text, ``--json``, and exit codes on errors."""

import json

import httpx
from typer.testing import CliRunner

from kgents.cli.main import app
from tests.terminal.conftest import ADMIN, Server
from tests.terminal.test_client import expected_reply

runner = CliRunner()


def ask(server: Server, *args: str, key: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(
        app,
        ["ask", *args, "--url", server.url],
        env={"KGENTS_API_KEY": key if key is not None else server.key},
        catch_exceptions=False,
    )
    return result.exit_code, result.stdout, result.stderr


def test_ask_streams_the_reply_to_stdout(server: Server) -> None:
    code, out, err = ask(server, "How do I start?")
    assert code == 0, err
    assert out == expected_reply("How do I start?") + "\n"
    assert err == ""


def test_ask_json_prints_one_object(server: Server) -> None:
    code, out, _ = ask(server, "Plan my week", "--json", "--mode", "explore")
    assert code == 0
    summary = json.loads(out)
    assert set(summary) == {"message", "session_id", "turn_id", "message_id", "tokens", "model"}
    assert summary["message"] == expected_reply("Plan my week", 0.8)
    assert summary["model"] == "kgent-demo-1"
    assert summary["tokens"]["out"] == len(summary["message"].split())
    assert summary["tokens"]["in"] > 0

    # --session continues the same conversation.
    code, out, _ = ask(server, "And then?", "--json", "--session", summary["session_id"])
    assert code == 0 and json.loads(out)["session_id"] == summary["session_id"]
    session = server.get(f"/v1/kgent/sessions/{summary['session_id']}").json()
    assert session["message_count"] == 4


def test_ask_reads_the_question_from_stdin(server: Server) -> None:
    result = runner.invoke(
        app,
        ["ask", "-", "--url", server.url, "--key", server.key],
        input="From stdin?\n",
        catch_exceptions=False,
    )
    assert result.exit_code == 0
    assert result.stdout == expected_reply("From stdin?") + "\n"


def test_ask_errors_exit_1_with_the_api_message(server: Server) -> None:
    bad_key = "kg_live_" + "0" * 32
    code, out, err = ask(server, "hello", key=bad_key)
    assert code == 1 and out == ""
    assert "unauthorized" in err and "invalid API key" in err

    code, out, err = ask(server, "hello", "--json", key=bad_key)
    assert code == 1 and err == ""
    assert json.loads(out) == {"error": {"code": "unauthorized", "message": "invalid API key"}}

    code, out, err = ask(server, "hello", "--budget", "deep", "--json")  # above the pro plan
    assert code == 1 and json.loads(out)["error"]["code"] == "budget_not_allowed"

    code, _, err = ask(server, "hello", "--session", "ses_nope")
    assert code == 1 and "not_found" in err


def test_ask_without_a_key_or_a_server(server: Server) -> None:
    code, _, err = ask(server, "hello", key="")
    assert code == 2 and "KGENTS_API_KEY" in err
    result = runner.invoke(
        app, ["ask", "hello", "--url", "http://127.0.0.1:9", "--key", server.key, "--json"]
    )
    assert result.exit_code == 1
    assert json.loads(result.stdout)["error"]["code"] == "unreachable"
    result = runner.invoke(app, ["ask", "hello", "--key", server.key, "--mode", "shout"])
    assert result.exit_code == 2


def test_a_revoked_key_exits_1(server: Server) -> None:
    # The key is revoked between two turns: the API's 401 message comes through.
    code, out, _ = ask(server, "first", "--json")
    session_id = json.loads(out)["session_id"]
    admin = {"Authorization": "Bearer kg_admin_test_token_0123456789abcdefghij"}
    keys = httpx.get(f"{server.url}/v1/tenants/{server.tenant_id}/keys", headers=admin).json()
    for key in keys["keys"]:
        httpx.delete(f"{server.url}/v1/tenants/{server.tenant_id}/keys/{key['id']}", headers=admin)
    code, out, _ = ask(server, "second", "--json", "--session", session_id)
    assert code == 1
    assert json.loads(out) == {"error": {"code": "unauthorized", "message": "API key revoked"}}


def test_ask_and_chat_on_a_free_tenant_use_its_highest_budget(server: Server) -> None:
    tenant = httpx.post(
        f"{server.url}/v1/tenants", json={"name": "newco"}, headers=ADMIN, timeout=10
    )
    assert tenant.json()["plan"] == "free"
    key = httpx.post(
        f"{server.url}/v1/tenants/{tenant.json()['id']}/keys", json={}, headers=ADMIN, timeout=10
    ).json()["key"]
    code, out, err = ask(server, "My very first question", "--json", key=key)
    assert code == 0, out + err
    assert json.loads(out)["tokens"]["out"] > 0

    result = runner.invoke(
        app,
        ["chat", "--url", server.url, "--key", key],
        input="hello\n/budget\n",
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "budget whisper" in result.stdout and "budget: whisper" in result.stdout
    assert "tokens in" in result.stdout and result.stderr == ""
