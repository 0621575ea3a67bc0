"""``kgents serve``'s app keeps what it started with out of the garbage collector's reach, so a
full collection does not walk it while streams wait (``api.app.freeze_startup_objects``)."""

import gc

import pytest

from kgents.api.app import create_app
from kgents.config import Settings

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("serving", [False, True])
async def test_only_the_serving_app_freezes_its_startup_objects(
    settings: Settings, serving: bool
) -> None:
    app = create_app(settings, serving=serving)
    try:
        async with app.router.lifespan_context(app):
            frozen = gc.get_freeze_count()
    finally:
        gc.unfreeze()  # the test process goes on collecting as before
    # Frozen are the objects alive once started: the platform, the SDKs, the routes.
    assert (frozen > 10_000) is serving
