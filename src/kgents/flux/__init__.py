"""A bounded read-ahead of async streams (pure code): ``FluxStream``."""

from kgents.flux.stream import FluxStream

__all__ = ["FluxStream"]
