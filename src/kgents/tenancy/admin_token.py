"""The admin token: from ``KGENTS_ADMIN_TOKEN``, or generated once into the data dir (0600)."""

import os
from dataclasses import dataclass
from pathlib import Path

from kgents.config import Settings
from kgents.data_dir import private_dir
from kgents.tenancy.keys import generate_admin_token


@dataclass(frozen=True, slots=True)
class AdminToken:
    value: str
    created: bool  # True when this call generated it (print it once, with a hint)
    path: Path | None  # where it is stored, None when it comes from the environment


def load_or_create_admin_token(settings: Settings) -> AdminToken:
    if settings.admin_token is not None:
        return AdminToken(settings.admin_token.get_secret_value(), created=False, path=None)
    path = settings.admin_token_path
    if path.exists():
        return AdminToken(path.read_text().strip(), created=False, path=path)
    private_dir(settings.data_dir)
    token = generate_admin_token()
    # O_EXCL: if another process created it meanwhile, use theirs rather than overwrite it.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return AdminToken(path.read_text().strip(), created=False, path=path)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return AdminToken(token, created=True, path=path)


def masked(token: str) -> str:
    """A token safe for logs: its first characters only."""
    return token[:12] + "…"
