"""The data dir is private: the directory is 0700 and every file kgents writes there is 0600.

It holds every conversation (the SQLite file, the JetStream store) and the secrets (the admin
token, the embedded nats-server's credentials), so nothing in it is for other local users.
"""

import contextlib
import os
from pathlib import Path

from kgents.config import Settings

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create ``path`` (and its parents) if needed and make it 0700; return it."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    path.chmod(PRIVATE_DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` empty if it does not exist, and make it 0600; return it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE_MODE)
    os.close(fd)
    path.chmod(PRIVATE_FILE_MODE)
    return path


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text``, readable by the owner only."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    temporary.replace(path)


def restrict_existing(*paths: Path) -> None:
    """Make files that exist 0600 (those created before the data dir was private)."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.chmod(PRIVATE_FILE_MODE)


def prepare_data_dir(settings: Settings) -> Path:
    """Make the data dir private, with the default SQLite file (and its journals) 0600 before
    SQLite opens it (SQLite gives its WAL files the mode of the database file)."""
    data_dir = private_dir(settings.data_dir)
    if settings.database_url is None:
        database = private_file(settings.database_path)
        restrict_existing(*(database.with_name(database.name + end) for end in ("-wal", "-shm")))
    return data_dir
