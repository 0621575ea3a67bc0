"""Text that every store can keep: what a request's free text must be to be accepted.

PostgreSQL refuses NUL (``\\x00``) in text and JSON, SQLite would store it, and a lone surrogate
(``\\ud800``-``\\udfff``, which JSON can spell but UTF-8 cannot) fails on both. Refusing both
at the edge makes the two databases answer alike: 422, nothing stored.
"""


def storable_text(value: str) -> str:
    """``value`` unchanged; ``ValueError`` when it holds NUL or a lone surrogate."""
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\u0000)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must not contain unpaired surrogates (\\ud800-\\udfff)") from None
    return value
