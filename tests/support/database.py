"""Test databases as the platform sees them: the async URL of a test database URL."""

from sqlalchemy.engine import URL

from kgents.config import Settings
from kgents.store.engine import database_url


def async_url(raw: str) -> URL:
    """The async SQLAlchemy URL the platform would use for the database URL ``raw``."""
    return database_url(Settings(database_url=raw))
