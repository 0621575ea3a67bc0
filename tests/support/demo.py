"""Messages chosen for the length of the demo provider's reply to them."""

from kgents.llm.demo import compose_reply


def message_with_reply(stem: str, *, words: range, temperature: float = 0.4) -> str:
    """A message whose demo reply (reflect mode by default) has a number of words in
    ``words``: long enough to watch it stream, short enough to keep the suite quick."""
    for i in range(1000):
        message = f"{stem} ({i})"
        if len(compose_reply(message, temperature)) in words:
            return message
    raise AssertionError(f"no reply of {words} words found")
