"""kgents: conversations with K-gent, streamed over NATS JetStream and metered exactly once."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kgents")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"
