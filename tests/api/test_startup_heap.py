"""``kgents serve``'s app keeps what it started with out of the garbage collector's reach, so a
full collection does not walk it while streams wait, and collects young objects less often
(``api.app.tune_garbage_collector``)."""

import gc

import pytest

from kgents.api.app import YOUNG_COLLECTION_THRESHOLD, create_app
from kgents.config import Settings

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("serving", [False, True])
async def test_only_the_serving_app_tunes_the_collector(settings: Settings, serving: bool) -> None:
    thresholds = gc.get_threshold()
    app = create_app(settings, serving=serving)
    try:
        async with app.router.lifespan_context(app):
            frozen, young = gc.get_freeze_count(), gc.get_threshold()[0]
    finally:
        gc.unfreeze()  # the test process goes on collecting as before
        gc.set_threshold(*thresholds)
    # Frozen are the objects alive once started: the platform, the SDKs, the routes.
    assert (frozen > 10_000) is serving
    assert (young == YOUNG_COLLECTION_THRESHOLD) is serving
