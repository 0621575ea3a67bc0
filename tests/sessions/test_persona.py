"""K-gent persona: modes, budgets and the history that fits."""

from datetime import UTC, datetime

from kgents.config import Budget
from kgents.records import Message
from kgents.sessions.persona import budget_allows, history_that_fits, system_prompt


def message(role: str, content: str) -> Message:
    return Message(
        id="m",
        session_id="s",
        tenant_id="t",
        turn_id=None,
        role=role,  # type: ignore[arg-type]
        content=content,
        tokens_in=0,
        tokens_out=0,
        model=None,
        created_at=datetime.now(UTC),
    )


def test_budget_tiers() -> None:
    assert budget_allows(Budget.whisper, Budget.whisper)
    assert budget_allows(Budget.dormant, Budget.whisper)
    assert not budget_allows(Budget.dialogue, Budget.whisper)
    assert budget_allows(Budget.deep, Budget.deep)


def test_history_keeps_the_most_recent_that_fit() -> None:
    history = [
        message("user", "a" * 400),
        message("assistant", "b" * 400),
        message("user", "c" * 40),
        message("assistant", "d" * 40),
    ]
    kept = history_that_fits(history, "new", budget_tokens=30)
    assert [m.content[0] for m in kept] == ["c", "d", "n"]
    everything = history_that_fits(history, "new", budget_tokens=10_000)
    assert len(everything) == 5
    assert history_that_fits(history, "new", budget_tokens=0)[-1].content == "new"


def test_history_starts_with_a_user_message() -> None:
    history = [message("user", "x" * 400), message("assistant", "y" * 4)]
    kept = history_that_fits(history, "new", budget_tokens=5)
    assert kept[0].role == "user" and len(kept) == 1


def test_system_prompt_names_the_mode() -> None:
    assert "Current mode: challenge." in system_prompt("challenge")
