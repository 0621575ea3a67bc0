"""Lazy, bounded async streams (pure code): ``FluxEvent`` and ``FluxStream``."""

from kgents.flux.event import FluxEvent
from kgents.flux.stream import FluxStream

__all__ = ["FluxEvent", "FluxStream"]
