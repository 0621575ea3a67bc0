"""Sessions and non-streaming messages, with tenant isolation."""

import pytest

from tests.conftest import Api

pytestmark = pytest.mark.anyio


async def new_session(api: Api, key: str, **body: object) -> dict[str, object]:
    response = await api.client.post("/v1/kgent/sessions", json=body, headers={"X-API-Key": key})
    assert response.status_code == 201, response.text
    session: dict[str, object] = response.json()
    return session


async def test_session_lifecycle(api: Api) -> None:
    _, key = await api.tenant_with_key()
    headers = {"X-API-Key": key}
    session = await new_session(api, key, title="Planning", mode="advise")
    assert session["title"] == "Planning" and session["mode"] == "advise"
    assert session["agent_type"] == "kgent" and session["status"] == "active"
    assert session["message_count"] == 0 and session["tokens_used"] == 0
    assert session["last_message_at"] is None

    fetched = await api.client.get(f"/v1/kgent/sessions/{session['id']}", headers=headers)
    assert fetched.json() == session
    await new_session(api, key)
    listed = (await api.client.get("/v1/kgent/sessions?limit=1", headers=headers)).json()
    assert listed["total"] == 2 and len(listed["sessions"]) == 1

    deleted = await api.client.delete(f"/v1/kgent/sessions/{session['id']}", headers=headers)
    assert deleted.status_code == 204
    gone = await api.client.get(f"/v1/kgent/sessions/{session['id']}", headers=headers)
    assert gone.status_code == 404
    again = await api.client.delete(f"/v1/kgent/sessions/{session['id']}", headers=headers)
    assert again.status_code == 404
    assert (await api.client.get("/v1/kgent/sessions", headers=headers)).json()["total"] == 1


async def test_send_message_without_streaming(api: Api) -> None:
    _, key = await api.tenant_with_key()
    headers = {"X-API-Key": key}
    session = await new_session(api, key)
    response = await api.client.post(
        f"/v1/kgent/sessions/{session['id']}/messages",
        json={"message": "How should I plan my week?", "stream": False},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    reply = response.json()
    assert reply["role"] == "assistant" and reply["session_id"] == session["id"]
    assert 40 <= len(reply["content"].split()) <= 120
    assert reply["tokens_out"] == len(reply["content"].split())
    assert reply["tokens_in"] > 0 and reply["model"] == "kgent-demo-1"

    messages = (
        await api.client.get(f"/v1/kgent/sessions/{session['id']}/messages", headers=headers)
    ).json()
    assert messages["total"] == 2 and messages["session_id"] == session["id"]
    assert [m["role"] for m in messages["messages"]] == ["user", "assistant"]
    assert messages["messages"][0]["content"] == "How should I plan my week?"
    assert messages["messages"][1] == reply
    assert reply["status"] == "complete" and reply["error_code"] is None
    assert messages["messages"][0]["status"] == "complete"

    updated = (await api.client.get(f"/v1/kgent/sessions/{session['id']}", headers=headers)).json()
    assert updated["message_count"] == 2
    assert updated["tokens_used"] == reply["tokens_in"] + reply["tokens_out"]
    assert updated["last_message_at"] is not None


async def test_history_is_sent_and_replies_are_deterministic(api: Api) -> None:
    _, key = await api.tenant_with_key()
    headers = {"X-API-Key": key}
    first = await new_session(api, key)
    second = await new_session(api, key)
    replies = []
    for session in (first, second):
        response = await api.client.post(
            f"/v1/kgent/sessions/{session['id']}/messages",
            json={"message": "same question", "stream": False},
            headers=headers,
        )
        replies.append(response.json())
    assert replies[0]["content"] == replies[1]["content"]
    follow_up = await api.client.post(
        f"/v1/kgent/sessions/{first['id']}/messages",
        json={"message": "and then?", "stream": False, "mode": "explore"},
        headers=headers,
    )
    # The second turn sends the history too, so it reads more input tokens.
    assert follow_up.json()["tokens_in"] > replies[0]["tokens_in"]


async def test_dormant_budget_makes_no_model_call(api: Api) -> None:
    _, key = await api.tenant_with_key()
    session = await new_session(api, key)
    response = await api.client.post(
        f"/v1/kgent/sessions/{session['id']}/messages",
        json={"message": "hello", "stream": False, "budget": "dormant"},
        headers={"X-API-Key": key},
    )
    assert response.status_code == 201
    # No model call: nothing generated; the stored message is billed as input (5 chars).
    assert response.json()["tokens_in"] == 2 and response.json()["tokens_out"] == 0
    assert response.json()["model"] == "none"
    assert "dormant" in response.json()["content"]


async def test_budget_beyond_plan_is_403(api: Api) -> None:
    _, key = await api.tenant_with_key(plan="free")
    session = await new_session(api, key)
    response = await api.client.post(
        f"/v1/kgent/sessions/{session['id']}/messages",
        json={"message": "hello", "stream": False, "budget": "deep"},
        headers={"X-API-Key": key},
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "budget_not_allowed"
    messages = await api.client.get(
        f"/v1/kgent/sessions/{session['id']}/messages", headers={"X-API-Key": key}
    )
    assert messages.json()["total"] == 0


@pytest.mark.parametrize(
    ("plan", "budget", "max_tokens"),
    [("free", "whisper", 100), ("pro", "dialogue", 4_000), ("enterprise", "dialogue", 4_000)],
)
async def test_a_message_naming_no_budget_uses_the_plans_highest_up_to_dialogue(
    api: Api, plan: str, budget: str, max_tokens: int
) -> None:
    tenant_id, key = await api.tenant_with_key(plan=plan)
    headers = {"X-API-Key": key}
    budgets = await api.client.get("/v1/kgent/budgets", headers=headers)
    assert budgets.status_code == 200, budgets.text
    tiers = ["dormant", "whisper", "dialogue", "deep"]
    highest = {"free": "whisper", "pro": "dialogue", "enterprise": "deep"}[plan]
    assert budgets.json() == {
        "plan": plan,
        "budgets": tiers[: tiers.index(highest) + 1],
        "default": budget,
    }
    session = await new_session(api, key)
    response = await api.client.post(
        f"/v1/kgent/sessions/{session['id']}/messages",
        json={"message": "My first message", "stream": False},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    assert 0 < response.json()["tokens_out"] <= max_tokens
    turn = await api.app.state.platform.sessions.get_turn(
        tenant_id=tenant_id, turn_id=response.json()["turn_id"]
    )
    assert turn.budget == budget


async def test_other_tenants_sessions_are_404(api: Api) -> None:
    _, key_a = await api.tenant_with_key(name="a")
    _, key_b = await api.tenant_with_key(name="b")
    session = await new_session(api, key_a)
    other = {"X-API-Key": key_b}
    sid = session["id"]
    for method, path, body in [
        ("GET", f"/v1/kgent/sessions/{sid}", None),
        ("DELETE", f"/v1/kgent/sessions/{sid}", None),
        ("GET", f"/v1/kgent/sessions/{sid}/messages", None),
        ("POST", f"/v1/kgent/sessions/{sid}/messages", {"message": "hi", "stream": False}),
        ("POST", f"/v1/kgent/sessions/{sid}/cancel", None),
    ]:
        response = await api.client.request(method, path, json=body, headers=other)
        assert response.status_code == 404, (method, path)
        assert response.json() == {"error": {"code": "not_found", "message": "session not found"}}
    assert (await api.client.get("/v1/kgent/sessions", headers=other)).json()["total"] == 0
    still_there = await api.client.get(f"/v1/kgent/sessions/{sid}", headers={"X-API-Key": key_a})
    assert still_there.status_code == 200


@pytest.mark.parametrize(
    "session_id", ["a.b", "*", ">", "has space", "x" * 1024, "%2e%2e", "ses_missing"]
)
async def test_invalid_or_unknown_session_ids_are_404(api: Api, session_id: str) -> None:
    _, key = await api.tenant_with_key()
    response = await api.client.post(
        f"/v1/kgent/sessions/{session_id}/messages",
        json={"message": "hi", "stream": False},
        headers={"X-API-Key": key},
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
