"""Identifiers: how they are made and which ones are acceptable.

Every id that can end up in a NATS subject matches ``[A-Za-z0-9_-]{1,64}``, so no client can
inject ``.``, ``*``, ``>`` or whitespace into a subject.
"""

import re
import secrets
import string

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_ID_RE = re.compile(ID_PATTERN)
_BASE62 = string.digits + string.ascii_letters


def random_base62(length: int) -> str:
    """``length`` characters from a CSPRNG over the base62 alphabet: one uniform number below
    62**length written in base 62 (one read of the system's random source, where a choice per
    character made one each)."""
    value = secrets.randbelow(62**length)
    characters = []
    for _ in range(length):
        value, digit = divmod(value, 62)
        characters.append(_BASE62[digit])
    return "".join(characters)


def new_id(prefix: str) -> str:
    """A new id such as ``ses_3kT9...``: a short type prefix and 22 random base62 characters."""
    return f"{prefix}_{random_base62(22)}"


def is_valid_id(value: str) -> bool:
    """True when ``value`` is safe to use as an id and as a NATS subject token."""
    return bool(_ID_RE.fullmatch(value))
