"""Credentials out of URLs, for every message that may show one (logs, errors, the CLI).

``nats://user:secret@host`` becomes ``nats://user:***@host`` and ``nats://token@host``
becomes ``nats://***@host``, wherever the URL sits in the text (a list of URLs included).
"""

import re

MASK = "***"
# The user-info of a URL: what follows "scheme://" up to the last "@" before the host.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^\s/]+)@")


def _masked(match: re.Match[str]) -> str:
    scheme, userinfo = match.group(1), match.group(2)
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}{user}:{MASK}@" if colon else f"{scheme}{MASK}@"


def mask_url_credentials(text: str) -> str:
    """``text`` with the password (or token) of every URL in it masked."""
    return _USERINFO.sub(_masked, text) if "@" in text else text
