"""K-gent: the persona's system prompt, what modes and budgets mean, and which history fits."""

from collections.abc import Sequence

from kgents.config import BUDGET_TIERS, Budget
from kgents.llm.base import ChatMessage, estimate_tokens
from kgents.records import Message

MODES = ("reflect", "advise", "challenge", "explore")
TEMPERATURE_BY_MODE = {"reflect": 0.4, "advise": 0.5, "challenge": 0.6, "explore": 0.8}
MAX_TOKENS_BY_BUDGET = {
    Budget.dormant: 0,
    Budget.whisper: 100,
    Budget.dialogue: 4_000,
    Budget.deep: 8_000,
}

SYSTEM_PROMPT = """You are K-gent, a thoughtful agent who helps people think clearly.
Current mode: {mode}.
- reflect: mirror back what you hear and surface the assumptions underneath.
- advise: give direct, practical advice with concrete next steps.
- challenge: question the premise respectfully and offer the strongest counter-view.
- explore: open up possibilities, connections and unusual angles.
Be concise, warm and honest. Never claim to be human."""

DORMANT_REPLY = (
    "K-gent is dormant for this message (budget 'dormant'), so no model was called. "
    "Your message is saved; send it again with budget 'whisper' or higher for a reply."
)


def system_prompt(mode: str) -> str:
    return SYSTEM_PROMPT.format(mode=mode)


def budget_allows(requested: Budget, ceiling: Budget) -> bool:
    """Whether a plan whose highest tier is ``ceiling`` allows ``requested``."""
    return BUDGET_TIERS.index(requested.value) <= BUDGET_TIERS.index(ceiling.value)


def default_budget(ceiling: Budget) -> Budget:
    """The budget of a request that names none: the plan's highest, up to ``dialogue``."""
    tiers = BUDGET_TIERS[: BUDGET_TIERS.index(Budget.dialogue.value) + 1]
    return Budget(tiers[min(BUDGET_TIERS.index(ceiling.value), len(tiers) - 1)])


def allowed_budgets(ceiling: Budget) -> tuple[Budget, ...]:
    """The budgets a plan whose highest tier is ``ceiling`` allows, lowest first."""
    return tuple(Budget(tier) for tier in BUDGET_TIERS[: BUDGET_TIERS.index(ceiling.value) + 1])


def history_that_fits(
    history: Sequence[Message], new_message: str, *, budget_tokens: int
) -> tuple[ChatMessage, ...]:
    """The most recent messages whose estimated tokens fit ``budget_tokens``, then the new one.

    The new message is always sent; older messages are dropped from the oldest end, and the
    kept history always starts with a user message, as providers require.
    """
    remaining = budget_tokens - estimate_tokens(new_message)
    kept: list[ChatMessage] = []
    for message in reversed(history):
        cost = estimate_tokens(message.content)
        if cost > remaining:
            break
        remaining -= cost
        kept.append(ChatMessage(role=message.role, content=message.content))
    kept.reverse()
    while kept and kept[0].role != "user":
        kept.pop(0)
    return (*kept, ChatMessage(role="user", content=new_message))
