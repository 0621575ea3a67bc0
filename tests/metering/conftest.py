"""Fixtures of the metering tests: a migrated database per test and a meter store on it.

``database_url`` yields SQLite only for now; give it a PostgreSQL param and every store test here
runs on both backends.
"""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from kgents.store.meter_repo import SqlMeterStore
from tests.metering.support import TEST_METERS


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["sqlite"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty database."""
    yield f"sqlite:///{tmp_path / 'kgents.db'}"


@pytest.fixture
def store(engine: AsyncEngine) -> SqlMeterStore:
    return SqlMeterStore(engine, TEST_METERS)
